"""The deployable detector: model (+ optional watermark) + any post-hoc score + a calibrated threshold.

One interface for every score of :mod:`detectors`, in the style of scikit-learn estimators and pytorch-ood:

    detector = Detector(model, normalization, score="knn", watermark=None)
    detector.fit(id_train)                  # fits the score on ID training data (no-op for msp, energy, ...)
    detector.calibrate(id_holdout, tpr=0.95)
    result = detector.predict(images)       # scores (higher = more ID) and is-OOD decisions
    detector.save("detector.safetensors")   # safetensors tensors + JSON; no pickle anywhere

``WatermarkDetector`` (the name of earlier releases) is the same class; its ``fit`` still learns a watermark
first when none was given.

The file format (reading and checking every field) is :mod:`.detector_file`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from safetensors.torch import save as save_bytes

from watermark_ood.core.distributed import is_main_process
from watermark_ood.core.errors import WatermarkOODError, describe
from watermark_ood.core.fileio import atomic_write_bytes, atomic_write_json
from watermark_ood.data.images import ImageSet
from watermark_ood.data.preprocessing import Normalization
from watermark_ood.data.streaming import readable_rows
from watermark_ood.detection.conformal import Calibration  # noqa: F401
from watermark_ood.detection.conformal import benjamini_hochberg
from watermark_ood.detection.conformal import calibrate as conformal_calibration
from watermark_ood.detection.conformal import check_fdr_level, check_tpr, conformal_threshold, shift_test
from watermark_ood.detection.data_policy import NAMED
from watermark_ood.detection.detector_file import (FORMAT, FORMAT_VERSION, check_calibration,  # noqa: F401
                                                   check_metadata, check_score_state, model_fingerprint,
                                                   read_detector_file)
from watermark_ood.detection.image_scores import SCORED_ON_IMAGES, fit_on_images, scores_on_images
from watermark_ood.detection.posthoc import Combination, PosthocScore, build_score
from watermark_ood.detection.prediction import Prediction, as_images  # noqa: F401 - part of this module's API
from watermark_ood.detection.registry import LAYER_SCORES, DetectorSpec, Reads
from watermark_ood.detection.selection_report import write_selection_report
from watermark_ood.models.layers import has_dropout, layer_widths, resolve_layers, spatial_mean
from watermark_ood.models.taps import last_linear
from watermark_ood.runtime.device import ExecutionConfig
from watermark_ood.runtime.inference import infer, logits_and_features, predict_logits
from watermark_ood.watermark.config import FitConfig, get_preset
from watermark_ood.watermark.file import Watermark
from watermark_ood.watermark.learner import WatermarkLearner

FIT_IMAGES = NAMED.fit_images  # ID training images a score is fitted on (seeded sample; data_policy)


class Detector:
    """A yes/no "reject this input" at a known ID acceptance rate, for any score, with or without a watermark."""

    def __init__(self, model: torch.nn.Module, normalization: Normalization, watermark: Watermark | None = None,
                 score: str | DetectorSpec = "energy", config: FitConfig | None = None,
                 execution: ExecutionConfig | None = None, model_id: str = "model",
                 layers: Sequence[str] | None = None) -> None:
        self.spec = spec = DetectorSpec.parse(score)  # a name is checked here, once
        self.model, self.normalization, self.watermark = model, normalization, watermark
        self.score, self.config = spec.name, config
        self.execution = execution or ExecutionConfig()
        self.model_id = model_id
        head = last_linear(model) if spec.reads_features else None
        self.scorer = build_score(spec, head)
        if spec.needs_dropout and not has_dropout(model):
            raise WatermarkOODError(f"{score} needs dropout at test time; {type(model).__name__} has no dropout layer "
                                    "(pick another score)")
        # the layers a detector on intermediate layers taps: as named, else the architecture's stage outputs
        self.layers: tuple[str, ...] | None = None
        if spec.reads_layers:
            self.layers = resolve_layers(spec.name, spec.kind.reads == Reads.MAP, model, layers)
        elif layers is not None:
            raise WatermarkOODError(f"{score} reads no intermediate layers; --layers is for {', '.join(LAYER_SCORES)}")
        self.threshold: float | None = None
        self.tpr: float | None = None
        self.input_shape: tuple[int, ...] | None = None if watermark is None else tuple(watermark.image_shape)
        self.selection: dict[str, Any] | None = None  # the ranking `--score auto` chose from, when it did
        self.class_names: list[str] | None = None  # the ID classes' names, where the data had them
        self.calibration: Calibration | None = None  # the sorted calibration scores (p-values, guarantees)
        self.fit_seconds: float | None = None

    @property
    def reads(self) -> str:
        return self.spec.kind.reads if self.scorer is None else self.scorer.reads

    @property
    def own_passes(self) -> bool:
        """Whether the score makes its own passes over the images (odin, mcd, layer and map detectors) instead of
        reading the logits and penultimate features that callers compute once and share between detectors."""
        return self.reads not in (Reads.LOGITS, Reads.FEATURES)

    def fit_shared(self, fit_set: ImageSet, fit: tuple, z: tuple) -> "Detector":
        """Fit from shared outputs of ``fit_set`` (``fit``) and of a held-out part (``z``, combinations' z-scores);
        a detector with its own passes fits on ``fit_set`` itself (mahalanobis-odin: on the shared features)."""
        if self.own_passes and self.reads != Reads.PERTURBED:
            return self.fit(fit_set, limit=len(fit_set))
        return self.fit_outputs(*fit, fit_set.labels, z)

    @property
    def fitted(self) -> bool:
        return self.scorer is None or self.scorer.fitted

    # ------------------------------------------------------------------ forward passes
    def outputs(self, images: ImageSet | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits and (when the score reads them) penultimate features of ``images`` under the watermark."""

        images = as_images(images)
        if self.reads == Reads.LAYERS:
            return infer(self.model, images, self.normalization, self.watermark, self.execution, layers=self.layers,
                         reduce=self._reducer())
        if self.reads == Reads.MAP:  # the plain logits (for the classes), then those of the changed map (the score)
            change = (self.layers[0], self.scorer.kind.change_map())
            return (predict_logits(self.model, images, self.normalization, self.watermark, self.execution),
                    infer(self.model, images, self.normalization, self.watermark, self.execution, rewrite=change)[0])
        if self.reads in (Reads.FEATURES, Reads.PERTURBED):  # perturbed: fitted on the features, scored on the images
            return logits_and_features(self.model, images, self.normalization, self.watermark, self.execution)
        return predict_logits(self.model, images, self.normalization, self.watermark, self.execution), None

    def scores_from(self, logits: torch.Tensor, features: torch.Tensor | None) -> np.ndarray:
        """The score of precomputed outputs (the pure part; ODIN has none, it needs the images).

        Rows of files skipped as unreadable (all NaN) score NaN; only readable rows reach the score, since
        some detectors (scikit-learn's KNN) refuse a NaN anywhere in the batch.
        """
        if self.scorer is None:
            raise WatermarkOODError(f"{self.score} makes its own passes over the inputs; score images with scores(), "
                                    "not precomputed outputs")
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
        if self.scorer is None or self.reads in SCORED_ON_IMAGES:  # odin, mcd, mahalanobis-odin, nac
            return scores_on_images(self, self.spec.kind.score_images, images)
        return self.scores_from(*self.outputs(images))

    # ------------------------------------------------------------------ fitting
    def fit(self, id_train: ImageSet, limit: int = FIT_IMAGES, seed: int = 0) -> "Detector":
        """Fit the score on (a seeded sample of at most ``limit``) labelled ID training images."""

        t0 = time.perf_counter()
        self.input_shape = tuple(id_train.image_shape)
        if isinstance(self.scorer, Combination):
            sample, held = NAMED.fit_and_z(id_train, seed, limit)  # parts fit on one split, z-scores from another
            self.fit_outputs(*self.outputs(sample), sample.labels, self.outputs(held))
        elif self.reads == Reads.COVERAGE:  # nac fits on the images themselves
            fit_on_images(self, id_train.sample(limit, seed))
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
            if self.reads == Reads.LAYERS:
                self.scorer.widths = self.layer_widths()
            self.scorer.fit(logits, features, labels)
        return self

    def layer_widths(self) -> tuple[int, ...]:
        """The channels of each tapped layer (one forward pass of a blank image of the detector's input shape)."""
        if self.layers is None or self.input_shape is None:
            raise WatermarkOODError(f"{self.score}: the input shape is not known; fit with fit(), not fit_outputs()")
        return layer_widths(self.model, self.layers, self.input_shape, self._reducer())

    def _reducer(self):
        """What the taps keep of each layer's map: the spatial mean, or the kind's own statistics (gram)."""
        make = self.spec.kind.reduce_layers
        return None if make is None else make(len(self.layers))

    def layer_reducer(self):
        """The statistics this detector keeps of each tapped map (passes shared by several detectors join them)."""
        return self._reducer() or spatial_mean

    def calibrate(self, id_validation: ImageSet, tpr: float = 0.95, per_class: bool = False,
                  num_classes: int | None = None) -> "Detector":
        """Split-conformal threshold(s) on held-out ID images: P(reject an exchangeable ID input) <= 1 - tpr for
        any number of them (:mod:`conformal`); ``per_class``: one threshold per predicted class, each with that
        guarantee (``num_classes``: every class of the ID data must have enough calibration images)."""

        check_tpr(tpr)
        self.input_shape = tuple(id_validation.image_shape)
        scores, classes = self._scores_and_classes(as_images(id_validation))
        self.calibration = conformal_calibration(scores, tpr, classes, per_class, num_classes)
        self.threshold, self.tpr = self.calibration.threshold, float(tpr)
        return self

    def _scores_and_classes(self, images: ImageSet) -> tuple[np.ndarray, np.ndarray]:
        """Scores and the classifier's predicted classes (-1 for unreadable files), from one forward pass."""
        if self.scorer is None or self.reads in SCORED_ON_IMAGES:

            scores = self.scores(images)
            logits = predict_logits(self.model, images, self.normalization, self.watermark, self.execution)
        else:
            logits, features = self.outputs(images)
            scores = self.scores_from(logits, features)
        classes = torch.where(readable_rows(logits), logits.nan_to_num(0.0).argmax(dim=1), -1).numpy()
        return scores, classes

    def predict(self, images: ImageSet | torch.Tensor | np.ndarray, fdr: float | None = None) -> Prediction:
        """Scores, decisions, predicted classes and conformal p-values; ``images`` as :func:`as_images` takes them.
        ``fdr``: also reject by Benjamini-Hochberg over this batch's p-values at that false-discovery rate
        (``fdr_rejected``; see :mod:`.conformal`)."""
        if self.threshold is None:
            raise WatermarkOODError("the detector is not calibrated; call calibrate() or run `watermark-ood calibrate`")
        if fdr is not None:
            self.check_fdr(fdr)
        scores, classes = self._scores_and_classes(as_images(images))
        if self.calibration is None:  # a file written before conformal calibration: its threshold, no p-values
            return Prediction(scores, scores < self.threshold, classes, self.class_names)
        thresholds = self.calibration.thresholds_for(classes)
        p = self.calibration.p_values(scores, classes)
        return Prediction(scores, scores < thresholds, classes, self.class_names, p,
                          None if fdr is None else benjamini_hochberg(p, fdr))

    def check_fdr(self, level: float) -> None:
        """False-discovery control needs one calibration set's p-values (their positive dependence is what
        Benjamini-Hochberg relies on): refused for files without calibration scores and for per-class ones."""
        check_fdr_level(level)
        if self.calibration is None:
            raise WatermarkOODError("--fdr needs conformal p-values; this detector file has no calibration scores "
                                    "(written before them): calibrate it again")
        if self.calibration.class_thresholds is not None:
            raise WatermarkOODError("--fdr is not available for a detector calibrated --per-class (its per-class "
                                    "p-values are not covered by the false-discovery guarantee); calibrate without it")

    def shift_test(self, prediction: Prediction) -> dict[str, Any]:
        """The shift alarm for a batch of predictions: are more inputs rejected than ID inputs allow?"""
        readable = ~np.isnan(prediction.scores)
        return self.shift_counts(int(prediction.is_ood[readable].sum()), int(readable.sum()))

    def shift_counts(self, rejected: int, inputs: int) -> dict[str, Any]:
        """The same from counts (predict streams its inputs): the beta-binomial test when one overall calibration
        set fixes the threshold, the binomial one otherwise (per-class thresholds, files without calibration)."""

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
            **({} if self.layers is None else {"layers": list(self.layers)}),
        }

    def save(self, path: str | Path, watermark_label: str = "given", verify: bool = True) -> Path:
        """``path`` (safetensors: watermark and fitted state) and a readable ``.json`` beside it; a detector chosen
        by ``--score auto`` also gets its ranking as ``.md`` (``watermark_label`` names the watermark there).

        ``verify``: the file is first written beside ``path`` and loaded back for this model, and the loaded
        detector must score a seeded probe as this one does; otherwise nothing is written and the save fails in
        one line. A file that cannot be loaded is never reported as saved."""
        path = Path(path)
        data, meta = self.file_bytes()
        if verify and is_main_process():
            self._verify_file(path, data)
        atomic_write_bytes(path, data)
        atomic_write_json(path.with_suffix(".json"), meta)
        if self.selection is not None:
            try:
                write_selection_report(path.with_suffix(".md"), self.selection, watermark_label)
            except (KeyError, TypeError, ValueError, AttributeError):
                pass  # a ranking record read from a file and cut down by hand: the JSON keeps what it holds
        return path

    def file_bytes(self) -> tuple[bytes, dict[str, Any]]:
        """The detector file's bytes (safetensors: fitted state, watermark, calibration scores; the JSON header)
        and its JSON side, as :meth:`save` writes them; a leaderboard measures a detector's size with it."""
        if not self.fitted:
            raise WatermarkOODError(f"the {self.score} detector is not fitted; fit it before saving")
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
        return save_bytes(tensors, metadata={"detector": json.dumps(meta)}), meta

    def _verify_file(self, path: Path, data: bytes) -> None:
        """Load ``data`` as :meth:`load` will, from a temporary file beside ``path``, and compare scores."""
        probe = None if self.input_shape is None else torch.randint(
            0, 256, (4, *self.input_shape), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
        trial = atomic_write_bytes(path.with_name(f".{path.stem}.verify.safetensors"), data)
        try:
            loaded = Detector.load(trial, self.model, self.execution)
            expected = None if probe is None else self.scores(probe)
            # float32 rounding in another memory layout (RMD's difference of two large distances: 4e-4 relative
            # on one score, 1e-5 of the largest) passes; a state restored wrongly differs at the scores' scale
            scale = 0.0 if expected is None else float(np.nanmax(np.abs(expected), initial=0))
            if expected is not None and not np.allclose(loaded.scores(probe), expected, rtol=1e-4, equal_nan=True,
                                                         atol=1e-4 * scale + 1e-6):
                raise WatermarkOODError("the loaded detector scores differently")
        except WatermarkOODError as error:
            message = str(error).replace(f"{trial}: ", "")
            raise WatermarkOODError(f"{path}: not written: the {self.score} detector's file would not load back "
                                    f"for this model ({message})") from None
        finally:
            trial.unlink(missing_ok=True)

    @staticmethod
    def read(path: str | Path) -> tuple[dict[str, Any], Watermark | None]:
        """Metadata (with ``score_tensors``) and watermark of a detector file: :func:`.detector_file.read`."""
        return read_detector_file(path)

    @classmethod
    def load(cls, path: str | Path, model: torch.nn.Module, execution: ExecutionConfig | None = None) -> "Detector":
        """A saved detector for ``model``; refuses a file fitted for another model (by its head's fingerprint)."""
        meta, watermark = cls.read(path)
        recorded = meta.get("model_fingerprint")
        if recorded is not None and recorded != model_fingerprint(model):
            raise WatermarkOODError(f"{path}: this detector was made for model {meta['model']!r} (head fingerprint "
                                    f"{recorded}), not for the model given (fingerprint {model_fingerprint(model)})")
        detector = cls(model, meta["normalization"], watermark, meta["score"], execution=execution,
                       model_id=meta["model"], layers=meta.get("layers"))
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
        tapped = detector.reads in (Reads.LAYERS, Reads.COVERAGE)
        if tapped and tuple(detector.scorer.widths or ()) != detector.layer_widths():
            raise WatermarkOODError(f"{path}: the tapped layers {', '.join(detector.layers)} of this model have "
                                    f"{list(detector.layer_widths())} channels, the file was fitted on "
                                    f"{list(detector.scorer.widths or ())}")
        return detector


class WatermarkDetector(Detector):
    """The detector of earlier releases: ``fit`` learns a watermark first (the paper's preset for the score)."""

    def fit(self, id_train: ImageSet, limit: int = FIT_IMAGES, seed: int = 0, **fit_kwargs: Any) -> "Detector":

        if self.watermark is None:
            objective = "energy" if self.score == "energy" else "msp"
            config = self.config or get_preset("cifar10", objective).config()
            learner = WatermarkLearner(self.model, self.normalization, config, self.execution, self.model_id)
            self.watermark = learner.fit(id_train, **fit_kwargs).watermark
        return super().fit(id_train, limit, seed)
