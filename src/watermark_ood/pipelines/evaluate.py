"""Whole commands as library calls: what ``watermark-ood evaluate`` does, callable from Python.

    from watermark_ood.pipelines import EvaluateSettings, ModelSource, evaluate_pipeline
    run = evaluate_pipeline(EvaluateSettings(id_data="cifar10", ood_data=["textures.npz"], out="runs/eval",
                                             scores=["all"]), ModelSource("resnet20", "resnet20.th"))

Three ways to evaluate, all writing results.json, report.md and (with ``scores``) leaderboard.md / .png:

* a watermark file: its objective's score with and without it (the paper's protocol), plus every detector in
  ``scores`` under both conditions;
* a detector file: the detector as shipped; with ``scores``, its own marked row among every other detector;
* neither: every detector in ``scores`` (or ``score``) fitted on ID training data, without a watermark, no
  watermark fitted first.

Settings are checked before any data is read (:func:`check_evaluate`), so a bad name costs no loading time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from watermark_ood.core.errors import WatermarkOODError
from watermark_ood.core.progress import say
from watermark_ood.data.readers import DataOptions, load_id_data, load_ood_data
from watermark_ood.detection.logit_scores import score_for_objective
from watermark_ood.detection.registry import DETECTOR_KINDS, LAYER_SCORES, SCORE_NAMES, Reads, check_name, layers_for
from watermark_ood.evaluation.metrics import accuracy
from watermark_ood.evaluation.protocol import evaluate, evaluate_detector, evaluate_scores, protocol_subsample
from watermark_ood.pipelines.predict import load_detector
from watermark_ood.pipelines.source import ModelSource
from watermark_ood.reporting.plots import plot_histograms, plot_leaderboard, plot_roc
from watermark_ood.reporting.results import build_run, skipped_images, write_results
from watermark_ood.reporting.tables import (format_terminal_leaderboard, format_terminal_table, leaderboard_rows,
                                            shipped_row, sort_rows, write_leaderboard, write_leaderboard_report,
                                            write_report)
from watermark_ood.runtime.device import ExecutionConfig
from watermark_ood.runtime.inference import predict_logits
from watermark_ood.watermark.config import OBJECTIVES
from watermark_ood.watermark.file import Watermark

LOGIT_SCORES = ("msp", "energy", "maxlogit")  # the scores of the paper's protocol tables, with plots


@dataclass(frozen=True)
class EvaluateSettings:
    id_data: str
    ood_data: Sequence[str]
    out: str | Path
    watermark: str | None = None
    detector: str | None = None
    score: str | None = None
    scores: Sequence[str] = ()
    image_size: int | None = None
    data: DataOptions = field(default_factory=DataOptions)
    protocol: bool = True  # each OOD set contributes |ID test| / 5 images, as in the paper
    seed: int = 0
    progress: bool = False
    layers: tuple[str, ...] | None = None  # what the detectors on intermediate layers tap [each stage's output]


def expand_scores(names: Sequence[str] | None) -> list[str]:
    """``--scores``: names and combinations, ``all`` for every detector that runs on any classifier (mcd, which
    needs dropout layers, only by name); unknown names are one-line errors."""

    every = [n for n in SCORE_NAMES if DETECTOR_KINDS[n].reads != Reads.SAMPLING]
    out: list[str] = []
    for name in names or ():
        for item in (every if name == "all" else [name]):
            check_name(item)
            if item not in out:
                out.append(item)
    return out


def check_evaluate(settings: EvaluateSettings) -> list[str]:
    """Every option that can be checked without data, first; returns the expanded ``scores``."""

    if settings.watermark is not None and settings.detector is not None:
        raise WatermarkOODError("evaluate takes at most one of --watermark (a watermark file) or --detector "
                                "(a detector file from calibrate)")
    scores = expand_scores(settings.scores)
    if settings.score is not None:
        check_name(settings.score)
    if settings.watermark is None and settings.detector is None and not scores and settings.score is None:
        raise WatermarkOODError("evaluate needs --watermark, --detector, or detectors to rank without a watermark "
                                "(--scores NAME ... or all, or --score NAME)")
    if not settings.ood_data:
        raise WatermarkOODError("evaluate needs at least one --ood-data set")
    check_layers_option(settings, scores)
    for path, what in ((settings.watermark, "watermark"), (settings.detector, "detector")):
        if path is not None and not Path(path).is_file():
            raise WatermarkOODError(f"{path}: {what} file not found")
    out = Path(settings.out)
    if out.exists() and not out.is_dir():
        raise WatermarkOODError(f"--out {out} exists and is not a folder")
    return scores


def check_layers_option(settings: EvaluateSettings, scores: Sequence[str]) -> None:
    """``--layers`` only where an asked score taps layers, and never for a detector file (it records its own)."""

    if settings.layers is None:
        return
    if settings.detector is not None:
        raise WatermarkOODError("--layers does not apply to --detector: the file records the layers it taps")
    asked = [*scores, *([settings.score] if settings.score else [])]
    if not any(layers_for(name, settings.layers) for name in asked):
        raise WatermarkOODError(f"--layers is for the detectors on intermediate layers ({', '.join(LAYER_SCORES)}; "
                                "a feature-map kind takes one layer); none of the asked scores reads them")


def evaluate_pipeline(settings: EvaluateSettings, source: ModelSource, execution: ExecutionConfig | None = None,
                      log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run one evaluation and write its files to ``settings.out``; returns the results.json run."""

    scores = check_evaluate(settings)
    execution = execution or ExecutionConfig()
    out = Path(settings.out)
    detector = None
    if settings.detector is not None:
        detector = load_detector(settings.detector, source, execution)
    train, test = load_id_data(settings.id_data, settings.image_size, options=settings.data)
    if detector is not None and detector.input_shape and tuple(detector.input_shape) != tuple(test.image_shape):
        raise WatermarkOODError(f"{settings.detector}: the detector expects images of shape "
                                f"{tuple(detector.input_shape)}, --id-data has {tuple(test.image_shape)}")
    model = source.load(test.image_shape[0], test.num_classes) if detector is None else None
    ood = [load_ood_data(spec, test.image_shape, count=len(test), seed=settings.seed, options=settings.data)
           for spec in settings.ood_data]
    sets = protocol_subsample(ood, len(test), settings.seed) if settings.protocol else ood
    if detector is not None:
        run = _evaluate_detector_file(settings, detector, train, test, sets, scores, execution, out)
    elif settings.watermark is not None:
        run = _evaluate_watermark(settings, model, train, test, sets, scores, execution, out)
    else:
        run = _evaluate_plain(settings, model, train, test, sets, scores, execution, out)
    run["skipped_images"] = skipped_images([train, test, *ood])
    if settings.layers is not None:
        run["layers"] = list(settings.layers)  # what the detectors on intermediate layers tapped
    _write(out, run, settings)
    log(_terminal(run, settings))
    return run


# ------------------------------------------------------------------ the three ways
def _evaluate_detector_file(settings, detector, train, test, sets, scores, execution, out: Path) -> dict[str, Any]:

    run = evaluate_detector(detector, train.split(0.1, settings.seed)[0], test, sets)
    run["detector"] = str(settings.detector)
    if scores:
        run["scores"] = evaluate_scores(detector.model, detector.normalization, train.sample(5000, settings.seed),
                                        test, sets, detector.watermark, scores, execution, log=_progress(settings))
        label = _mark_label(detector.watermark)
        run["shipped_row"] = shipped_row(detector.score, label, run["watermarked"], run["num_ood"],
                                         Path(settings.detector).stat().st_size)
    return run


def _evaluate_watermark(settings, model, train, test, sets, scores, execution, out: Path) -> dict[str, Any]:

    watermark = Watermark.load(settings.watermark, expected_shape=test.image_shape)
    objective = watermark.metadata.get("objective", "msp")
    score = settings.score or (score_for_objective(objective) if objective in OBJECTIVES else "energy")
    evaluation = evaluate(model.module, model.normalization, test, sets, watermark, execution, protocol=False,
                          seed=settings.seed, progress=settings.progress)
    table_scores = scores + ([score] if score not in LOGIT_SCORES and score not in scores else [])
    extra: dict[str, Any] = {"num_id_test": len(test), "num_ood": {s.name: len(s) for s in sets}}
    if table_scores:
        extra["scores"] = evaluate_scores(model.module, model.normalization, train.sample(5000, settings.seed),
                                          test, sets, watermark, table_scores, execution,
                                          settings.layers, log=_progress(settings))
    headline = score if score in LOGIT_SCORES else "energy"
    run = build_run(objective, headline, watermark.metadata.get("hyperparameters", {}), evaluation, 0.0, 0.0,
                    model=model.model_id, watermark=str(settings.watermark), **extra)
    if score not in LOGIT_SCORES:  # the headline is the asked detector, measured through the Detector interface
        run.update(score=score, baseline=run["scores"][score]["baseline"],
                   watermarked=run["scores"][score]["watermarked"])
    else:
        plot_histograms(evaluation, score, out / f"hist-{score}.png")
        plot_roc(evaluation, score, out / f"roc-{score}.png")
    run["watermark_label"] = _mark_label(watermark)
    return run


def _evaluate_plain(settings, model, train, test, sets, scores, execution, out: Path) -> dict[str, Any]:
    """Every asked detector without a watermark: no watermark is fitted, the model is used as given."""

    scores = scores or [settings.score]
    score = settings.score or scores[0]
    if score not in scores:
        scores = [score, *scores]
    table = evaluate_scores(model.module, model.normalization, train.sample(5000, settings.seed), test, sets, None,
                            scores, execution, settings.layers, log=_progress(settings))
    logits = predict_logits(model.module, test, model.normalization, None, execution)
    return {"objective": None, "score": score, "hyperparameters": {},
            "accuracy": {"baseline": accuracy(logits, test.labels)},
            "baseline": table[score]["baseline"], "watermarked": {},
            "timing": {"fit_seconds": table[score]["cost"]["baseline"]["fit_seconds"],
                       "images_per_second": table[score]["cost"]["baseline"]["images_per_second"]},
            "model": model.model_id, "has_watermark": False, "scores": table,
            "num_id_test": len(test), "num_ood": {s.name: len(s) for s in sets}}


# ------------------------------------------------------------------ outputs
def _progress(settings: EvaluateSettings) -> Callable[[str], None] | None:
    """One stderr line per detector measured, unless progress is off (--no-progress)."""
    return say if settings.progress else None


def _mark_label(watermark) -> str:
    """One name for a watermark in every table: its objective and preset, as bench names it."""
    if watermark is None:
        return "none"
    meta = watermark.metadata
    return f"{meta.get('objective', 'watermark')} ({meta.get('preset', 'given')})"


def _write(out: Path, run: dict[str, Any], settings: EvaluateSettings) -> None:

    out.mkdir(parents=True, exist_ok=True)
    images = [(caption, f"{kind}-{run['score']}.png") for caption, kind in (("score histograms", "hist"),
                                                                         ("ROC", "roc"))
              if (out / f"{kind}-{run['score']}.png").exists()]
    if run.get("scores"):
        rows = leaderboard_rows(run["scores"], run.get("watermark_label", _mark_label(None) if settings.detector
                                                       is None else "from the detector file"), run["num_ood"])
        if run.get("shipped_row"):
            rows = sort_rows([*rows, run["shipped_row"]])
        title = f"Detectors on {run.get('model', 'the model')}"
        write_leaderboard(out / "leaderboard.md", rows, title, run["num_id_test"], run["num_ood"])
        plot_leaderboard(rows, out / "leaderboard.png")
        images.append(("leaderboard", "leaderboard.png"))
    write_results(out / "results.json", [run])
    if not settings.detector and not run.get("has_watermark", True):  # a leaderboard, nothing to compare with
        write_leaderboard_report(out / "report.md", rows, "watermark-ood evaluation", run,
                                 "No watermark: every detector on the model as given.", images)
        return
    notes = ("`watermarked` is the detector as shipped; `baseline` the same score without its watermark "
             "(identical when it has none)." if settings.detector else
             "" if run.get("has_watermark", True) else "No watermark: every detector on the model as given.")
    title = (f"watermark-ood evaluation of {Path(settings.detector).name}" if settings.detector
             else "watermark-ood evaluation")
    write_report(out / "report.md", [run], title, notes=notes, images=images)


def _terminal(run: dict[str, Any], settings: EvaluateSettings) -> str:
    """The summary printed at the end: the paper's table for a watermark or a detector file, the best rows of the
    leaderboard otherwise; then where every file went."""

    out = Path(settings.out)
    files = [out / "results.json", out / "report.md"] + ([out / "leaderboard.md", out / "leaderboard.png"]
                                                         if run.get("scores") else [])
    written = "wrote " + ", ".join(str(f) for f in files)
    if settings.detector or run.get("has_watermark", True):
        return format_terminal_table(run) + "\n" + written
    rows = leaderboard_rows(run["scores"], "none", run["num_ood"])
    heading = (f"model={run['model']}; accuracy {100 * run['accuracy']['baseline']:.2f}%; {len(rows)} detectors "
               "without a watermark, best mean FPR95 first:")
    return format_terminal_leaderboard(rows, heading) + "\n" + written
