"""``watermark-ood calibrate`` as a library call: fit a detector on ID training data, set its threshold by
split-conformal calibration, or let ``--score auto`` choose it without OOD data; save it as one file.

    from watermark_ood.pipelines.calibrate import CalibrateSettings, calibrate
    detector = calibrate(CalibrateSettings(id_data="cifar10", out="detector.safetensors", score="auto"),
                         ModelSource("resnet20", "resnet20.th"))
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from watermark_ood.core.errors import WatermarkOODError
from watermark_ood.data.images import ImageSet
from watermark_ood.data.readers import DataOptions, load_id_data
from watermark_ood.detection.data_policy import NAMED
from watermark_ood.detection.detector import Detector
from watermark_ood.detection.logit_scores import score_for_objective
from watermark_ood.detection.registry import LAYER_SCORES, check_name, reads_layers
from watermark_ood.pipelines.source import ModelSource
from watermark_ood.runtime.device import ExecutionConfig
from watermark_ood.selection.auto_score import SelectionSettings, select_detector
from watermark_ood.selection.pools import DEFAULT_POOL, candidate_pool
from watermark_ood.watermark.config import OBJECTIVES
from watermark_ood.watermark.file import Watermark

SPLITS = ("holdout", "test")  # where a named score's threshold is set: the hold-out (data_policy), or the test split


@dataclass(frozen=True)
class CalibrateSettings:
    id_data: str
    out: str | Path  # the detector file (.safetensors, with its JSON beside it)
    score: str | None = None  # a registry name, "auto", or None: the watermark objective's score (else energy)
    watermark: str | None = None
    tpr: float = 0.95
    per_class: bool = False
    split: str = "holdout"
    image_size: int | None = None
    data: DataOptions = field(default_factory=DataOptions)
    seed: int = 0
    layers: tuple[str, ...] | None = None  # the layers a detector on intermediate layers taps [the stage outputs]
    candidates: tuple[str, ...] = DEFAULT_POOL  # --score auto's pool: shipped, all and/or names (selection.pools)


@dataclass
class Calibrated:
    """What calibrate made: the saved detector, where, and the ID images its threshold was set on (None: auto)."""

    detector: Detector
    path: Path
    calibration: ImageSet | None
    report: Path | None = None  # the ranking of --score auto

    def summary(self, split: str) -> str:
        """The line the CLI prints: score, threshold, acceptance on the calibration images, the guarantee."""
        d = self.detector
        accepted = "" if self.calibration is None else (
            f", accepts {100 * (1 - float(d.predict(self.calibration).is_ood.mean())):.2f}% of "
            f"{len(self.calibration)} ID images ({split})")
        guarantee = ""
        if d.calibration is not None:
            s = d.calibration.summary()
            guarantee = (f"; guaranteed: an ID input is rejected with probability at most "
                         f"{100 * s['guaranteed_false_rejection_at_most']:.2f}% (split-conformal, n = {s['n']}"
                         f"{', per class' if s['per_class'] else ''})")
        return f"wrote {self.path}: score {d.score}, threshold {d.threshold:.6g}{accepted}{guarantee}"


def default_score(watermark: Watermark | None) -> str:
    """The score a watermark was learned for (its objective's), or energy without one."""
    objective = watermark.metadata.get("objective", "") if watermark is not None else ""
    return score_for_objective(objective) if objective in OBJECTIVES else "energy"


def check_calibrate(settings: CalibrateSettings) -> None:
    """Settings that can be judged before any data is read (one line each)."""
    if settings.score not in (None, "auto"):
        check_name(settings.score)
    if settings.split not in SPLITS:
        raise WatermarkOODError(f"split must be one of {SPLITS}, got {settings.split!r}")
    if settings.score == "auto":
        candidate_pool(settings.candidates)
    elif tuple(settings.candidates) != DEFAULT_POOL:
        raise WatermarkOODError("--candidates is the pool of --score auto; add --score auto or drop --candidates")
    if settings.score == "auto" and settings.split == "test":
        raise WatermarkOODError("--score auto chooses and calibrates on held-out training data; drop --split test")
    if settings.layers is not None and (settings.score in (None, "auto") or not reads_layers(settings.score)):
        raise WatermarkOODError(f"--layers is for the detectors on intermediate layers ({', '.join(LAYER_SCORES)}), "
                                f"not for --score {settings.score or 'default'}")


def calibrate(settings: CalibrateSettings, source: ModelSource, execution: ExecutionConfig | None = None,
              log: Callable[[str], None] | None = None) -> Calibrated:
    """Fit, calibrate and save one detector (see the module docstring)."""
    check_calibrate(settings)
    execution = execution or ExecutionConfig()
    train, test = load_id_data(settings.id_data, settings.image_size, options=settings.data)
    watermark = Watermark.load(settings.watermark, expected_shape=test.image_shape) if settings.watermark else None
    model = source.load(test.image_shape[0])
    score = settings.score or default_score(watermark)
    calibration = None
    if score == "auto":
        if log:
            log("ranking every detector on held-out ID training data vs synthetic outliers (no OOD data)")
        detector = select_detector(model.module, model.normalization, train, watermark, settings.tpr,
                                   SelectionSettings(candidate_pool(settings.candidates, model.module),
                                                     seed=settings.seed, per_class=settings.per_class), execution,
                                   model.model_id, log=log).detector
    else:
        fit_split, holdout = train.split(NAMED.holdout_fraction, settings.seed)
        calibration = holdout.sample(NAMED.calibration_images, settings.seed) if settings.split == "holdout" else test
        detector = Detector(model.module, model.normalization, watermark, score, execution=execution,
                            model_id=model.model_id, layers=settings.layers).fit(fit_split, seed=settings.seed).calibrate(
                                calibration, settings.tpr, settings.per_class, train.num_classes)
    detector.class_names = getattr(train, "class_names", None)
    path = Path(detector.save(settings.out))
    report = path.with_suffix(".md") if detector.selection is not None else None  # written by save
    return Calibrated(detector, path, calibration, report)
