"""What keeps ``--score auto``'s choice cheap as the pool grows (its cost target: at most one ResNet-56
watermark fit on CPU).

- **Shared passes.** The detectors on intermediate layers (multimahalanobis, gram, combood) each keep their
  own statistics of the tapped maps; one forward pass per image set keeps all of them side by side
  (:func:`~watermark_ood.models.layers.joint_reducer`), and the penultimate features the other candidates read,
  and every detector gets its own part, equal to what its own pass would give. The winner, if it is one of them,
  is fitted from the same outputs.
- **Racing** (pre-registered in benchmarks/README.md before it was run). The candidates that still run the model
  themselves (odin, mcd, graduncertainty, mahalanobis-odin, nac, the feature-map kinds) are ranked after the
  others, first on every third ranking ID image and every third ranked outlier. One whose FPR95 there is more
  than ``RACE_MARGIN`` above the best FPR95 on the same rows of any candidate ranked before it is not admitted
  ("raced out", reported with those rows' figures); the others score the remaining rows and are ranked as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from watermark_ood.data.images import ImageSet
from watermark_ood.evaluation.metrics import fpr_at_tpr
from watermark_ood.models.layers import joint_reducer, layer_widths, split_joint
from watermark_ood.runtime.inference import infer, logits_and_features, predict_logits

RACE_EVERY = 3  # the first heat: every third ranking ID image and ranked outlier
RACE_MARGIN = 0.05  # FPR95 points (as a fraction) above the best of the first heat that still go on


Outputs = tuple[torch.Tensor, "torch.Tensor | None"]


def plain_outputs(model, normalization, mark, images: ImageSet, execution) -> Outputs:
    """Logits and penultimate features in one pass (logits alone for a model without a linear head)."""

    if not has_head(model):
        return predict_logits(model, images, normalization, mark, execution), None
    return logits_and_features(model, images, normalization, mark, execution)


def has_head(model: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.Linear) for m in model.modules())


def shared_outputs(model, normalization, mark, execution, layer_detectors: Sequence[Any],
                   sets: Mapping[str, ImageSet], image_shape: Sequence[int],
                   ) -> tuple[dict[str, Outputs], dict[str, dict[str, Outputs]]]:
    """Every set's logits and penultimate features, and each layer detector's tapped features of the sets it
    needs (all but "z": layer detectors are never parts of combinations), in one forward pass per set.

    Returns ``({set key: (logits, features)}, {score: {set key: (logits, its tapped features)}})``.
    """

    groups: dict[tuple[str, ...], list[Any]] = {}
    for detector in layer_detectors:
        groups.setdefault(tuple(detector.layers), []).append(detector)
    plain: dict[str, Outputs] = {}
    taps: dict[str, dict[str, Outputs]] = {}
    for number, (layers, group) in enumerate(groups.items()):
        reducers = [d.layer_reducer() for d in group]
        widths = [layer_widths(model, layers, image_shape, reduce) for reduce in reducers]
        joined = number == 0 and has_head(model)  # the first group's pass also keeps the penultimate vector
        for key, images in sets.items():
            if key == "z":
                continue
            logits, joint = infer(model, images, normalization, mark, execution, layers=layers,
                                  reduce=joint_reducer(reducers), penultimate_too=joined)
            if joined:
                width = joint.shape[1] - sum(sum(w) for w in widths)
                plain[key], joint = (logits, joint[:, :width]), joint[:, width:]
            for detector, part in zip(group, split_joint(joint, widths)):
                taps.setdefault(detector.score, {})[key] = (logits, part)
    for key, images in sets.items():
        if key not in plain:
            plain[key] = plain_outputs(model, normalization, mark, images, execution)
    return plain, taps


@dataclass(frozen=True)
class Race:
    """The first heat's rows: of the ranking ID images, and of the outliers (indices into the whole set)."""

    id_rows: np.ndarray
    out_rows: np.ndarray  # every third ranked outlier
    ranked_rows: np.ndarray  # the rows of the outlier set whose kinds the ranking is taken over

    @classmethod
    def of(cls, id_count: int, ranked_rows: np.ndarray) -> "Race":
        return cls(np.arange(0, id_count, RACE_EVERY), np.asarray(ranked_rows)[::RACE_EVERY], np.asarray(ranked_rows))

    def heat_fpr(self, s_id: np.ndarray, s_ranked: np.ndarray) -> float:
        """A fully ranked candidate's FPR95 on the first heat's rows (its scores over all rows given)."""
        return fpr_at_tpr(s_id[self.id_rows], s_ranked[::RACE_EVERY])


def score_in_heats(detector: Any, rank_id: ImageSet, outliers: ImageSet, race: Race,
                   best_heat: float) -> tuple[np.ndarray, np.ndarray, float | None]:
    """A candidate with its own passes: scores on every row (ID, all outliers) if it survives the first heat,
    else those of the heat only; and its heat FPR95 when it was raced out (None when it went on)."""
    heat_id = detector.scores(rank_id.subset(torch.from_numpy(race.id_rows)))
    heat_out = detector.scores(outliers.subset(torch.from_numpy(race.out_rows)))
    fpr = fpr_at_tpr(heat_id, heat_out)
    if fpr > best_heat + RACE_MARGIN:
        return heat_id, heat_out, fpr
    s_id = _fill(len(rank_id), race.id_rows, heat_id, detector, rank_id)
    s_out = _fill(len(outliers), race.out_rows, heat_out, detector, outliers)
    return s_id, s_out, None


def _fill(count: int, done: np.ndarray, scores: np.ndarray, detector: Any, images: ImageSet) -> np.ndarray:
    rest = np.setdiff1d(np.arange(count), done)
    rest_scores = detector.scores(images.subset(torch.from_numpy(rest))) if len(rest) else scores[:0]
    out = np.empty(count, dtype=np.result_type(scores.dtype, rest_scores.dtype))
    out[done], out[rest] = scores, rest_scores
    return out
