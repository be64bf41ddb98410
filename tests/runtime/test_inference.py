"""Backward passes run in capped batches: their graphs hold every activation."""

from watermark_ood.runtime.device import ExecutionConfig
from watermark_ood.runtime.inference import GRADIENT_BATCH, gradient_batch


def test_gradient_batches_are_capped_by_the_evaluation_batch():
    assert gradient_batch(ExecutionConfig(device="cpu", eval_batch_size=4000)) == GRADIENT_BATCH
    assert gradient_batch(ExecutionConfig(device="cpu", eval_batch_size=7)) == 7


def test_gradient_batches_shrink_to_keep_the_graph_under_its_memory_budget():
    import torch
    from torch import nn

    from watermark_ood.runtime.inference import GRADIENT_MEMORY, graph_bytes_per_image

    flat = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
    assert graph_bytes_per_image(flat, (3, 32, 32), torch.device("cpu")) == 3 * 32 * 32 * 4  # the linear's input
    wide = nn.Sequential(nn.Conv2d(3, 256, 3, padding=1), nn.ReLU(), nn.Conv2d(256, 256, 3, padding=1))
    per_image = graph_bytes_per_image(wide, (3, 64, 64), torch.device("cpu"))
    assert per_image >= 2 * 256 * 64 * 64 * 4  # at least the ReLU's output and the second conv's input
    batch = gradient_batch(ExecutionConfig(device="cpu"), wide, (3, 64, 64))
    assert batch == GRADIENT_MEMORY // per_image and 1 <= batch < GRADIENT_BATCH
    assert gradient_batch(ExecutionConfig(device="cpu", eval_batch_size=3), wide, (3, 64, 64)) == 3
