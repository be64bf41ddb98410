"""--compile and --precision fp16 on CPU (issue 31: untested before): the same watermark as eager fp32 when
compiled; fp16 logits close to fp32 and a finite fit."""

import json

import torch
from conftest import write_npz_dataset

from watermark_ood.cli import main
from watermark_ood.data.images import load_npz
from watermark_ood.models.registry import load_model
from watermark_ood.runtime.device import ExecutionConfig
from watermark_ood.runtime.inference import predict_logits
from watermark_ood.watermark.file import Watermark

FIT = ["fit", "--model", "small_cnn", "--random-weights", "--epochs", "1", "--batch-size", "16", "--device", "cpu", "--no-progress"]


def test_compiled_fit_gives_the_eager_watermark(tmp_path):
    data = write_npz_dataset(tmp_path / "toy", n_train=64, n_test=10)
    assert main([*FIT, "--id-data", str(data), "--out", str(tmp_path / "eager")]) == 0
    assert main([*FIT, "--id-data", str(data), "--compile", "--out", str(tmp_path / "compiled")]) == 0
    eager = Watermark.load(tmp_path / "eager" / "watermark.safetensors").tensor
    compiled = Watermark.load(tmp_path / "compiled" / "watermark.safetensors").tensor
    assert torch.count_nonzero(eager) > 0 and (eager - compiled).abs().max() < 1e-6


def test_fp16_logits_are_close_and_an_fp16_fit_is_finite(tmp_path):
    data = write_npz_dataset(tmp_path / "toy", n_train=64, n_test=40)
    model = load_model("small_cnn", None, 3)
    test = load_npz(data / "test.npz")
    exact = predict_logits(model.module, test, model.normalization, None, ExecutionConfig(device="cpu"))
    half = predict_logits(model.module, test, model.normalization, None,
                          ExecutionConfig(device="cpu", precision="fp16"))
    assert half.dtype == torch.float32 and not torch.equal(half, exact)  # fp16 really ran
    assert (half - exact).abs().max() <= 1e-2 * exact.abs().max()
    assert main([*FIT, "--id-data", str(data), "--precision", "fp16", "--out", str(tmp_path / "fp16")]) == 0
    mark = Watermark.load(tmp_path / "fp16" / "watermark.safetensors")
    history = json.loads((tmp_path / "fp16" / "history.json").read_text())
    assert torch.isfinite(mark.tensor).all() and all(torch.isfinite(torch.tensor(r["loss"])) for r in history)
