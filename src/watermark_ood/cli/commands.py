"""From parsed arguments to a pipeline call: each ``cmd_*`` builds a command's settings, calls its library
function in :mod:`watermark_ood.pipelines` and prints one summary line; :func:`check_options` judges every
option that needs no data first."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from watermark_ood.core.errors import WatermarkOODError
from watermark_ood.core.progress import say
from watermark_ood.data.readers import ID_LAYOUTS, DataOptions
from watermark_ood.detection.conformal import check_fdr_level
from watermark_ood.detection.monitor import check_alarm_level
from watermark_ood.detection.registry import check_name
from watermark_ood.pipelines.bench import BenchConfig, run_benchmark
from watermark_ood.pipelines.calibrate import CalibrateSettings, calibrate
from watermark_ood.pipelines.demo import DemoSettings, run_demo
from watermark_ood.pipelines.evaluate import EvaluateSettings, check_evaluate, evaluate_pipeline, expand_scores
from watermark_ood.pipelines.export import export
from watermark_ood.pipelines.fit import FitSettings, fit_pipeline
from watermark_ood.pipelines.predict import PredictSettings, predict
from watermark_ood.pipelines.source import ModelSource
from watermark_ood.runtime.device import ExecutionConfig
from watermark_ood.selection.pools import DEFAULT_POOL

FIT_OVERRIDES = ("sigma", "rho", "beta", "t_in", "t_out", "m_in", "m_out", "alpha", "epochs", "batch_size",
                 "train_limit", "seed", "linf_budget", "l2_budget", "schedule", "noise_scale", "surrogate")


def data_options(args: argparse.Namespace) -> DataOptions:
    return DataOptions(stream=getattr(args, "stream", None), workers=getattr(args, "workers", 2),
                       skip_bad_images=getattr(args, "skip_bad_images", False), resize=getattr(args, "resize", None),
                       random_resized_crop=getattr(args, "train_crop", "center") == "random-resized")


def execution(args: argparse.Namespace) -> ExecutionConfig:
    return ExecutionConfig(device=args.device, precision=args.precision, compile=args.compile,
                           cuda_graphs=args.cuda_graphs, threads=args.threads, eval_batch_size=args.eval_batch_size)


def source(args: argparse.Namespace) -> ModelSource:
    return ModelSource(args.model, args.checkpoint, args.mean, args.std, args.random_weights)


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {k: getattr(args, k) for k in FIT_OVERRIDES if getattr(args, k, None) is not None}


def check_out(path: str) -> Path:
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise WatermarkOODError(f"--out {out} exists and is not a folder")
    return out


def cmd_demo(args: argparse.Namespace) -> int:
    out = check_out(args.out)
    run_demo(out, DemoSettings(epochs=args.epochs, seed=args.seed, preset=args.preset), progress=not args.no_progress,
             execution=execution(args))
    print(f"wrote {out}/results.json, {out}/report.md and plots")
    return 0


def cmd_fit(args: argparse.Namespace) -> int:
    out = check_out(args.out)
    result = fit_pipeline(FitSettings(args.id_data, out, args.objective, args.preset, overrides(args), args.image_size,
                                      data_options(args), args.checkpoint_every, not args.no_progress),
                          source(args), execution(args))
    print(f"wrote {out / 'watermark.safetensors'} (max |w| {result.watermark.stats()['max_abs']:.3f}); "
          f"fit {result.fit_seconds:.1f}s")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    settings = EvaluateSettings(
        id_data=args.id_data, ood_data=args.ood_data, out=args.out, watermark=args.watermark, detector=args.detector,
        score=args.score, scores=args.scores or (), image_size=args.image_size, data=data_options(args),
        protocol=not args.all_ood, seed=args.seed, progress=not args.no_progress,
        layers=tuple(args.layers) if args.layers else None)
    check_evaluate(settings)
    evaluate_pipeline(settings, source(args), execution(args))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    cfg = BenchConfig(
        model=args.model, checkpoint=args.checkpoint, id_data=args.id_data, ood_data=args.ood_data,
        out=str(check_out(args.out)), objectives=args.objective, preset=args.preset, overrides=overrides(args),
        protocol=not args.all_ood, mean=args.mean, std=args.std, checkpoint_every=args.checkpoint_every,
        execution=execution(args), image_size=args.image_size, data=data_options(args),
        scores=expand_scores(args.scores), auto_tolerance=args.auto_tolerance, random_weights=args.random_weights,
    )
    run_benchmark(cfg, progress=not args.no_progress)
    print(f"wrote {cfg.out}/results.json and {cfg.out}/report.md")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    settings = CalibrateSettings(args.id_data, args.out, args.score, args.watermark, args.tpr, args.per_class,
                                 args.split, args.image_size, data_options(args), args.seed,
                                 tuple(args.layers) if args.layers else None,
                                 tuple(args.candidates or DEFAULT_POOL))
    made = calibrate(settings, source(args), execution(args), log=None if args.no_progress else say)
    if made.report is not None:
        selection = made.detector.selection
        chosen = selection["chosen"]
        ranked = [r for r in selection["ranking"] if r["ok"]]
        skipped = sorted({r["score"] for r in selection["ranking"] if not r["ok"]})
        why = f" ({len(skipped)} skipped: {', '.join(skipped)}; why in the ranking)" if skipped else ""
        print(f"chose {chosen['score']} ({'with' if chosen['watermark'] == 'given' else 'without'} the watermark) "
              f"from {len(ranked)} ranked candidates{why} in {selection['seconds']:.0f}s; ranking in {made.report}")
    print(made.summary(args.split))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    outcome = predict(PredictSettings(args.detector, args.input, args.out, args.fail_on_shift, data_options(args),
                                      not args.no_progress, args.fdr, args.monitor, args.alarm),
                      source(args), execution(args))
    print(outcome.summary())
    if outcome.adaptation():
        print(outcome.adaptation(), file=sys.stderr)
    print(outcome.shift["message"], file=sys.stderr)
    if outcome.monitor is not None:
        print(outcome.monitor.message(), file=sys.stderr)
    alarm = outcome.monitor is not None and outcome.monitor.alarm_at is not None
    return 3 if outcome.shift["fail"] or alarm else 0


def cmd_export(args: argparse.Namespace) -> int:
    for path in export(args.detector, source(args), args.out, args.format, args.p_value, execution(args)):
        print(f"wrote {path}")
    return 0


COMMANDS = {"demo": cmd_demo, "fit": cmd_fit, "evaluate": cmd_evaluate, "bench": cmd_bench,
            "calibrate": cmd_calibrate, "predict": cmd_predict, "export": cmd_export}


def _at_least(args: argparse.Namespace, name: str, minimum: int = 1) -> None:
    value = getattr(args, name, None)
    if value is not None and value < minimum:
        raise WatermarkOODError(f"--{name.replace('_', '-')} must be at least {minimum}, got {value}")


def check_options(args: argparse.Namespace) -> None:
    """Every option that can be judged without data, before any loading or fitting (one line, exit 2)."""
    for name in ("eval_batch_size", "threads", "image_size", "resize", "epochs", "batch_size", "train_limit",
                 "checkpoint_every"):
        _at_least(args, name)
    _at_least(args, "workers", 0)
    tpr = getattr(args, "tpr", None)
    if tpr is not None and not 0.0 < tpr < 1.0:
        raise WatermarkOODError(f"--tpr is the share of ID inputs to accept, in (0, 1); got {tpr}")
    if getattr(args, "fdr", None) is not None:
        check_fdr_level(args.fdr)
    if getattr(args, "alarm", None) is not None:
        check_alarm_level(args.alarm)
        if args.monitor is None:
            raise WatermarkOODError("--alarm is the level of a stream monitor; give --monitor STATE with it")
    level = getattr(args, "fail_on_shift", None)
    if level is not None and not 0.0 < level < 1.0:
        raise WatermarkOODError(f"--fail-on-shift is a significance level in (0, 1), e.g. 0.01; got {level}")
    tolerance = getattr(args, "auto_tolerance", None)
    if tolerance is not None and not 0 <= tolerance < float("inf"):
        raise WatermarkOODError(f"--auto-tolerance is a number of standard errors, at least 0; got {tolerance}")
    score = getattr(args, "score", None)
    if score not in (None, "auto") or (score == "auto" and args.command != "calibrate"):
        check_name(score)
    if getattr(args, "scores", None):
        expand_scores(args.scores)
    _check_files(args)
    if getattr(args, "model", None) is not None:
        source(args).check()


def _check_files(args: argparse.Namespace) -> None:
    for name, what in (("checkpoint", "checkpoint"), ("watermark", "watermark file"), ("detector", "detector file")):
        path = getattr(args, name, None)
        if path is not None and not Path(path).is_file():
            raise WatermarkOODError(f"{path}: {what} not found")
    if getattr(args, "id_data", None) is not None and not Path(args.id_data).exists():
        raise WatermarkOODError(f"{args.id_data}: ID data not found; expected {ID_LAYOUTS}")
    if getattr(args, "input", None) is not None and not Path(args.input).exists():
        raise WatermarkOODError(f"{args.input}: --input not found (expected a folder of images or an .npz with 'x')")
