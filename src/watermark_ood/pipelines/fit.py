"""``watermark-ood fit`` as a library call: learn one watermark, resumably, and write it with its history.

    from watermark_ood.pipelines.fit import FitSettings, fit_pipeline
    fit_pipeline(FitSettings(id_data="cifar10", out="runs/fit", objective="energy"),
                 ModelSource("resnet20", "resnet20.th"))
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from watermark_ood.core.fileio import atomic_write_json
from watermark_ood.data.readers import DataOptions, load_id_data
from watermark_ood.pipelines.bench import fit_config_for
from watermark_ood.pipelines.source import ModelSource
from watermark_ood.reporting.plots import plot_history, plot_watermark
from watermark_ood.runtime.device import ExecutionConfig
from watermark_ood.watermark.learner import FitResult, WatermarkLearner


@dataclass(frozen=True)
class FitSettings:
    id_data: str
    out: str | Path  # the folder: watermark.safetensors, history.json, plots and the resumable checkpoint
    objective: str = "msp"
    preset: str = "cifar10"
    overrides: dict[str, Any] = field(default_factory=dict)  # FitConfig fields over the preset's
    image_size: int | None = None
    data: DataOptions = field(default_factory=DataOptions)
    checkpoint_every: int | None = None
    progress: bool = False


def fit_pipeline(settings: FitSettings, source: ModelSource, execution: ExecutionConfig | None = None) -> FitResult:
    """Fit (or resume, from the checkpoint in ``out``) and write the watermark, its history and two plots."""
    out = Path(settings.out)
    config = fit_config_for(settings.preset, settings.objective, settings.overrides)
    train, _ = load_id_data(settings.id_data, settings.image_size, options=settings.data)
    model = source.load(train.image_shape[0], fallback_classes=train.num_classes)
    learner = WatermarkLearner(model.module, model.normalization, config, execution or ExecutionConfig(),
                               model.model_id)
    result = learner.fit(train, progress=settings.progress, checkpoint_dir=out,
                         checkpoint_every=settings.checkpoint_every)
    result.watermark.save(out / "watermark.safetensors")
    atomic_write_json(out / "history.json", [r.to_dict() for r in result.history])
    plot_watermark(result.watermark.tensor, out / "watermark.png", f"{settings.objective} watermark")
    if result.history:
        plot_history([r.to_dict() for r in result.history], out / "history.png")
    return result
