"""A detector object in the style of scikit-learn estimators and pytorch-ood detectors.

    detector = WatermarkDetector(model, normalization, score="energy")
    detector.fit(id_train)                  # learns the watermark (or pass one in)
    detector.calibrate(id_validation, tpr=0.95)
    result = detector.predict(images)       # scores and is-OOD decisions
    detector.save("detector.safetensors")
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save as save_bytes

from .config import FitConfig, get_preset
from .data import ImageSet
from .errors import WatermarkOODError, describe
from .evaluation import predict_logits
from .features import LOGIT_SCORES
from .fileio import atomic_write_bytes, atomic_write_json, read_safetensors
from .learner import WatermarkLearner
from .preprocessing import Normalization
from .runtime import ExecutionConfig
from .scores import get_score
from .watermark import Watermark

FORMAT = "watermark-ood-detector"


@dataclass
class Prediction:
    scores: np.ndarray  # higher = more in-distribution
    is_ood: np.ndarray  # score below the calibrated threshold

    def to_rows(self, names: list[str] | None = None) -> list[dict[str, Any]]:
        names = names or [str(i) for i in range(len(self.scores))]
        return [{"input": n, "score": float(s), "is_ood": bool(o)} for n, s, o in zip(names, self.scores, self.is_ood)]


class WatermarkDetector:
    """Model + watermark + score + threshold: a yes/no "reject this input" at a known ID acceptance rate."""

    def __init__(self, model: torch.nn.Module, normalization: Normalization, watermark: Watermark | None = None,
                 score: str = "energy", config: FitConfig | None = None, execution: ExecutionConfig | None = None,
                 model_id: str = "model") -> None:
        if score not in LOGIT_SCORES:
            raise WatermarkOODError(f"a deployable detector uses a logit score ({', '.join(LOGIT_SCORES)}), not {score!r}")
        self.model, self.normalization, self.watermark = model, normalization, watermark
        self.score, self.config = score, config
        self.execution = execution or ExecutionConfig()
        self.model_id = model_id
        self.threshold: float | None = None
        self.tpr: float | None = None

    # ------------------------------------------------------------------ fitting
    def fit(self, id_train: ImageSet, **fit_kwargs: Any) -> "WatermarkDetector":
        """Learn the watermark on ID training data (the config defaults to the paper's CIFAR-10 preset for the score)."""
        objective = "energy" if self.score == "energy" else "msp"
        config = self.config or get_preset("cifar10", objective).config()
        learner = WatermarkLearner(self.model, self.normalization, config, self.execution, self.model_id)
        self.watermark = learner.fit(id_train, **fit_kwargs).watermark
        return self

    def scores(self, images: ImageSet | torch.Tensor) -> np.ndarray:
        if isinstance(images, torch.Tensor):
            images = ImageSet(images, torch.full((len(images),), -1), "inputs")
        logits = predict_logits(self.model, images, self.normalization, self.watermark, self.execution)
        return get_score(self.score)(logits).numpy()

    def calibrate(self, id_validation: ImageSet, tpr: float = 0.95) -> "WatermarkDetector":
        """Set the threshold so that a share ``tpr`` of these ID inputs is accepted (score >= threshold)."""
        if not 0.0 < tpr <= 1.0:
            raise WatermarkOODError(f"tpr must be in (0, 1], got {tpr}")
        scores = np.sort(self.scores(id_validation))
        k = int(np.floor((1.0 - tpr) * len(scores) + 1e-9))
        self.threshold, self.tpr = float(scores[min(k, len(scores) - 1)]), float(tpr)
        return self

    def predict(self, images: ImageSet | torch.Tensor) -> Prediction:
        if self.threshold is None:
            raise WatermarkOODError("the detector is not calibrated; call calibrate() or run `watermark-ood calibrate`")
        scores = self.scores(images)
        return Prediction(scores, scores < self.threshold)

    # ---------------------------------------------------------------- save/load
    def metadata(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "format_version": 1, "model": self.model_id,
            "normalization": self.normalization.to_dict(), "score": self.score, "threshold": self.threshold,
            "tpr": self.tpr, "watermark": None if self.watermark is None else self.watermark.metadata,
            "input_shape": None if self.watermark is None else list(self.watermark.image_shape),
        }

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        meta = self.metadata()
        tensors = {"watermark": self.watermark.tensor} if self.watermark is not None else {"none": torch.zeros(1)}
        atomic_write_bytes(path, save_bytes(tensors, metadata={"detector": json.dumps(meta)}))
        atomic_write_json(path.with_suffix(".json"), meta)
        return path

    @staticmethod
    def read(path: str | Path) -> tuple[dict[str, Any], Watermark | None]:
        """Metadata and watermark of a detector file; every failure is a WatermarkOODError."""
        path = Path(path)
        if not path.is_file():
            raise WatermarkOODError(f"{path}: detector file not found")
        blob = path.read_bytes()
        try:
            tensors, header_metadata = read_safetensors(blob)
            meta = json.loads(header_metadata["detector"])
            if not isinstance(meta, dict) or meta.get("format") != FORMAT:
                raise ValueError("not a watermark-ood detector")
            normalization = Normalization.from_dict(meta["normalization"])
            threshold = meta["threshold"]
            if threshold is not None and not np.isfinite(float(threshold)):
                raise ValueError("threshold is not finite")
            if meta["score"] not in LOGIT_SCORES:
                raise ValueError(f"unknown score {meta['score']!r}")
        except WatermarkOODError:
            raise
        except Exception as error:  # noqa: BLE001 - damaged files fail in many ways
            raise WatermarkOODError(f"{path}: not a valid detector file ({describe(error)})") from None
        watermark = None
        if "watermark" in tensors:
            watermark = Watermark(tensors["watermark"], meta.get("watermark") or {})
        meta["normalization"] = normalization
        return meta, watermark

    @classmethod
    def load(cls, path: str | Path, model: torch.nn.Module, execution: ExecutionConfig | None = None
             ) -> "WatermarkDetector":
        meta, watermark = cls.read(path)
        detector = cls(model, meta["normalization"], watermark, meta["score"], execution=execution,
                       model_id=meta["model"])
        detector.threshold, detector.tpr = meta["threshold"], meta["tpr"]
        return detector
