"""Evaluation: ID test set vs named OOD sets, with and without the watermark."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from . import distributed
from .data import ImageSet
from .errors import WatermarkOODError
from .metrics import mean_metrics, ood_metrics
from .preprocessing import Normalization
from .runtime import ExecutionConfig, prepare_model
from .scores import get_score
from .watermark import Watermark


def predict_logits(
    model: torch.nn.Module,
    images: ImageSet,
    normalization: Normalization,
    watermark: Watermark | None = None,
    execution: ExecutionConfig | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Logits (float32, on CPU) of ``model(normalize(x) + w)`` over a set, in large batches."""
    execution = execution or ExecutionConfig()
    device = execution.torch_device()
    normalization.check_channels(images.images.shape[1])
    # Preparation happens outside inference mode, or new parameters would become inference tensors.
    model = prepare_model(model, execution, device)
    with torch.inference_mode():
        return _predict(model, images, normalization, watermark, execution, device, progress)


def _predict(model, images, normalization, watermark, execution, device, progress) -> torch.Tensor:
    """Under torchrun each rank scores a contiguous shard of the set; the logits are gathered in order."""
    part, total = distributed.shard(torch.arange(len(images)))
    local = _predict_rows(model, images.images[part], images.name, normalization, watermark, execution, device,
                          progress and distributed.is_main_process())
    return distributed.gather_rows(local, total)


def _predict_rows(model, pixels, name, normalization, watermark, execution, device, progress) -> torch.Tensor:
    w = watermark.tensor.to(device) if watermark is not None else None
    if w is not None and tuple(w.shape[1:]) != tuple(pixels.shape[1:]):
        raise WatermarkOODError(
            f"{name}: images of shape {tuple(pixels.shape[1:])} do not match the watermark's {tuple(w.shape[1:])}"
        )
    size = execution.eval_batch_size
    batches = [pixels[start:start + size] for start in range(0, len(pixels), size)] or [pixels[:1]]
    out = []
    for batch in tqdm(batches, desc=f"scoring {name}", disable=not progress, leave=False, unit="batch"):
        if len(batch) == 0:  # an empty shard still learns the number of classes
            batch = torch.zeros((1, *pixels.shape[1:]), dtype=pixels.dtype)
        x = normalization(batch.to(device))
        if w is not None:
            x = x + w
        if execution.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with execution.autocast(device):
            logits = model(x)
        out.append(logits.float().cpu())
    return torch.cat(out)[: len(pixels)]


def protocol_subsample(ood_sets: Sequence[ImageSet], id_count: int, seed: int) -> list[ImageSet]:
    """The paper's protocol: each OOD set contributes ``id_count // 5`` images, chosen with a seed."""
    count = max(1, id_count // 5)
    return [s.sample(count, seed + i) for i, s in enumerate(ood_sets)]


@dataclass
class ConditionLogits:
    """Logits of the ID test set and every OOD set under one condition (with or without watermark)."""

    id_logits: torch.Tensor
    id_labels: torch.Tensor
    ood_logits: dict[str, torch.Tensor]

    @property
    def accuracy(self) -> float:
        return float((self.id_logits.argmax(1) == self.id_labels).float().mean())

    def scores(self, score: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        fn = get_score(score)
        return fn(self.id_logits).numpy(), {k: fn(v).numpy() for k, v in self.ood_logits.items()}

    def metrics(self, score: str) -> dict[str, dict[str, float]]:
        """``{ood set: {fpr95, auroc, aupr_in, aupr_out}, ..., "mean": {...}}``."""
        id_scores, ood_scores = self.scores(score)
        per_set = {name: ood_metrics(id_scores, s) for name, s in ood_scores.items()}
        return {**per_set, "mean": mean_metrics(per_set)}


def condition_logits(model, normalization, id_test: ImageSet, ood_sets: Sequence[ImageSet],
                     watermark: Watermark | None, execution: ExecutionConfig | None = None,
                     progress: bool = False) -> ConditionLogits:
    names = [s.name for s in ood_sets]
    if len(set(names)) != len(names) or "mean" in names:
        raise WatermarkOODError(f"OOD set names must be unique and not 'mean', got {names}")
    if (id_test.labels < 0).any():
        raise WatermarkOODError(f"{id_test.name}: the ID test set needs class labels")
    id_logits = predict_logits(model, id_test, normalization, watermark, execution, progress)
    ood = {s.name: predict_logits(model, s, normalization, watermark, execution, progress) for s in ood_sets}
    return ConditionLogits(id_logits, id_test.labels.clone(), ood)


@dataclass
class Evaluation:
    """Baseline and (optionally) watermarked logits; metrics for any score are computed on demand."""

    baseline: ConditionLogits
    watermarked: ConditionLogits | None = None
    ood_names: list[str] = field(default_factory=list)

    def accuracy(self) -> dict[str, float]:
        acc = {"baseline": self.baseline.accuracy}
        if self.watermarked is not None:
            acc["watermarked"] = self.watermarked.accuracy
        return acc

    def metrics(self, score: str) -> dict[str, dict[str, dict[str, float]]]:
        out = {"baseline": self.baseline.metrics(score)}
        if self.watermarked is not None:
            out["watermarked"] = self.watermarked.metrics(score)
        return out


def evaluate(
    model: torch.nn.Module,
    normalization: Normalization,
    id_test: ImageSet,
    ood_sets: Sequence[ImageSet],
    watermark: Watermark | None = None,
    execution: ExecutionConfig | None = None,
    protocol: bool = True,
    seed: int = 0,
    baseline: ConditionLogits | None = None,
    progress: bool = False,
) -> Evaluation:
    """Score ID and OOD sets with and without ``watermark``.

    With ``protocol`` each OOD set is subsampled to |ID test| / 5 images
    (seeded), as in the paper. Pass ``baseline`` to reuse logits already computed.
    """
    if not ood_sets:
        raise WatermarkOODError("evaluation needs at least one OOD set")
    for s in ood_sets:
        if s.image_shape != id_test.image_shape:
            raise WatermarkOODError(
                f"OOD set {s.name} has images of shape {s.image_shape}, the ID set {id_test.image_shape}"
            )
    sets = protocol_subsample(ood_sets, len(id_test), seed) if protocol else list(ood_sets)
    if baseline is None:
        baseline = condition_logits(model, normalization, id_test, sets, None, execution, progress)
    marked = (condition_logits(model, normalization, id_test, sets, watermark, execution, progress)
              if watermark is not None else None)
    return Evaluation(baseline, marked, [s.name for s in sets])


def evaluate_scores(
    model: torch.nn.Module,
    normalization: Normalization,
    id_fit: ImageSet,
    id_test: ImageSet,
    ood_sets: Sequence[ImageSet],
    watermark: Watermark | None,
    scores: Sequence[str],
    execution: ExecutionConfig | None = None,
) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """Every requested score with and without the watermark: ``{score: {"baseline"|"watermarked": {set: m}}}``.

    Feature scores are fitted on ``id_fit`` (ID training images) under the same
    condition they are evaluated in: watermarked features for the watermarked model.
    """
    from .features import FEATURE_SCORES, GRADIENT_SCORES, LOGIT_SCORES, FeatureScorer, logits_and_features, odin_scores

    execution = execution or ExecutionConfig()
    unknown = set(scores) - set(LOGIT_SCORES + FEATURE_SCORES + GRADIENT_SCORES)
    if unknown:
        raise WatermarkOODError(f"unknown scores {sorted(unknown)}; choose from "
                                f"{', '.join(LOGIT_SCORES + GRADIENT_SCORES + FEATURE_SCORES)}")
    table: dict[str, dict[str, dict[str, dict[str, float]]]] = {s: {} for s in scores}
    conditions = [("baseline", None)] + ([("watermarked", watermark)] if watermark is not None else [])
    for condition, mark in conditions:
        id_logits, id_feats = logits_and_features(model, id_test, normalization, mark, execution)
        ood = {s.name: logits_and_features(model, s, normalization, mark, execution) for s in ood_sets}
        fit_feats = None
        if any(s in FEATURE_SCORES for s in scores):
            _, fit_feats = logits_and_features(model, id_fit, normalization, mark, execution)
        for score in scores:
            if score in LOGIT_SCORES:
                fn = get_score(score)
                s_id, s_ood = fn(id_logits).numpy(), {k: fn(v[0]).numpy() for k, v in ood.items()}
            elif score in FEATURE_SCORES:
                scorer = FeatureScorer.fit(score, model, fit_feats, id_fit.labels)
                s_id, s_ood = scorer(id_feats), {k: scorer(v[1]) for k, v in ood.items()}
            else:
                s_id = odin_scores(model, id_test, normalization, mark, execution)
                s_ood = {s.name: odin_scores(model, s, normalization, mark, execution) for s in ood_sets}
            per_set = {k: ood_metrics(s_id, v) for k, v in s_ood.items()}
            table[score][condition] = {**per_set, "mean": mean_metrics(per_set)}
    return table
