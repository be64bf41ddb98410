"""What the learner reads from the fixed model before its first step: how many classes it has (the labels must
index them) and, for the margin objectives, quantiles of its own ID-training statistics at w = 0."""

from __future__ import annotations

import torch

from watermark_ood.core.errors import WatermarkOODError
from watermark_ood.core.randomness import generator
from watermark_ood.data.images import ImageSet
from watermark_ood.data.preprocessing import Normalization
from watermark_ood.data.streaming import FileImageSet
from watermark_ood.models.taps import PenultimateHook
from watermark_ood.watermark.config import LSE_MARGIN_OBJECTIVES, FitConfig
from watermark_ood.watermark.objectives import class_mean_distance

MARGIN_TAG = 0x3A6
MARGIN_IMAGES = 5000  # ID training images whose logsumexp quantiles set the hinge margins


@torch.no_grad()
def check_classes(model: torch.nn.Module, train: ImageSet | FileImageSet, device: torch.device) -> None:
    """Labels must index the model's outputs (one forward pass of a blank image tells how many there are)."""
    was_training = model.training
    try:
        outputs = model.eval().to(device)(torch.zeros((1, *train.image_shape), device=device)).shape[-1]
    finally:
        model.train(was_training)
    largest = int(train.labels.max())
    if largest >= outputs:
        raise WatermarkOODError(f"{train.name}: labels go up to {largest} but the model has {outputs} outputs; "
                                "use a model trained on these classes (or give it their number)")


@torch.no_grad()
def resolve_margins(model: torch.nn.Module, normalization: Normalization, train: ImageSet, cfg: FitConfig,
                    device: torch.device, limit: int = MARGIN_IMAGES) -> tuple[FitConfig, torch.Tensor | None]:
    """The config with its margins set, and (features objective) the unit ID class means of the features.

    hinge: logsumexp quantiles ``m_in_quantile`` / ``m_out_quantile``. features: the penultimate features'
    cosine distance to the nearest ID class mean (the class means are returned as anchors), at the mirrored
    quantiles. Deterministic (a fixed seeded subset, fp32) and rounded to 1e-3 (1e-5 for distances), so a
    resumed fit finds the same config.
    """
    lse_margins = cfg.objective in LSE_MARGIN_OBJECTIVES
    if not lse_margins and cfg.objective != "features":
        return cfg, None
    if lse_margins and cfg.m_in is not None and cfg.m_out is not None:
        return cfg, None
    subset = train
    if len(train) > limit:
        order = torch.randperm(len(train), generator=generator(torch.device("cpu"), cfg.seed, MARGIN_TAG))
        subset = train.subset(order[:limit].sort().values)
    was_training = model.training
    model = model.eval().to(device)
    hook = PenultimateHook(model) if cfg.objective == "features" else None
    lse, kept_rows = [], []
    try:
        for start, (kept, pixels) in zip(range(0, len(subset), 500), subset.batches(500)):
            x = normalization(pixels.to(device))
            lse.append(torch.logsumexp(model(x).float(), dim=1).cpu())
            kept_rows.append(kept + start)
    finally:
        features = hook.close() if hook is not None else None
        model.train(was_training)
    anchors = None
    if lse_margins:
        values, q_in, q_out, digits = torch.cat(lse).double(), cfg.m_in_quantile, cfg.m_out_quantile, 3
    else:
        unit = features / features.norm(dim=1, keepdim=True).clamp(min=1e-12)
        labels = subset.labels[torch.cat(kept_rows)]
        means = torch.stack([unit[labels == k].mean(0) for k in labels.unique()])
        anchors = (means / means.norm(dim=1, keepdim=True).clamp(min=1e-12)).to(device)
        values = class_mean_distance(unit, anchors.cpu()).double()
        q_in, q_out, digits = 1.0 - cfg.m_in_quantile, 1.0 - cfg.m_out_quantile, 5
    m_in = cfg.m_in if cfg.m_in is not None else round(float(values.quantile(q_in)), digits)
    m_out = cfg.m_out if cfg.m_out is not None else round(float(values.quantile(q_out)), digits)
    if (m_out < m_in) != lse_margins or m_in == m_out:
        raise WatermarkOODError(f"{cfg.objective} margins from ID data are not ordered (m_in={m_in}, "
                                f"m_out={m_out}); set --m-in/--m-out or other quantiles")
    return cfg.replace(m_in=m_in, m_out=m_out), anchors
