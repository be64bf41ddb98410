"""The detectors that run the model themselves instead of reading shared logits and features: odin and mcd
(their own passes, nothing fitted), mahalanobis-odin (inputs perturbed through the features), nac (gradients on
tapped layers, fitted on images). One place that says how each is fitted and scored, for :class:`Detector`."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from watermark_ood.data.images import ImageSet
from watermark_ood.detection.registry import DETECTOR_KINDS
from watermark_ood.runtime.inference import coverage_fit, coverage_scores, perturbed_scores

if TYPE_CHECKING:  # annotation only: detector imports this module (the detector-units redesign removes both)
    from watermark_ood.detection.detector import Detector

SCORED_ON_IMAGES = ("perturbed", "coverage")  # fitted score objects whose scores need the images


def scores_on_images(detector: "Detector", images: ImageSet) -> np.ndarray:
    """Scores (higher = more ID) of a detector that runs the model itself."""
    d = detector
    if d.reads == "coverage":
        return coverage_scores(d.model, images, d.normalization, d.watermark, d.execution, d.scorer.impl, d.layers)
    if d.reads == "perturbed":
        return perturbed_scores(d.model, images, d.normalization, d.watermark, d.execution, d.scorer.impl)
    return DETECTOR_KINDS[d.score].score_images(d.model, images, d.normalization, d.watermark, d.execution)


def fit_on_images(detector: "Detector", images: ImageSet) -> None:
    """nac: the library's own passes with gradients over ``images`` (the other kinds fit on shared outputs)."""
    d = detector
    coverage_fit(d.model, images, d.normalization, d.watermark, d.execution, d.scorer.impl, d.layers)
    d.scorer.widths, d.scorer.fitted = tuple(int(w) for w in d.scorer.impl.widths.tolist()), True
