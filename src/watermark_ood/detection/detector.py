"""The deployable detector: model (+ optional watermark) + any post-hoc score + a calibrated threshold.

One interface for every score of :mod:`detectors`, in the style of scikit-learn estimators and pytorch-ood:

    detector = Detector(model, normalization, score="knn", watermark=None)
    detector.fit(id_train)                  # fits the score on ID training data (no-op for msp, energy, ...)
    detector.calibrate(id_holdout, tpr=0.95)
    result = detector.predict(images)       # scores (higher = more ID) and is-OOD decisions
    detector.save("detector.safetensors")   # safetensors tensors + JSON; no pickle anywhere

``WatermarkDetector`` (the name of earlier releases) is the same class; its ``fit`` still learns a watermark
first when none was given.

Longer than 400 lines for now: file reading/validation is not yet split from the Detector (issue 25, open).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save as save_bytes

from watermark_ood.core.errors import WatermarkOODError, describe
from watermark_ood.core.fileio import atomic_write_bytes, atomic_write_json, read_safetensors
from watermark_ood.core.schema import check_float, check_int, check_list, check_mapping, check_str, check_tensor, fail
from watermark_ood.data.images import ImageSet
from watermark_ood.data.preprocessing import Normalization
from watermark_ood.data.streaming import readable_rows
from watermark_ood.detection.conformal import Calibration, conformal_threshold
from watermark_ood.detection.posthoc import Combination, PosthocScore, build_score, check_state
from watermark_ood.detection.registry import check_name, reads_features
from watermark_ood.models.taps import last_linear
from watermark_ood.runtime.device import ExecutionConfig
from watermark_ood.watermark.config import FitConfig, get_preset
from watermark_ood.watermark.file import Watermark, check_watermark_metadata

FORMAT = "watermark-ood-detector"
FORMAT_VERSION = 2  # 1: logit scores only (still read); 2: any score, its fitted state, model fingerprint
FIT_IMAGES = 5000  # ID training images a score is fitted on (seeded sample)


@dataclass
class Prediction:
    scores: np.ndarray  # higher = more in-distribution
    is_ood: np.ndarray  # score below the calibrated threshold
    classes: np.ndarray | None = None  # the classifier's predicted class (-1 for unreadable files)
    class_names: list[str] | None = None  # names of the classes, where the ID data had them
    p_values: np.ndarray | None = None  # conformal p-values (small = unusual); None for files without calibration

    def to_rows(self, names: list[str] | None = None) -> list[dict[str, Any]]:
        """One dict per input: input, score, is_ood, predicted_class (and class_name when names are known)."""
        names = names or [str(i) for i in range(len(self.scores))]
        classes = self.classes if self.classes is not None else np.full(len(self.scores), -1)
        p_values = self.p_values if self.p_values is not None else [None] * len(self.scores)
        rows = []
        for n, s, o, c, p in zip(names, self.scores, self.is_ood, classes, p_values):
            # A file skipped as unreadable (--skip-bad-images) has no score: its row says so instead of deciding.
            row: dict[str, Any] = ({"input": n, "score": float(s), "is_ood": bool(o)} if not np.isnan(s) else
                                   {"input": n, "score": None, "is_ood": "unreadable"})
            row["predicted_class"] = int(c) if c >= 0 and not np.isnan(s) else None
            if self.p_values is not None:
                row["p_value"] = None if np.isnan(s) else float(p)
            if self.class_names is not None:
                known = row["predicted_class"] is not None and int(c) < len(self.class_names)
                row["class_name"] = self.class_names[int(c)] if known else None
            rows.append(row)
        return rows


def model_fingerprint(model: torch.nn.Module) -> str:
    """sha256 of the classifier head's weights: identifies the model a detector was fitted for, cheaply."""
    head = last_linear(model)
    digest = hashlib.sha256()
    for tensor in (head.weight, head.bias):
        if tensor is not None:
            digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


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


class Detector:
    """A yes/no "reject this input" at a known ID acceptance rate, for any score, with or without a watermark."""

    def __init__(self, model: torch.nn.Module, normalization: Normalization, watermark: Watermark | None = None,
                 score: str = "energy", config: FitConfig | None = None, execution: ExecutionConfig | None = None,
                 model_id: str = "model") -> None:
        check_name(score)
        self.model, self.normalization, self.watermark = model, normalization, watermark
        self.score, self.config = score, config
        self.execution = execution or ExecutionConfig()
        self.model_id = model_id
        head = last_linear(model) if reads_features(score) else None
        self.scorer = build_score(score, head)
        self.threshold: float | None = None
        self.tpr: float | None = None
        self.input_shape: tuple[int, ...] | None = None if watermark is None else tuple(watermark.image_shape)
        self.selection: dict[str, Any] | None = None  # the ranking `--score auto` chose from, when it did
        self.class_names: list[str] | None = None  # the ID classes' names, where the data had them
        self.calibration: Calibration | None = None  # the sorted calibration scores (p-values, guarantees)
        self.fit_seconds: float | None = None

    @property
    def reads(self) -> str:
        return "gradient" if self.scorer is None else self.scorer.reads

    @property
    def fitted(self) -> bool:
        return self.scorer is None or self.scorer.fitted

    # ------------------------------------------------------------------ forward passes
    def outputs(self, images: ImageSet | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits and (when the score reads them) penultimate features of ``images`` under the watermark."""
        from watermark_ood.runtime.inference import logits_and_features, predict_logits

        images = as_images(images)
        if self.reads == "features":
            return logits_and_features(self.model, images, self.normalization, self.watermark, self.execution)
        return predict_logits(self.model, images, self.normalization, self.watermark, self.execution), None

    def scores_from(self, logits: torch.Tensor, features: torch.Tensor | None) -> np.ndarray:
        """The score of precomputed outputs (the pure part; ODIN has none, it needs the images).

        Rows of files skipped as unreadable (all NaN) score NaN; only readable rows reach the score, since
        some detectors (scikit-learn's KNN) refuse a NaN anywhere in the batch.
        """
        if self.scorer is None:
            raise WatermarkOODError("odin perturbs the inputs; score images with scores(), not precomputed outputs")
        rows = readable_rows(logits)
        if bool(rows.all()):
            return self.scorer(logits, features).numpy()
        out = np.full(len(logits), np.nan, dtype=np.float32)
        if bool(rows.any()):
            kept = self.scorer(logits[rows], None if features is None else features[rows]).numpy()
            out = out.astype(kept.dtype)
            out[rows.numpy()] = kept
        return out

    def scores(self, images: ImageSet | torch.Tensor) -> np.ndarray:
        """Higher = more in-distribution."""
        images = as_images(images)
        if self.scorer is None:
            from watermark_ood.runtime.inference import odin_scores

            return odin_scores(self.model, images, self.normalization, self.watermark, self.execution)
        return self.scores_from(*self.outputs(images))

    # ------------------------------------------------------------------ fitting
    def fit(self, id_train: ImageSet, limit: int = FIT_IMAGES, seed: int = 0) -> "Detector":
        """Fit the score on (a seeded sample of at most ``limit``) labelled ID training images."""
        import time

        t0 = time.perf_counter()
        self.input_shape = tuple(id_train.image_shape)
        if isinstance(self.scorer, Combination):
            fit_part, held = id_train.split(0.2, seed)  # parts fit on 80%, their z-scores from the other 20%
            sample = fit_part.sample(limit, seed)
            self.fit_outputs(*self.outputs(sample), sample.labels, self.outputs(held.sample(max(1, limit // 4), seed)))
        elif self.scorer is not None and self.scorer.kind.fitted:
            sample = id_train.sample(limit, seed)
            self.fit_outputs(*self.outputs(sample), sample.labels)
        self.fit_seconds = time.perf_counter() - t0
        return self

    def fit_outputs(self, logits: torch.Tensor, features: torch.Tensor | None, labels: torch.Tensor,
                    held: tuple[torch.Tensor, torch.Tensor | None] | None = None) -> "Detector":
        """Fit on precomputed ID outputs; a combination also needs ``held`` ID outputs for its z-scores.

        Rows of files skipped as unreadable (all NaN) are left out.
        """
        rows = readable_rows(logits)
        logits, features, labels = logits[rows], None if features is None else features[rows], labels[rows]
        if held is not None:
            kept = readable_rows(held[0])
            held = (held[0][kept], None if held[1] is None else held[1][kept])
        if isinstance(self.scorer, Combination):
            if held is None:
                raise WatermarkOODError("a combination of scores needs held-out ID outputs for its z-scores")
            self.scorer.fit(logits, features, labels, *held)
        elif self.scorer is not None:
            self.scorer.fit(logits, features, labels)
        return self

    def calibrate(self, id_validation: ImageSet, tpr: float = 0.95, per_class: bool = False,
                  num_classes: int | None = None) -> "Detector":
        """Split-conformal threshold(s) on held-out ID images: P(reject an exchangeable ID input) <= 1 - tpr for
        any number of them (:mod:`conformal`); ``per_class``: one threshold per predicted class, each with that
        guarantee (``num_classes``: every class of the ID data must have enough calibration images)."""
        from watermark_ood.detection.conformal import calibrate as conformal_calibration
        from watermark_ood.detection.conformal import check_tpr

        check_tpr(tpr)
        self.input_shape = tuple(id_validation.image_shape)
        scores, classes = self._scores_and_classes(as_images(id_validation))
        self.calibration = conformal_calibration(scores, tpr, classes, per_class, num_classes)
        self.threshold, self.tpr = self.calibration.threshold, float(tpr)
        return self

    def _scores_and_classes(self, images: ImageSet) -> tuple[np.ndarray, np.ndarray]:
        """Scores and the classifier's predicted classes (-1 for unreadable files), from one forward pass."""
        if self.scorer is None:
            from watermark_ood.runtime.inference import predict_logits

            scores = self.scores(images)
            logits = predict_logits(self.model, images, self.normalization, self.watermark, self.execution)
        else:
            logits, features = self.outputs(images)
            scores = self.scores_from(logits, features)
        classes = torch.where(readable_rows(logits), logits.nan_to_num(0.0).argmax(dim=1), -1).numpy()
        return scores, classes

    def predict(self, images: ImageSet | torch.Tensor | np.ndarray) -> Prediction:
        """Scores, decisions, predicted classes and conformal p-values; ``images`` as :func:`as_images` takes them."""
        if self.threshold is None:
            raise WatermarkOODError("the detector is not calibrated; call calibrate() or run `watermark-ood calibrate`")
        scores, classes = self._scores_and_classes(as_images(images))
        if self.calibration is None:  # a file written before conformal calibration: its threshold, no p-values
            return Prediction(scores, scores < self.threshold, classes, self.class_names)
        thresholds = self.calibration.thresholds_for(classes)
        return Prediction(scores, scores < thresholds, classes, self.class_names,
                          self.calibration.p_values(scores, classes))

    def shift_test(self, prediction: Prediction) -> dict[str, Any]:
        """The shift alarm for a batch of predictions: are more inputs rejected than ID inputs allow?"""
        readable = ~np.isnan(prediction.scores)
        return self.shift_counts(int(prediction.is_ood[readable].sum()), int(readable.sum()))

    def shift_counts(self, rejected: int, inputs: int) -> dict[str, Any]:
        """The same from counts (predict streams its inputs): the beta-binomial test when one overall calibration
        set fixes the threshold, the binomial one otherwise (per-class thresholds, files without calibration)."""
        from watermark_ood.detection.conformal import shift_test

        n = self.calibration.n if self.calibration is not None and self.calibration.class_thresholds is None else None
        return shift_test(rejected, inputs, self.tpr, n)

    # ---------------------------------------------------------------- save/load
    def metadata(self, state_values: dict[str, Any] | None = None) -> dict[str, Any]:
        """The JSON side of a detector file; ``state_values`` is the score's JSON state (computed if not given)."""
        if state_values is None:
            state_values = self.scorer.state()[1] if self.scorer is not None else {}
        return {
            "format": FORMAT, "format_version": FORMAT_VERSION, "model": self.model_id,
            "model_fingerprint": model_fingerprint(self.model), "normalization": self.normalization.to_dict(),
            "score": self.score, "score_state": state_values, "threshold": self.threshold, "tpr": self.tpr,
            "watermark": None if self.watermark is None else self.watermark.metadata,
            "input_shape": None if self.input_shape is None else list(self.input_shape),
            "selection": self.selection, "class_names": self.class_names,
            "calibration": None if self.calibration is None else self.calibration.summary(),
        }

    def save(self, path: str | Path) -> Path:
        """``path`` (safetensors: watermark and fitted state) and a readable ``.json`` beside it."""
        if not self.fitted:
            raise WatermarkOODError(f"the {self.score} detector is not fitted; fit it before saving")
        path = Path(path)
        state_tensors, state_values = self.scorer.state() if self.scorer is not None else ({}, {})
        meta = self.metadata(state_values)
        tensors = {f"score/{k}": v for k, v in state_tensors.items()}
        if self.watermark is not None:
            tensors["watermark"] = self.watermark.tensor
        if self.calibration is not None:
            tensors["calibration/scores"] = torch.from_numpy(self.calibration.scores.astype(np.float64))
            if self.calibration.classes is not None:
                tensors["calibration/classes"] = torch.from_numpy(self.calibration.classes.astype(np.int64))
        if not tensors:
            tensors["none"] = torch.zeros(1)
        atomic_write_bytes(path, save_bytes(tensors, metadata={"detector": json.dumps(meta)}))
        atomic_write_json(path.with_suffix(".json"), meta)
        return path

    @staticmethod
    def read(path: str | Path) -> tuple[dict[str, Any], Watermark | None]:
        """Metadata (with ``score_tensors``) and watermark of a detector file, every field checked against the
        file's schema (:func:`check_metadata`); every failure is a one-line WatermarkOODError naming the field."""
        path = Path(path)
        if not path.is_file():
            raise WatermarkOODError(f"{path}: detector file not found")
        blob = path.read_bytes()
        try:
            tensors, header_metadata = read_safetensors(blob)
            meta = json.loads(header_metadata["detector"], parse_constant=_refuse_constant)
            if not isinstance(meta, dict) or meta.get("format") != FORMAT:
                raise ValueError("not a watermark-ood detector")
        except WatermarkOODError as error:
            raise WatermarkOODError(f"{path}: not a valid detector file ({error})") from None
        except Exception as error:  # noqa: BLE001 - damaged files fail in many ways
            raise WatermarkOODError(f"{path}: not a valid detector file ({describe(error)})") from None
        try:
            normalization = check_metadata(meta, tensors)
            watermark = None
            if "watermark" in tensors:
                watermark = Watermark(tensors["watermark"], meta.get("watermark") or {})
        except WatermarkOODError as error:
            raise WatermarkOODError(f"{path}: not a valid detector file ({error})") from None
        meta["normalization"] = normalization
        meta["score_tensors"] = {k.split("/", 1)[1]: v for k, v in tensors.items() if k.startswith("score/")}
        try:
            meta["calibration_state"] = check_calibration(meta, tensors)
        except WatermarkOODError as error:
            raise WatermarkOODError(f"{path}: not a valid detector file ({error})") from None
        return meta, watermark

    @classmethod
    def load(cls, path: str | Path, model: torch.nn.Module, execution: ExecutionConfig | None = None) -> "Detector":
        """A saved detector for ``model``; refuses a file fitted for another model (by its head's fingerprint)."""
        meta, watermark = cls.read(path)
        recorded = meta.get("model_fingerprint")
        if recorded is not None and recorded != model_fingerprint(model):
            raise WatermarkOODError(f"{path}: this detector was made for model {meta['model']!r} (head fingerprint "
                                    f"{recorded}), not for the model given (fingerprint {model_fingerprint(model)})")
        detector = cls(model, meta["normalization"], watermark, meta["score"], execution=execution,
                       model_id=meta["model"])
        try:
            check_score_state(meta, detector.scorer, model)
        except WatermarkOODError as error:
            raise WatermarkOODError(f"{path}: not a valid detector file ({error})") from None
        if detector.scorer is not None:
            head = detector.scorer.parts[0].head if isinstance(detector.scorer, Combination) else detector.scorer.head
            kind = Combination if isinstance(detector.scorer, Combination) else PosthocScore
            try:
                detector.scorer = kind.from_state(meta["score"], head, meta["score_tensors"], meta.get("score_state")
                                                  or {"fitted": True})
            except WatermarkOODError:
                raise
            except Exception as error:  # noqa: BLE001 - a damaged state fails in many ways
                raise WatermarkOODError(f"{path}: the {meta['score']} state is damaged ({describe(error)})") from None
        detector.threshold, detector.tpr = meta.get("threshold"), meta.get("tpr")
        detector.input_shape = tuple(meta["input_shape"]) if meta.get("input_shape") else detector.input_shape
        detector.selection = meta.get("selection")
        detector.class_names = meta.get("class_names")
        detector.calibration = meta.get("calibration_state")
        if watermark is not None and detector.input_shape and tuple(watermark.image_shape) != detector.input_shape:
            raise WatermarkOODError(f"{path}: watermark shape {tuple(watermark.image_shape)} does not match the "
                                    f"detector's input shape {detector.input_shape}")
        return detector


def _refuse_constant(name: str) -> float:
    raise WatermarkOODError(f"the JSON header holds {name}, which no field may be")


def check_metadata(meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Normalization:
    """Every JSON field of a detector file (formats 1 and 2) and its watermark tensor, before anything is built.

    Returns the normalization. Sizes that need the model (feature dimension, classes) are checked by
    :func:`check_score_state` once the model is known.
    """
    version = meta.get("format_version", 1)
    check_int("format_version", version, 1, FORMAT_VERSION)
    check_str("model", meta.get("model"))
    if meta.get("model_fingerprint") is not None or version >= 2:
        check_str("model_fingerprint", meta.get("model_fingerprint"), r"[0-9a-f]{16}")
    check_str("score", meta.get("score"))
    check_name(meta["score"])
    norm = check_mapping("normalization", meta.get("normalization"))
    if set(norm) != {"mean", "std"}:
        raise fail("normalization", "an object with mean and std", norm)
    mean = check_list("normalization.mean", norm["mean"])
    std = check_list("normalization.std", norm["std"], len(mean))
    if not mean:
        raise fail("normalization.mean", "one value per channel", mean)
    for i, (m, v) in enumerate(zip(mean, std)):
        check_float(f"normalization.mean[{i}]", m, 0.0, 1.0)  # of pixels in [0, 1]
        check_float(f"normalization.std[{i}]", v, 0.0, 1e3, low_open=True)
    shape = meta.get("input_shape")
    if shape is not None:
        for i, size in enumerate(check_list("input_shape", shape, 3)):
            check_int(f"input_shape[{i}]", size, 1, 1 << 16)
        if shape[0] != len(mean):
            raise fail("input_shape[0]", f"{len(mean)} channels, as the normalization has", shape[0])
    threshold, tpr = meta.get("threshold"), meta.get("tpr")
    if threshold is not None:
        check_float("threshold", threshold)
    if tpr is not None:
        check_float("tpr", tpr, 0.0, 1.0, low_open=True)
    if (threshold is None) != (tpr is None):
        raise fail("tpr", "a value exactly when threshold has one", tpr)
    if meta.get("selection") is not None:
        check_mapping("selection", meta["selection"])
    if meta.get("watermark") is not None:
        check_watermark_metadata("watermark", meta["watermark"])
    names = meta.get("class_names")
    if names is not None:
        for i, name in enumerate(check_list("class_names", names)):
            check_str(f"class_names[{i}]", name)
    if ("watermark" in tensors) != (meta.get("watermark") is not None):
        raise fail("watermark", "metadata exactly when the file holds a watermark tensor", meta.get("watermark"))
    if "watermark" in tensors:
        mark = tensors["watermark"]
        expected = (1, *shape) if shape is not None else (1, len(mean), "H", "W")
        check_tensor("tensor watermark", mark, expected, {})
    unknown = sorted(k for k in tensors if k not in ("watermark", "none", "calibration/scores", "calibration/classes")
                     and not k.startswith("score/"))
    if unknown:
        raise fail(f"tensor {unknown[0]}", "no such tensor in a detector file", "a tensor")
    return Normalization(tuple(mean), tuple(std))


def check_calibration(meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Calibration | None:
    """The calibration block (sorted scores, per-class thresholds) of files written since conformal calibration."""
    block, scores = meta.get("calibration"), tensors.get("calibration/scores")
    if block is None and scores is None and "calibration/classes" not in tensors:
        return None  # an older file: threshold and tpr only
    block = check_mapping("calibration", block)
    if scores is None:
        raise fail("tensor calibration/scores", "the sorted calibration scores", "none")
    n = check_int("calibration.n", block.get("n"), 1)
    check_tensor("tensor calibration/scores", scores, (n,), {})
    values = scores.double().numpy()
    tpr = check_float("tpr", meta.get("tpr"), 0.0, 1.0, low_open=True, high_open=True)
    classes = tensors.get("calibration/classes")
    thresholds = None
    if block.get("per_class"):
        if classes is None or classes.dtype != torch.int64 or tuple(classes.shape) != (n,):
            raise fail("tensor calibration/classes", f"{n} int64 class indices", "none" if classes is None
                       else f"{classes.dtype} {tuple(classes.shape)}")
        classes = classes.numpy()
        per = check_mapping("calibration.classes", block.get("classes"))
        thresholds = {}
        for key, item in per.items():
            if not key.isdigit():
                raise fail("calibration.classes", "class indices", key)
            c = int(key)
            own = values[classes == c]
            if len(own) == 0 or np.any(np.diff(own) < 0):
                raise fail(f"calibration.classes.{key}", "sorted calibration scores of this class", len(own))
            thresholds[c] = conformal_threshold(own, tpr)
            check_float(f"calibration.classes.{key}.threshold", check_mapping(f"calibration.classes.{key}", item)
                        .get("threshold"))
    else:
        if classes is not None:
            raise fail("tensor calibration/classes", "none (the calibration is not per class)", "a tensor")
        if np.any(np.diff(values) < 0):
            raise fail("tensor calibration/scores", "scores sorted ascending", "unsorted scores")
        classes = None
    threshold = conformal_threshold(values, tpr)  # recomputed: the stored threshold must be the conformal one
    if meta.get("threshold") is None or abs(threshold - float(meta["threshold"])) > 1e-6 * max(1.0, abs(threshold)):
        raise fail("threshold", f"{threshold:.9g}, the split-conformal threshold of the stored scores",
                   meta.get("threshold"))
    return Calibration(values, classes, tpr, threshold, thresholds)


def check_score_state(meta: dict[str, Any], scorer: Any, model: torch.nn.Module) -> None:
    """The fitted state against the score's schema and this model's feature and class counts."""
    name, tensors = meta["score"], meta["score_tensors"]
    values = meta.get("score_state")
    if scorer is None:  # odin: nothing fitted, nothing stored
        if tensors or values not in (None, {}, {"fitted": True}):
            raise fail("score_state", "nothing for odin, which is not fitted", values)
        return
    if values is None and int(meta.get("format_version", 1)) == 1:
        values = {"fitted": True}  # format 1: logit scores, no state
    head = scorer.parts[0].head if isinstance(scorer, Combination) else scorer.head
    try:
        classes = last_linear(model).out_features
    except WatermarkOODError:
        classes = None
    check_state(name, values, tensors, head, classes)


class WatermarkDetector(Detector):
    """The detector of earlier releases: ``fit`` learns a watermark first (the paper's preset for the score)."""

    def fit(self, id_train: ImageSet, limit: int = FIT_IMAGES, seed: int = 0, **fit_kwargs: Any) -> "Detector":
        from watermark_ood.watermark.learner import WatermarkLearner

        if self.watermark is None:
            objective = "energy" if self.score == "energy" else "msp"
            config = self.config or get_preset("cifar10", objective).config()
            learner = WatermarkLearner(self.model, self.normalization, config, self.execution, self.model_id)
            self.watermark = learner.fit(id_train, **fit_kwargs).watermark
        return super().fit(id_train, limit, seed)
