"""The benchmark pipeline behind ``watermark-ood bench``: baseline vs watermark on real data, resumable.

Each objective's fit checkpoints into ``OUT/fit-<objective>/`` and its
finished run is kept in ``OUT/runs/<objective>.json``; running the same
command again continues where it stopped and skips finished objectives.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Sequence

from watermark_ood.core import distributed
from watermark_ood.core.errors import WatermarkOODError
from watermark_ood.core.fileio import atomic_write_json, remove_stale_temporaries
from watermark_ood.data.images import ImageSet
from watermark_ood.data.readers import DataOptions, load_id_data, load_ood_data
from watermark_ood.detection.logit_scores import score_for_objective
from watermark_ood.evaluation.protocol import condition_logits, evaluate, evaluate_scores, protocol_subsample
from watermark_ood.models.registry import LoadedModel
from watermark_ood.pipelines.source import ModelSource
from watermark_ood.reporting.plots import plot_histograms, plot_history, plot_leaderboard, plot_roc, plot_watermark
from watermark_ood.reporting.results import build_run, skipped_images, write_results
from watermark_ood.reporting.tables import (format_terminal_table, leaderboard_rows, sort_rows, write_leaderboard,
                                            write_report)
from watermark_ood.runtime.device import ExecutionConfig, device_name
from watermark_ood.selection.auto_preset import AutoSettings, auto_fit
from watermark_ood.watermark.config import FitConfig, get_preset
from watermark_ood.watermark.learner import WatermarkLearner


@dataclass
class BenchConfig:
    model: str
    id_data: str
    ood_data: Sequence[str]
    out: str
    checkpoint: str | None = None
    objectives: Sequence[str] = ("msp", "energy")
    preset: str = "cifar10"
    overrides: dict[str, Any] = field(default_factory=dict)
    protocol: bool = True
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    checkpoint_every: int = 200
    image_size: int | None = None
    data: "DataOptions" = field(default_factory=lambda: DataOptions())
    scores: Sequence[str] = ()
    execution: ExecutionConfig = field(default_factory=ExecutionConfig)
    auto_tolerance: float = 0.0  # --preset auto: see tuning.AutoSettings.tolerance
    random_weights: bool = False  # the model without a checkpoint on purpose (ModelSource)

    @property
    def source(self) -> ModelSource:
        return ModelSource(self.model, self.checkpoint, self.mean, self.std, self.random_weights)


def fit_config_for(preset: str, objective: str, overrides: dict[str, Any]) -> FitConfig:
    if preset == "auto":  # the search starts from the paper's CIFAR-10 preset; checked here for bad overrides
        return get_preset("cifar10", objective).config(**overrides)
    return get_preset(preset, objective).config(**overrides)


def load_inputs(cfg: BenchConfig) -> tuple[LoadedModel, ImageSet, ImageSet, list[ImageSet]]:
    """Everything is read and checked before anything is written."""
    train, test = load_id_data(cfg.id_data, cfg.image_size, options=cfg.data)
    model = cfg.source.load(train.image_shape[0], fallback_classes=train.num_classes)
    model.normalization.check_channels(train.image_shape[0])
    ood = [load_ood_data(spec, test.image_shape, count=len(test), options=cfg.data) for spec in cfg.ood_data]
    names = [s.name for s in ood]
    if len(set(names)) != len(names):
        raise WatermarkOODError(f"two OOD sets share a name: {names}; OOD sets are named by file or folder stem")
    return model, train, test, ood


def run_benchmark(cfg: BenchConfig, progress: bool = True, log: Callable[[str], None] = print) -> dict[str, Any]:
    for objective in cfg.objectives:
        fit_config_for(cfg.preset, objective, cfg.overrides)  # fail fast on a bad preset or override
    model, train, test, ood = load_inputs(cfg)
    out = Path(cfg.out)
    remove_stale_temporaries(out)
    seed = cfg.overrides.get("seed", 0) or 0
    sets = protocol_subsample(ood, len(test), seed) if cfg.protocol else ood
    log(f"model {model.model_id}; ID {train.name} ({len(train)}) / {test.name} ({len(test)}); OOD "
        + ", ".join(f"{s.name} ({len(s)})" for s in sets))
    baseline = condition_logits(model.module, model.normalization, test, sets, None, cfg.execution, progress)

    runs = []
    for objective in cfg.objectives:
        config = fit_config_for(cfg.preset, objective, cfg.overrides)
        request = {"preset": cfg.preset, "overrides": cfg.overrides, "objective": objective}
        run_file = out / "runs" / f"{objective}.json"
        if run_file.is_file():
            run = json.loads(run_file.read_text())
            if run.get("request") == request:
                log(f"{objective}: finished earlier, reusing {run_file}")
                runs.append(run)
                continue
        extra: dict[str, Any] = {}
        if cfg.preset == "auto":
            result, fit_seconds, images, hyperparameters, extra["auto"] = _auto(cfg, model, train, objective,
                                                                               config, progress, log)
        else:
            learner = WatermarkLearner(model.module, model.normalization, config, cfg.execution, model.model_id)
            log(f"{objective}: fitting on {min(len(train), config.train_limit or len(train))} images, "
                f"{config.epochs} epochs")
            result = learner.fit(train, progress=progress, checkpoint_dir=out / f"fit-{objective}",
                                 checkpoint_every=cfg.checkpoint_every)
            fit_seconds = sum(r.seconds for r in result.history)
            images = min(len(train), config.train_limit or len(train)) * config.epochs
            hyperparameters = learner.config.hyperparameters()  # with margins the learner resolved (hinge)
        evaluation = evaluate(model.module, model.normalization, test, sets, result.watermark, cfg.execution,
                              protocol=False, baseline=baseline, progress=progress)
        score = score_for_objective(objective)
        if cfg.scores:
            log(f"{objective}: scoring with {', '.join(cfg.scores)}, with and without the watermark")
            extra["scores"] = evaluate_scores(model.module, model.normalization, train.sample(5000, seed), test, sets,
                                              result.watermark, cfg.scores, cfg.execution,
                                              log=log if progress else None)
        run = build_run(
            objective, score, hyperparameters, evaluation, fit_seconds, images / max(fit_seconds, 1e-9),
            request=request, preset=cfg.preset, **extra,
            model=model.model_id, id_data=str(cfg.id_data), ood_data=[str(s) for s in cfg.ood_data],
            num_id_test=len(test), num_ood={s.name: len(s) for s in sets}, device=str(cfg.execution.torch_device()),
            precision=cfg.execution.precision, device_name=device_name(cfg.execution.torch_device()),
            execution=cfg.execution.describe(), watermark_stats=result.watermark.stats(),
            history=[r.to_dict() for r in result.history],
        )
        result.watermark.metadata["metrics"] = {"accuracy": run["accuracy"], "mean": run["watermarked"]["mean"]}
        result.watermark.save(out / f"watermark-{objective}.safetensors")
        plot_watermark(result.watermark.tensor, out / f"watermark-{objective}.png", f"{objective} watermark")
        plot_histograms(evaluation, score, out / f"hist-{objective}.png")
        plot_roc(evaluation, score, out / f"roc-{objective}.png")
        if run["history"]:
            plot_history(run["history"], out / f"history-{objective}.png")
        atomic_write_json(run_file, run)
        log(format_terminal_table(run))
        runs.append(run)

    for run in runs:
        run["skipped_images"] = skipped_images([train, test, *ood])
    write_results(out / "results.json", runs, created=time.strftime("%Y-%m-%dT%H:%M:%S"))
    if cfg.scores and distributed.is_main_process():  # reports come from the main process (torchrun)
        write_bench_leaderboard(out, runs, model.model_id)
    images = [(f"{r['objective']} {kind}", f"{kind}-{r['objective']}.png") for r in runs
              for kind in ("watermark", "hist", "roc")]
    write_report(out / "report.md", runs, f"watermark-ood bench: {model.model_id}", images=images)
    return {"runs": runs}


def write_bench_leaderboard(out: Path, runs: list[dict[str, Any]], model_id: str) -> None:
    """leaderboard.md/.png: every detector without a watermark and with each objective's watermark."""

    rows, seen = [], set()
    num_id, num_ood = (runs[0].get("num_id_test"), runs[0].get("num_ood")) if runs else (None, None)
    for run in runs:
        for row in leaderboard_rows(run.get("scores", {}), f"{run['objective']} ({run.get('preset', 'preset')})",
                                    num_ood):
            key = (row["detector"], row["watermark"])
            if key not in seen:  # the no-watermark rows repeat in every run
                seen.add(key)
                rows.append(row)
    write_leaderboard(out / "leaderboard.md", sort_rows(rows), f"Detectors on {model_id}", num_id, num_ood)
    plot_leaderboard(rows, out / "leaderboard.png")


def _auto(cfg: BenchConfig, model: LoadedModel, train: ImageSet, objective: str, config: FitConfig, progress: bool,
          log: Callable[[str], None]):
    """``--preset auto``: search on the ID training data only, then the final fit (see :mod:`tuning`)."""


    settings = AutoSettings(epochs=config.epochs, train_limit=config.train_limit, seed=config.seed,
                            batch_size=config.batch_size, tolerance=cfg.auto_tolerance)
    log(f"{objective}: --preset auto, searching with the ID training data only")
    auto = auto_fit(model.module, model.normalization, train, objective, settings, cfg.execution,
                    model_id=model.model_id, progress=progress, log=log)
    seconds = auto.search_seconds + auto.final_seconds
    hyperparameters = (auto.config.hyperparameters() if auto.config is not None
                       else {"zero_watermark": True, "objective": objective})
    # The search draws its own seeded subset (train_limit) and holds 10% of it out for validation.
    hyperparameters["train_limit"] = config.train_limit
    auto.watermark.metadata["hyperparameters"] = hyperparameters  # the artefact describes what results.json does
    result = SimpleNamespace(watermark=auto.watermark, history=[])
    return result, seconds, auto.final_images, hyperparameters, auto.summary()
