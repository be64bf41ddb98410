"""What a detector returns for a batch of inputs (:class:`Prediction`), and the inputs it takes (:func:`as_images`):
uint8 pixels or, like the exported module, floats in [0, 1]."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from watermark_ood.core.errors import WatermarkOODError
from watermark_ood.data.images import ImageSet


@dataclass
class Prediction:
    scores: np.ndarray  # higher = more in-distribution
    is_ood: np.ndarray  # score below the calibrated threshold
    classes: np.ndarray | None = None  # the classifier's predicted class (-1 for unreadable files)
    class_names: list[str] | None = None  # names of the classes, where the ID data had them
    p_values: np.ndarray | None = None  # conformal p-values (small = unusual); None for files without calibration
    fdr_rejected: np.ndarray | None = None  # rejected by Benjamini-Hochberg over this batch (predict(fdr=q))

    def to_rows(self, names: list[str] | None = None) -> list[dict[str, Any]]:
        """One dict per input: input, score, is_ood, status ("ok", or "unreadable" for a file skipped with
        --skip-bad-images: no score and no decision), predicted_class (and class_name when names are known)."""
        names = names or [str(i) for i in range(len(self.scores))]
        classes = self.classes if self.classes is not None else np.full(len(self.scores), -1)
        p_values = self.p_values if self.p_values is not None else [None] * len(self.scores)
        fdr = self.fdr_rejected if self.fdr_rejected is not None else [None] * len(self.scores)
        rows = []
        for n, s, o, c, p, f in zip(names, self.scores, self.is_ood, classes, p_values, fdr):
            # A file skipped as unreadable (--skip-bad-images) has no score: its row says so instead of deciding.
            row: dict[str, Any] = ({"input": n, "score": float(s), "is_ood": bool(o), "status": "ok"}
                                   if not np.isnan(s) else
                                   {"input": n, "score": None, "is_ood": None, "status": "unreadable"})
            row["predicted_class"] = int(c) if c >= 0 and not np.isnan(s) else None
            if self.p_values is not None:
                row["p_value"] = None if np.isnan(s) else float(p)
            if self.fdr_rejected is not None:
                row["fdr_reject"] = None if np.isnan(s) else bool(f)
            if self.class_names is not None:
                known = row["predicted_class"] is not None and int(c) < len(self.class_names)
                row["class_name"] = self.class_names[int(c)] if known else None
            rows.append(row)
        return rows



def as_images(images: ImageSet | torch.Tensor | np.ndarray) -> ImageSet:
    """Images as the detector reads them: an ImageSet, or an NCHW tensor / array of uint8 pixels (0-255) or of
    floats in [0, 1] (what the exported module takes). Floats are rounded to 8 bits, the precision the detector
    was fitted and calibrated at: exact for images that came from 8-bit files.

    >>> as_images(torch.full((2, 3, 4, 4), 0.5)).images[0, 0, 0, 0].item()
    128
    """
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images))
    if isinstance(images, torch.Tensor):
        if images.ndim != 4:
            raise WatermarkOODError(f"images must be NCHW (N x C x H x W), got shape {tuple(images.shape)}")
        if images.is_floating_point():
            finite = torch.isfinite(images).all()
            if not finite or images.min() < 0 or images.max() > 1:
                raise WatermarkOODError("float images must lie in [0, 1] (raw pixels / 255, as the exported module "
                                        "takes them); pass uint8 pixels 0-255 otherwise")
            images = (images * 255).round().to(torch.uint8)
        elif images.dtype != torch.uint8:
            raise WatermarkOODError(f"images must be uint8 (0-255) or float in [0, 1], got {images.dtype}")
        return ImageSet(images, torch.full((len(images),), -1), "inputs")
    return images
