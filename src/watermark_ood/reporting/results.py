"""results.json (a stable interface), terminal and Markdown tables, and plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from watermark_ood.core.errors import WatermarkOODError
from watermark_ood.core.fileio import atomic_write_json
from watermark_ood.evaluation.metrics import METRIC_NAMES
from watermark_ood.evaluation.protocol import Evaluation

SCHEMA_VERSION = 1


def build_run(objective: str, score: str, hyperparameters: dict[str, Any], evaluation: Evaluation,
              fit_seconds: float, images_per_second: float, **extra: Any) -> dict[str, Any]:
    """One entry of ``results.json["runs"]``; ``extra`` adds fields (model, data, ...) without renaming any."""
    metrics = evaluation.metrics(score)
    run = {
        "objective": objective,
        "score": score,
        "hyperparameters": hyperparameters,
        "accuracy": evaluation.accuracy(),
        "baseline": metrics["baseline"],
        "watermarked": metrics.get("watermarked", {}),
        "timing": {"fit_seconds": float(fit_seconds), "images_per_second": float(images_per_second)},
    }
    run.update(extra)
    validate_run(run)
    return run


def validate_run(run: dict[str, Any]) -> None:
    """Check one run against the schema; a violation is a bug, reported plainly."""
    for key in ("objective", "score", "hyperparameters", "accuracy", "baseline", "watermarked", "timing"):
        if key not in run:
            raise WatermarkOODError(f"results run lacks {key!r}")
    for condition in ("baseline", "watermarked"):
        block = run[condition]
        if block and "mean" not in block:
            raise WatermarkOODError(f"results run {condition} lacks 'mean'")
        for name, metrics in block.items():
            for metric in METRIC_NAMES:
                value = metrics.get(metric)
                if value is None or not (0.0 <= value <= 1.0):
                    raise WatermarkOODError(f"{condition}/{name}/{metric} must be a fraction in [0, 1], got {value}")
    for value in run["accuracy"].values():
        if not 0.0 <= value <= 1.0:
            raise WatermarkOODError(f"accuracy must be a fraction in [0, 1], got {value}")


def skipped_images(sets: Sequence[Any], listed: int = 100) -> dict[str, Any]:
    """results.json's ``skipped_images``: unreadable files left out (--skip-bad-images), counted once each."""
    files: list[str] = []
    for images in sets:
        files += [f for f in getattr(images, "skipped", ()) if f not in files]
    return {"count": len(files), "files": files[:listed]}


def write_results(path: str | Path, runs: Sequence[dict[str, Any]], **extra: Any) -> Path:
    for run in runs:
        validate_run(run)
    return atomic_write_json(path, {"runs": list(runs), "schema_version": SCHEMA_VERSION, **extra})


