"""The learner and evaluation on CUDA (skipped without a GPU; run on a lent GPU by benchmarks/device/gpu_run.sh)."""

from __future__ import annotations

import pytest
import torch

from watermark_ood.core.errors import WatermarkOODError
from watermark_ood.runtime.device import ExecutionConfig
from watermark_ood.runtime.inference import predict_logits
from watermark_ood.watermark.config import FitConfig
from watermark_ood.watermark.file import Watermark
from watermark_ood.watermark.learner import WatermarkLearner

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

CFG = FitConfig(epochs=2, batch_size=16, sigma=0.4, rho=1.0, beta=3.5, alpha=0.01)


def fit(model, data, norm, **execution):
    exe = ExecutionConfig(**{"device": "cuda", **execution})
    return WatermarkLearner(model, norm, CFG, exe).fit(data, progress=False)


def test_cuda_graph_steps_equal_eager_steps(toy_model, toy_train, norm3):
    eager = fit(toy_model, toy_train, norm3, cuda_graphs=False).watermark.tensor
    graphed = fit(toy_model, toy_train, norm3, cuda_graphs=True).watermark.tensor
    # 64 images / 16 = 4 full batches per epoch; the same kernels run either way.
    differing = ((eager - graphed).abs() > 1e-6).float().mean()
    assert differing < 0.01, f"{100 * float(differing):.1f}% of watermark pixels differ"
    assert eager.abs().max() > 0


def test_cuda_graphs_handle_a_partial_last_batch(toy_model, toy_train, norm3):
    data = toy_train.subset(torch.arange(56))  # 3 batches of 16 and one of 8: two graphs
    result = fit(toy_model, data, norm3, cuda_graphs=True)
    assert torch.isfinite(result.watermark.tensor).all() and result.images_seen == 2 * 56


def test_cuda_fit_learns_like_the_cpu_fit(toy_model, toy_train, norm3):
    # Noise is drawn from the device's own generator, so CPU and CUDA runs follow different random streams:
    # compare what they learn (the objective's drop, the watermark's size), not pixels.
    gpu = fit(toy_model, toy_train, norm3, precision="fp32")
    cpu = WatermarkLearner(toy_model, norm3, CFG, ExecutionConfig(device="cpu")).fit(toy_train, progress=False)
    for result in (gpu, cpu):
        assert result.history[-1].loss < result.history[0].loss
    assert abs(gpu.history[-1].mean_abs - cpu.history[-1].mean_abs) < 0.25 * cpu.history[-1].mean_abs


def test_cuda_fit_repeats_itself(toy_model, toy_train, norm3):
    first = fit(toy_model, toy_train, norm3, cuda_graphs=True).watermark.tensor
    second = fit(toy_model, toy_train, norm3, cuda_graphs=True).watermark.tensor
    assert ((first - second).abs() > 1e-6).float().mean() < 0.01


def test_cuda_nan_is_reported(toy_model, toy_train, norm3):
    cfg = CFG.replace(alpha=float("inf"), epochs=1)
    for graphs in (False, True):  # eager steps, and graph replays (the default on CUDA)
        exe = ExecutionConfig(device="cuda", cuda_graphs=graphs)
        with pytest.raises(WatermarkOODError, match="NaN|became"):
            WatermarkLearner(toy_model, norm3, cfg, exe).fit(toy_train, progress=False)


def test_cuda_logits_match_cpu(toy_model, toy_test, norm3):
    mark = Watermark(torch.full((1, 3, 8, 8), 0.1))
    cpu = predict_logits(toy_model, toy_test, norm3, mark, ExecutionConfig(device="cpu"))
    gpu = predict_logits(toy_model, toy_test, norm3, mark, ExecutionConfig(device="cuda", eval_batch_size=7))
    assert torch.allclose(cpu, gpu, atol=1e-3, rtol=1e-3)


def test_cuda_graphs_capture_the_anchored_objectives_extra_forward(toy_model, toy_train, norm3):
    # anchored runs one more forward pass (the outliers at w = 0, without gradient) inside the captured step
    cfg = FitConfig(objective="anchored", epochs=2, batch_size=16, sigma=0.5, rho=0.5, beta=0.5, alpha=0.01,
                    surrogate="mixed")
    marks = [WatermarkLearner(toy_model, norm3, cfg, ExecutionConfig(device="cuda", cuda_graphs=graphs))
             .fit(toy_train, progress=False).watermark.tensor for graphs in (False, True)]
    assert ((marks[0] - marks[1]).abs() > 1e-6).float().mean() < 0.01 and marks[0].abs().max() > 0
