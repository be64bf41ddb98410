"""``watermark-ood predict`` as a library call: one row per input (score, decision, class, p-value), written as it
goes (CSV, any folder size) or as one JSON, with the shift alarm over the whole batch.

    from watermark_ood.pipelines.predict import PredictSettings, predict
    outcome = predict(PredictSettings(detector="detector.safetensors", input="photos/", out="scores.csv"),
                      ModelSource("resnet20", "resnet20.th"))
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from watermark_ood.core.errors import WatermarkOODError
from watermark_ood.core.fileio import atomic_write_text
from watermark_ood.core.progress import bar
from watermark_ood.data.images import ImageSet, load_npz
from watermark_ood.data.readers import DataOptions, image_files
from watermark_ood.data.streaming import FileImageSet, ImageTransform
from watermark_ood.detection.conformal import benjamini_hochberg
from watermark_ood.detection.detector import Detector
from watermark_ood.detection.monitor import MonitorStatus, StreamMonitor, check_alarm_level
from watermark_ood.pipelines.source import ModelSource
from watermark_ood.runtime.device import ExecutionConfig

CHUNK = 1000  # inputs scored and written at a time
DEFAULT_SHAPE = (3, 32, 32)  # detector files written before input_shape was recorded
DEFAULT_ALARM = 100.0  # a new stream monitor's C: at most one false alarm in 100 ID streams, however long


@dataclass(frozen=True)
class PredictSettings:
    detector: str
    input: str  # a folder of images (streamed) or an .npz with 'x'
    out: str | Path  # .csv or .json
    fail_on_shift: float | None = None  # a significance level: the outcome fails when the alarm rejects at it
    data: DataOptions = field(default_factory=DataOptions)
    progress: bool = False
    fdr: float | None = None  # also reject by Benjamini-Hochberg over all inputs at this false-discovery rate
    monitor: str | Path | None = None  # a stream monitor's state file: created, or resumed and extended
    alarm: float | None = None  # a new monitor's alarm level C (false alarms at most 1/C); DEFAULT_ALARM if None


@dataclass
class PredictOutcome:
    out: Path
    inputs: int  # readable inputs
    flagged: int  # of those, rejected as OOD
    unreadable: int
    shift: dict[str, Any]  # the shift alarm: counts, p-value, message, whether it fails at fail_on_shift
    adapted: dict[str, int] = field(default_factory=dict)  # what reading changed in image files, with counts
    shape: tuple[int, ...] = DEFAULT_SHAPE  # what the detector reads
    fdr: dict[str, Any] | None = None  # level, inputs tested, rejected (predict --fdr)
    monitor: MonitorStatus | None = None  # the stream monitor after these inputs (predict --monitor)

    def summary(self) -> str:
        skipped = f"; {self.unreadable} unreadable files skipped" if self.unreadable else ""
        fdr = (f"; {self.fdr['rejected']} rejected at false-discovery rate {self.fdr['level']:g} (Benjamini-Hochberg, "
               "column fdr_reject)" if self.fdr is not None else "")
        return f"wrote {self.out}: {self.flagged} of {self.inputs} inputs flagged as OOD{skipped}{fdr}"

    def adaptation(self) -> str | None:
        """One line saying what was changed in the input files to fit the detector, with counts; None if nothing.

        Scores of resized or converted images are not those of the images as they were, so it is never silent."""
        if not self.adapted:
            return None
        changed = "; ".join(f"{count} {what}" for what, count in sorted(self.adapted.items(), key=lambda i: -i[1]))
        c, h, w = self.shape
        return (f"adapted {sum(self.adapted.values())} of {self.inputs + self.unreadable} input files to the "
                f"detector's {c}x{h}x{w} (shorter side resized, then center crop): {changed}")


def architecture_of(model_id: str) -> str:
    """The architecture part of a recorded model id (``resnet20@resnet20-12fca82f.th`` -> ``resnet20``); a user's
    ``path/to/file.py:Net`` is known by its callable, since the same file may be given by another path."""
    name = model_id.split("@", 1)[0]
    return name.rpartition(":")[2] if ":" in name and not name.startswith("torchvision:") else name


def check_architecture(path: str | Path, recorded: str, given: str) -> None:
    """The detector file's model before the model is built: a file for another architecture is named as such,
    instead of a checkpoint that "does not fit" the wrong architecture."""
    if architecture_of(recorded) != architecture_of(given):
        raise WatermarkOODError(f"{path} was made for model {recorded.split('@', 1)[0]!r} (recorded as {recorded!r}); "
                                f"--model {given} was given: use --model {recorded.split('@', 1)[0]} with its "
                                "--checkpoint")


def load_detector(path: str, source: ModelSource, execution: ExecutionConfig | None = None) -> Detector:
    """A detector file with its classifier (the file's fingerprint is checked against the model)."""
    meta, _ = Detector.read(path)
    check_architecture(path, meta["model"], source.name)
    model = source.load((meta.get("input_shape") or DEFAULT_SHAPE)[0])
    return Detector.load(path, model.module, execution)


def read_inputs(path: str | Path, shape: tuple[int, ...], data: DataOptions) -> tuple[ImageSet, list[str]]:
    """A folder is streamed (decoded batch by batch, any size); an .npz is read whole."""
    p = Path(path)
    if p.is_dir():
        files = image_files(p)
        if not files:
            raise WatermarkOODError(f"{p}: no images found")
        images = FileImageSet(files, torch.full((len(files),), -1), p.name, ImageTransform(shape[1], None, shape[0]),
                              data.workers, data.skip_bad_images)
        return images, [str(f.relative_to(p)) for f in files]
    images = load_npz(p)
    return images, [str(i) for i in range(len(images))]


def predict(settings: PredictSettings, source: ModelSource, execution: ExecutionConfig | None = None) -> PredictOutcome:
    """Score every input and write the rows; nothing is left half-written if it stops."""
    detector = load_detector(settings.detector, source, execution)
    if settings.fdr is not None:
        detector.check_fdr(settings.fdr)
    monitor = None if settings.monitor is None else open_monitor(detector, settings.monitor, settings.alarm)
    shape = tuple(detector.input_shape or DEFAULT_SHAPE)
    images, names = read_inputs(settings.input, shape, settings.data)
    if images.image_shape != shape:
        raise WatermarkOODError(f"{settings.input}: images are {images.image_shape}, the detector expects {shape}")
    out = Path(settings.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        keep = out.suffix == ".json" or settings.fdr is not None  # the false-discovery step needs every p-value
        rows, flagged, unreadable = _write_rows(detector, images, names, tmp, keep, settings.progress, monitor)
        shift = shift_alarm(detector, flagged, len(names) - unreadable, settings.fail_on_shift)
        adapted = dict(getattr(images, "adapted", {}))
        fdr = None if settings.fdr is None else false_discoveries(rows, settings.fdr)
        status = None if monitor is None else monitor.status()
        if out.suffix == ".json":
            extra = {**({"fdr": fdr} if fdr else {}),
                     **({"monitor": {**asdict(status), "message": status.message()}} if status else {})}
            atomic_write_text(tmp, json.dumps({"threshold": detector.threshold, "score": detector.score,
                                               "shift": shift, "adapted": adapted, **extra, "rows": rows}, indent=1))
        elif keep:
            with tmp.open("w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=columns(detector) + ["fdr_reject"])
                writer.writeheader()
                writer.writerows(rows)
        tmp.replace(out)
        if monitor is not None:  # after the rows: a stop before leaves the state as it was, for the same inputs
            monitor.save(settings.monitor)
    finally:
        tmp.unlink(missing_ok=True)
    return PredictOutcome(out, len(names) - unreadable, flagged, unreadable, shift, adapted, shape, fdr, status)


def open_monitor(detector: Detector, path: str | Path, alarm: float | None) -> StreamMonitor:
    """The stream monitor of ``path``: resumed when the file exists (it must be this detector's; ``alarm``, if
    given, must be its level), else a new one at level ``alarm``."""
    if detector.calibration is None:
        raise WatermarkOODError("--monitor needs conformal calibration scores; this detector file has none (written "
                                "before them): calibrate it again")
    scores = detector.calibration.scores  # per-class files pool their classes: still exchangeable with ID inputs
    if not Path(path).exists():
        return StreamMonitor(scores, DEFAULT_ALARM if alarm is None else alarm)  # the monitor checks its level
    monitor = StreamMonitor.resume(path, scores)
    if alarm is not None and check_alarm_level(alarm) != monitor.alarm:
        raise WatermarkOODError(f"{path}: this monitor raises its alarm at C = {monitor.alarm:g}, not --alarm {alarm:g}: "
                                "a level cannot change mid-stream (its guarantee would not hold); start a new state file")
    return monitor


def false_discoveries(rows: list[dict[str, Any]], level: float) -> dict[str, Any]:
    """Benjamini-Hochberg over every readable input's p-value: each row gains ``fdr_reject`` (None when
    unreadable); returns the JSON block (level, inputs tested, rejected)."""
    p = np.array([np.nan if r.get("p_value") is None else r["p_value"] for r in rows], dtype=np.float64)
    rejected = benjamini_hochberg(p, level)
    for row, reject, tested in zip(rows, rejected, ~np.isnan(p)):
        row["fdr_reject"] = bool(reject) if tested else None
    return {"level": level, "tested": int((~np.isnan(p)).sum()), "rejected": int(rejected.sum()),
            "guarantee": "expected share of ID inputs among the rejected at most the level (Benjamini-Hochberg over "
                         "conformal p-values of one calibration set; exchangeable ID inputs)"}


def _write_rows(detector: Detector, images: ImageSet, names: list[str], tmp: Path, keep: bool,
                progress: bool, monitor: StreamMonitor | None = None) -> tuple[list[dict[str, Any]], int, int]:
    """CSV rows are written chunk by chunk; with ``keep`` (JSON, --fdr) they are returned to be written whole.
    ``monitor`` takes the scores in input order (unreadable inputs skipped)."""
    rows, flagged, unreadable = [], 0, 0
    with tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns(detector))
        if not keep:
            writer.writeheader()
        for start in bar(range(0, len(images), CHUNK), progress, desc="predict", unit="batch"):
            part = images.subset(torch.arange(start, min(start + CHUNK, len(images))))
            prediction = detector.predict(part)
            if monitor is not None:
                monitor.update_many(prediction.scores.tolist())
            chunk = prediction.to_rows(names[start:start + CHUNK])
            flagged += sum(r["is_ood"] is True for r in chunk)
            unreadable += sum(r["status"] == "unreadable" for r in chunk)
            if keep:
                rows += chunk
            else:
                writer.writerows(chunk)
    return rows, flagged, unreadable


def columns(detector: Detector) -> list[str]:
    """The CSV columns of predict (``fdr_reject`` follows them with --fdr)."""
    return (["input", "score", "is_ood", "status", "predicted_class"] + (["class_name"] if detector.class_names else [])
            + (["p_value"] if detector.calibration is not None else []))


def shift_alarm(detector: Detector, flagged: int, inputs: int, fail_on: float | None) -> dict[str, Any]:
    """The shift alarm of predict: one line for stderr and the JSON block (see conformal.shift_test)."""
    if detector.tpr is None or not 0 < detector.tpr < 1 or inputs == 0:
        return {"message": "shift alarm: not available (no inputs, or a detector calibrated at tpr 1)",
                "fail": False}
    test = detector.shift_counts(flagged, inputs)
    p = test["p_value"]
    verdict = ("more than ID inputs allow: the inputs differ from the calibration data" if p < (fail_on or 0.01)
               else "consistent with ID inputs like the calibration data")
    test["message"] = (f"shift alarm: {flagged} of {inputs} inputs rejected ({100 * flagged / inputs:.1f}%; ID inputs: "
                       f"at most {100 * test['expected_share_at_most']:.1f}%), exact one-sided p = {p:.3g}: {verdict}")
    test["alpha"] = fail_on
    test["fail"] = fail_on is not None and p < fail_on
    return test
