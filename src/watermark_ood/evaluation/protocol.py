"""Evaluation: ID test set vs named OOD sets, with and without the watermark."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from watermark_ood.core.errors import WatermarkOODError
from watermark_ood.data.images import ImageSet
from watermark_ood.data.preprocessing import Normalization
from watermark_ood.data.streaming import without_skipped
from watermark_ood.detection.data_policy import z_split
from watermark_ood.detection.detector import Detector
from watermark_ood.detection.logit_scores import get_score
from watermark_ood.detection.registry import check_name, layers_for
from watermark_ood.evaluation.metrics import accuracy, mean_metrics, ood_metrics
from watermark_ood.runtime.device import ExecutionConfig
from watermark_ood.runtime.inference import logits_and_features, predict_logits
from watermark_ood.watermark.file import Watermark


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
        return accuracy(self.id_logits, self.id_labels)

    def scores(self, score: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Scores of every readable image (files skipped as unreadable have none)."""
        fn = get_score(score)
        return without_skipped(fn(self.id_logits).numpy()), {k: without_skipped(fn(v).numpy())
                                                              for k, v in self.ood_logits.items()}

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
    layers: Sequence[str] | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Every requested detector with and without the watermark, through the one :class:`Detector` interface.

    ``log`` gets one line per detector and condition as it is done (a leaderboard of every detector runs for
    minutes to an hour on a CPU; its progress must show in a log file, where bars are hidden).

    Returns ``{score: {"baseline"|"watermarked": {set: metrics, "mean": ...}, "cost": {condition: {...}}}}``;
    ``cost`` holds the fit time (the forward pass over the fit images included, for fitted detectors), scoring
    images/s (forward pass included, after a warm-up) and the detector file's size (before calibration).
    Fitted scores use ``id_fit`` (ID training images) under the condition they are evaluated in:
    watermarked features for the watermarked model; combinations take their z-scores from a fifth of it.
    ``layers``: what the detectors on intermediate layers tap (:func:`~watermark_ood.detection.registry.layers_for`).
    """


    execution = execution or ExecutionConfig()
    for name in scores:
        check_name(name)
    table: dict[str, dict[str, Any]] = {s: {"cost": {}} for s in scores}
    conditions = [("baseline", None)] + ([("watermarked", watermark)] if watermark is not None else [])
    fit_part, z_part = z_split(id_fit, 0)
    for c_index, (condition, mark) in enumerate(conditions):
        shared = _shared_outputs(model, normalization, mark, execution, id_test, ood_sets, fit_part, z_part)
        for s_index, score in enumerate(scores):
            detector = Detector(model, normalization, mark, score, execution=execution,
                                layers=layers_for(score, layers))
            per_set, cost, seconds = _leaderboard_row(detector, shared, fit_part, id_test, ood_sets)
            table[score][condition] = {**per_set, "mean": mean_metrics(per_set)}
            table[score]["cost"][condition] = cost
            if log is not None:
                log(f"[{c_index * len(scores) + s_index + 1}/{len(scores) * len(conditions)}] {score} "
                    f"({condition}): mean FPR95 {100 * table[score][condition]['mean']['fpr95']:.2f}%, fit "
                    f"{cost['fit_seconds']:.1f}s, scored {shared.scored} images in {seconds:.1f}s")
    return table


@dataclass
class _SharedOutputs:
    """One condition's logits and features of every set, computed once for all the detectors that read them."""

    test: tuple
    ood: dict[str, tuple]
    fit: tuple
    z: tuple
    forward_seconds: float  # of the scored sets: part of every shared-output detector's scoring time
    fit_forward_seconds: float  # of the fit sets: part of every fitted detector's fit time
    scored: int


def _shared_outputs(model, normalization, mark, execution, id_test, ood_sets, fit_part, z_part) -> _SharedOutputs:
    logits_and_features(model, id_test.subset(torch.arange(min(8, len(id_test)))), normalization, mark,
                        execution)  # warm-up: one-time preparation must not count as scoring time
    t0 = time.perf_counter()
    test_out = logits_and_features(model, id_test, normalization, mark, execution)
    ood_out = {s.name: logits_and_features(model, s, normalization, mark, execution) for s in ood_sets}
    forward_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    fit_out = logits_and_features(model, fit_part, normalization, mark, execution)
    z_out = logits_and_features(model, z_part, normalization, mark, execution)
    return _SharedOutputs(test_out, ood_out, fit_out, z_out, forward_seconds, time.perf_counter() - t0,
                          len(id_test) + sum(len(s) for s in ood_sets))


def _leaderboard_row(detector: Detector, shared: _SharedOutputs, fit_part: ImageSet, id_test: ImageSet,
                     ood_sets: Sequence[ImageSet]) -> tuple[dict[str, Any], dict[str, Any], float]:
    """One detector fitted and scored under one condition: its metrics per OOD set, its cost (fit seconds with
    the fit sets' forward pass for fitted kinds, images per second with the forward pass, the file's size without
    calibration scores) and the scoring seconds."""
    own = detector.own_passes
    t0 = time.perf_counter()
    detector.fit_shared(fit_part, shared.fit, shared.z)
    fit_seconds = time.perf_counter() - t0 + (shared.fit_forward_seconds if not own and detector.scorer is not None
                                              and detector.spec.fitted else 0.0)
    t0 = time.perf_counter()
    if own:
        s_id = detector.scores(id_test)
        s_ood = {s.name: detector.scores(s) for s in ood_sets}
        seconds = time.perf_counter() - t0
    else:
        s_id = detector.scores_from(*shared.test)
        s_ood = {k: detector.scores_from(*v) for k, v in shared.ood.items()}
        seconds = shared.forward_seconds + time.perf_counter() - t0
    per_set = {k: ood_metrics(without_skipped(s_id), without_skipped(v)) for k, v in s_ood.items()}
    detector.input_shape = tuple(id_test.image_shape)
    return per_set, {"fit_seconds": fit_seconds, "images_per_second": shared.scored / max(seconds, 1e-9),
                     "file_bytes": len(detector.file_bytes()[0])}, seconds


def evaluate_detector(detector: Any, id_fit: ImageSet, id_test: ImageSet, ood_sets: Sequence[ImageSet],
                      execution: ExecutionConfig | None = None) -> dict[str, Any]:
    """A saved detector on real OOD sets, as one results.json run (``score`` = the detector's name).

    ``watermarked``: the detector exactly as saved (its watermark, fitted state and threshold).
    ``baseline``: the same score without the watermark, fitted the same way on ``id_fit`` (identical to the
    detector when it has no watermark). ``decisions`` adds the shipped threshold's ID acceptance and OOD
    rejection rates on these sets.
    """



    execution = execution or detector.execution
    t0 = time.perf_counter()
    s_id = detector.scores(id_test)
    s_ood = {s.name: detector.scores(s) for s in ood_sets}
    seconds = time.perf_counter() - t0
    shipped = {k: ood_metrics(without_skipped(s_id), without_skipped(v)) for k, v in s_ood.items()}
    if detector.watermark is None:
        plain = shipped
    else:
        reference = Detector(detector.model, detector.normalization, None, detector.score, execution=execution)
        reference.fit(id_fit)
        r_id = reference.scores(id_test)
        plain = {s.name: ood_metrics(without_skipped(r_id), without_skipped(reference.scores(s))) for s in ood_sets}
    base_logits = predict_logits(detector.model, id_test, detector.normalization, None, execution)
    marked_logits = predict_logits(detector.model, id_test, detector.normalization, detector.watermark, execution)
    accuracies = {c: accuracy(lg, id_test.labels) for c, lg in (("baseline", base_logits),
                                                                   ("watermarked", marked_logits))}
    decisions = None
    if detector.threshold is not None:
        decisions = {"threshold": detector.threshold, "tpr_requested": detector.tpr,
                     "id_accepted": float(np.mean(without_skipped(s_id) >= detector.threshold)),
                     "ood_rejected": {k: float(np.mean(without_skipped(v) < detector.threshold))
                                      for k, v in s_ood.items()}}
    mark = detector.watermark
    return {
        "objective": None if mark is None else mark.metadata.get("objective"),
        "score": detector.score,
        "hyperparameters": {} if mark is None else mark.metadata.get("hyperparameters", {}),
        "accuracy": accuracies,
        "baseline": {**plain, "mean": mean_metrics(plain)},
        "watermarked": {**shipped, "mean": mean_metrics(shipped)},
        "timing": {"fit_seconds": 0.0, "images_per_second": (len(id_test) + sum(map(len, ood_sets))) / seconds},
        "model": detector.model_id, "has_watermark": mark is not None, "decisions": decisions,
        "num_id_test": len(id_test), "num_ood": {s.name: len(s) for s in ood_sets},
    }
