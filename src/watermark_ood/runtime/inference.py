"""One inference path: logits, and when asked penultimate features or tapped layers, of a fixed model on
``normalize(x) + w`` in large batches; under torchrun each rank scores a contiguous shard, gathered in order. Every
caller (the paper's protocol, detectors, selection, predict) goes through here. The detectors that run the model
themselves (with gradients or dropout) batch their own passes with :func:`batched_scores` and
:func:`gradient_batch`; their scoring is theirs (:mod:`watermark_ood.detection.image_scores`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import torch
from torch import nn

from watermark_ood.core import distributed
from watermark_ood.core.errors import WatermarkOODError
from watermark_ood.core.progress import bar as progress_bar
from watermark_ood.data.images import ImageSet
from watermark_ood.data.preprocessing import Normalization
from watermark_ood.data.streaming import place_rows
from watermark_ood.models.layers import JoinedTaps, LayerRewrite, LayerTaps
from watermark_ood.models.taps import PenultimateHook
from watermark_ood.runtime.device import ExecutionConfig, prepare_model

if TYPE_CHECKING:  # the watermark file is a layer above; inference only adds its tensor
    from watermark_ood.watermark.file import Watermark


def predict_logits(
    model: torch.nn.Module,
    images: ImageSet,
    normalization: Normalization,
    watermark: Watermark | None = None,
    execution: ExecutionConfig | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Logits (float32, on CPU) of ``model(normalize(x) + w)`` over a set, in large batches.

    A streamed set is decoded batch by batch; rows of files skipped as unreadable (``skip_bad``) are NaN.
    """
    return infer(model, images, normalization, watermark, execution, progress)[0]


def logits_and_features(model: nn.Module, images: ImageSet, normalization: Normalization,
                        watermark: Watermark | None, execution: ExecutionConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """One pass over a set giving logits and penultimate features (fp32, CPU); unreadable rows are NaN in both."""
    return infer(model, images, normalization, watermark, execution, features=True)


def infer(model: nn.Module, images: ImageSet, normalization: Normalization, watermark: Watermark | None = None,
          execution: ExecutionConfig | None = None, progress: bool = False, features: bool = False,
          layers: Sequence[str] | None = None, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
          rewrite: tuple[str, Callable[[torch.Tensor], torch.Tensor]] | None = None,
          penultimate_too: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits and, with ``features``, the input of the model's last linear layer, of every row of ``images``;
    with ``layers``, instead, the spatial means (or ``reduce``) of those layers side by side (:class:`LayerTaps`); with
    ``rewrite`` = (layer, change), the logits of the model whose layer output is changed (:class:`LayerRewrite`);
    ``penultimate_too`` (with ``layers``): the penultimate features first, then the layers', from the same pass.

    With features the model runs as it is (a hook on its head; no BatchNorm fusion, which would move the head);
    without, it is prepared by :func:`prepare_model` outside inference mode (new parameters would otherwise
    become inference tensors). Under torchrun each rank scores a contiguous shard; the rows are gathered in order.
    """
    execution = execution or ExecutionConfig()
    device = execution.torch_device()
    normalization.check_channels(images.image_shape[0])
    features = features or layers is not None
    as_it_is = features or rewrite is not None  # hooks need the model's own modules (no BatchNorm fusion)
    model = model.eval().to(device) if as_it_is else prepare_model(model, execution, device)
    rows = torch.arange(len(images))
    part, total = distributed.shard(rows)
    rewriter = LayerRewrite(model, *rewrite) if rewrite is not None else None
    hook = (LayerTaps(model, layers, reduce) if layers is not None else PenultimateHook(model)) if features else None
    if penultimate_too and layers is not None:
        hook = JoinedTaps([PenultimateHook(model), hook])
    try:
        with torch.no_grad() if features else torch.inference_mode():  # features feed fits that write in place
            logits, feats = _infer_rows(model, hook, images, rows[part], normalization, watermark, execution,
                                        device, progress and distributed.is_main_process())
    finally:
        if hook is not None:
            hook.close()
        if rewriter is not None:
            rewriter.close()
    return (distributed.gather_rows(logits, total),
            distributed.gather_rows(feats, total) if feats is not None else None)


def _infer_rows(model, hook, images, rows, normalization, watermark, execution, device,
                progress) -> tuple[torch.Tensor, torch.Tensor | None]:
    shape = tuple(images.image_shape)
    w = watermark.tensor.to(device) if watermark is not None else None
    if w is not None and tuple(w.shape[1:]) != shape:
        raise WatermarkOODError(
            f"{images.name}: images of shape {shape} do not match the watermark's {tuple(w.shape[1:])}"
        )

    def forward(pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = normalization(pixels.to(device))
        if w is not None:
            x = x + w
        if execution.channels_last and hook is None:
            x = x.contiguous(memory_format=torch.channels_last)
        with execution.autocast(device):
            logits = model(x).float().cpu()
        return logits, hook.features.pop() if hook is not None else None

    if len(rows) == 0:  # an empty shard still learns the number of classes (and the feature width)
        logits, feats = forward(torch.zeros((1, *shape), dtype=torch.uint8))
        return logits[:0], feats[:0] if feats is not None else None
    size = execution.eval_batch_size
    out = [(kept, forward(batch) if len(batch) else None)  # an empty batch: all its files were unreadable
           for kept, batch in progress_bar(images.batches(size, rows), progress, desc=f"scoring {images.name}",
                                           leave=False, unit="batch", total=-(-len(rows) // size))]
    logits = place_rows([(kept, o[0] if o else None) for kept, o in out], len(rows), size)
    if hook is None:
        return logits, None
    return logits, place_rows([(kept, o[1] if o else None) for kept, o in out], len(rows), size)


class WatermarkedModel(nn.Module):
    """``f(x + w)`` as one module: drop it into any detector that expects a model on normalized inputs."""

    def __init__(self, model: nn.Module, watermark: Watermark | torch.Tensor | None) -> None:
        super().__init__()
        self.model = model
        tensor = getattr(watermark, "tensor", watermark)  # a Watermark file or a bare tensor
        self.register_buffer("watermark", torch.zeros(1) if tensor is None else tensor.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x + self.watermark)


GRADIENT_BATCH = 250  # images per backward pass: its graph holds every activation (ODIN at 1,000 on a ResNet-20
#                      was 1.8 GB of calibrate --score auto's 2.1 GB peak); per-image scores do not depend on it
GRADIENT_MEMORY = 128 * 2**20  # bytes one backward pass's graph may hold: NAC's fit at 250 images of a ResNet-20
#                                held 0.9 GB, the peak of calibrate --score auto with the default pool (2.6 GB RSS)


def gradient_batch(execution: ExecutionConfig, module: nn.Module | None = None,
                   image_shape: Sequence[int] | None = None) -> int:
    """Images per backward pass: at most ``GRADIENT_BATCH`` and, given the module that runs with gradients and
    its input shape, as many as keep its graph under ``GRADIENT_MEMORY``; a wider model or larger image gets
    smaller batches.

    >>> flat = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))  # saves 12 KiB per image
    >>> gradient_batch(ExecutionConfig(device="cpu", eval_batch_size=4000), flat, (3, 32, 32))
    250
    """
    cap = min(execution.eval_batch_size, GRADIENT_BATCH)
    if module is None or image_shape is None:
        return cap
    per_image = graph_bytes_per_image(module, image_shape, execution.torch_device())
    return max(1, min(cap, GRADIENT_MEMORY // max(per_image, 1)))


def graph_bytes_per_image(module: nn.Module, image_shape: Sequence[int], device: torch.device) -> int:
    """Bytes an autograd graph of ``module`` saves per input image (the tensors its backward pass will read):
    two small passes with saved-tensor hooks counting them, one image apart, so the parameters both save cancel."""
    def saved(batch: int) -> int:
        total = 0

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            nonlocal total
            total += tensor.numel() * tensor.element_size()
            return tensor

        x = torch.zeros((batch, *image_shape), device=device, requires_grad=True)
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            module(x)
        return total

    return max(0, saved(2) - saved(1))


def batched_scores(images: ImageSet, normalization: Normalization, device: torch.device, batch: int,
                   outlier: Callable[[torch.Tensor, int], torch.Tensor]) -> np.ndarray:
    """Higher-is-ID scores of a library detector that runs the model itself, batch by batch: ``outlier(x, start)``
    gets the normalized batch and its first row; rows of unreadable files are NaN."""
    out = []
    for start, (kept, pixels) in zip(range(0, len(images), batch), images.batches(batch)):
        scores = -outlier(normalization(pixels.to(device)), start).detach().float().cpu() if len(pixels) else None
        out.append((kept, None if scores is None else scores[:, None]))
    return place_rows(out, len(images), batch)[:, 0].numpy()
