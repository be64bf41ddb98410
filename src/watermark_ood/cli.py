"""Command-line interface: a thin layer over the library API.

Every user error becomes one line on stderr and exit status 2; ``--debug``
shows the traceback instead.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
from pathlib import Path
from typing import Any, Sequence

from . import __version__
from .config import OBJECTIVES, PRESETS
from .errors import WatermarkOODError

EPILOG = """examples:
  watermark-ood demo --out demo-out
  watermark-ood fit --model resnet20 --checkpoint resnet20.th --id-data data/cifar10 --preset cifar10 \\
      --objective energy --epochs 2 --train-limit 10000 --out runs/r20
  watermark-ood evaluate --model resnet20 --checkpoint resnet20.th --watermark runs/r20/watermark.safetensors \\
      --id-data data/cifar10 --ood-data data/ood/textures.npz data/svhn/test_32x32.mat --out runs/r20-eval
  watermark-ood bench --model resnet20 --checkpoint resnet20.th --id-data data/cifar10 \\
      --ood-data data/ood/*.npz --objective msp energy --epochs 1 --train-limit 5000 --out runs/bench
"""

SCORES_HELP = ("detectors to compare, each with and without the watermark: names (msp energy maxlogit entropy gen "
               "klmatching odin mahalanobis rmd knn vim she react ash dice pnml), combinations such as "
               "knn+vim+energy, or all")
ID_HELP = "ID data folder (train.npz/test.npz, torchvision's CIFAR layout, or ImageFolder train/ and test/)"
FIT_OVERRIDES = ("sigma", "rho", "beta", "t_in", "t_out", "m_in", "m_out", "alpha", "epochs", "batch_size", "train_limit", "seed",
                 "linf_budget", "l2_budget", "schedule", "noise_scale", "surrogate")


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.replace(",", " ").split())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from None


def _add_runtime(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("execution")
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (CUDA if available) [auto]")
    g.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                   help="autocast precision for the model's forward/backward [fp32]")
    g.add_argument("--compile", action="store_true", help="torch.compile the model (slow start, faster steps)")
    g.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction, default=True,
                   help="on CUDA, replay each watermark step as a CUDA graph (removes kernel-launch overhead) [on]")
    g.add_argument("--threads", type=int, default=None, help="CPU threads for PyTorch [PyTorch's default]")
    g.add_argument("--eval-batch-size", type=int, default=1000, help="batch size for scoring [1000]")
    g.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _add_model(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", required=True,
                   help="registry name (wrn40_2, resnet20/32/44/56/110, small_cnn), torchvision:NAME, "
                        "or package.module:callable")
    g.add_argument("--checkpoint", help="weights file (.pt/.th/.pth loaded with weights_only=True, or .safetensors)")
    g.add_argument("--mean", type=_floats, help="override the model's input mean, e.g. 0.485,0.456,0.406")
    g.add_argument("--std", type=_floats, help="override the model's input std")


def _add_fit(p: argparse.ArgumentParser, multi_objective: bool) -> None:
    g = p.add_argument_group("watermark fitting (defaults: the preset, i.e. the paper)")
    if multi_objective:
        g.add_argument("--objective", nargs="+", default=["msp", "energy"], choices=list(OBJECTIVES),
                       help="objectives to fit, one run each [msp energy]")
    else:
        g.add_argument("--objective", default="msp", choices=list(OBJECTIVES),
                       help="training objective: msp, energy (the paper), hinge (bounded, Liu et al. 2020), "
                            "anchored (hinge that no outlier may rise in) or features [msp]")
    g.add_argument("--preset", default="cifar10",
                   help=f"hyperparameter preset: cifar10, cifar100, a full name ({', '.join(PRESETS)}), or auto "
                        "(search on a held-out split of the ID training data; no OOD data is read) [cifar10]")
    g.add_argument("--epochs", type=int, help="epochs over the ID training data [50]")
    g.add_argument("--train-limit", type=int, help="fit on a seeded random subset of this many ID training images")
    g.add_argument("--batch-size", type=int, help="ID images per step; as many noise images are added [128]")
    g.add_argument("--alpha", type=float, help="sign-descent step size, divided by 10 half-way [0.01]")
    g.add_argument("--sigma", type=float, help="std of the Gaussian surrogate outliers, normalized units")
    g.add_argument("--rho", type=float, help="sharpness-aware perturbation radius")
    g.add_argument("--beta", type=float, help="weight of the outlier term")
    g.add_argument("--t-in", type=float, help="energy objective: ID temperature")
    g.add_argument("--t-out", type=float, help="energy objective: outlier temperature")
    g.add_argument("--m-in", type=float, help="hinge/anchored: ID logsumexp margin [ID training median]")
    g.add_argument("--m-out", type=float, help="hinge/anchored: outlier logsumexp margin [ID training 5%% quantile]")
    g.add_argument("--linf-budget", type=float, help="clip the watermark to [-B, B] after each step (not in the paper)")
    g.add_argument("--l2-budget", type=float, help="project the watermark onto an L2 ball (not in the paper)")
    g.add_argument("--schedule", choices=["step", "cosine"],
                   help="step size schedule: step (the paper: /10 half-way) or cosine (per step, for short runs)")
    g.add_argument("--surrogate", choices=["gaussian", "mosaic", "mixed"],
                   help="surrogate outliers: Gaussian noise (the paper), mosaics of ID patches, or mixed (half "
                        "Gaussian, a quarter flat colours, a quarter greyscale ID images) [gaussian]")
    g.add_argument("--noise-scale", choices=["absolute", "data"],
                   help="sigma in normalized units (the paper) or relative to the data's per-channel std")
    g.add_argument("--seed", type=int, default=0, help="seed for data order, flips and noise [0]")
    g.add_argument("--checkpoint-every", type=int, default=200, help="steps between fit checkpoints [200]")


def _add_data(p: argparse.ArgumentParser, id_help: str, ood: bool) -> None:
    p.add_argument("--id-data", required=True, help=id_help)
    p.add_argument("--image-size", type=int, help="resize ImageFolder images (shorter side, then center crop)")
    g = p.add_argument_group("image folders (ImageFolder / ImageNet layouts; see docs/scaling.md)")
    g.add_argument("--stream", action=argparse.BooleanOptionalAction, default=None,
                   help="decode image folders batch by batch from disk (--no-stream: load them into memory) "
                        "[stream when the decoded set exceeds 2 GiB]")
    g.add_argument("--resize", type=int, help="shorter side before the center crop, e.g. 256 for --image-size 224 "
                                              "[the image size]")
    g.add_argument("--train-crop", choices=["center", "random-resized"], default="center",
                   help="training images: resize + center crop, or torchvision's RandomResizedCrop [center]")
    g.add_argument("--workers", type=int, default=2, help="DataLoader processes decoding images [2]")
    g.add_argument("--skip-bad-images", action="store_true",
                   help="log, skip and count unreadable images instead of stopping at the first one")
    if ood:
        p.add_argument("--ood-data", nargs="+", required=True,
                       help="OOD sets: image folders, SVHN .mat, .npz, synthetic:gaussian, synthetic:uniform")
        p.add_argument("--all-ood", action="store_true",
                       help="use every OOD image instead of the paper's |ID test|/5 per set")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="watermark-ood",
        description="Learn one input-space watermark that makes a fixed, trained classifier better at telling "
                    "in-distribution inputs from unknown ones (Wang et al., NeurIPS 2022). No weights change.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"watermark-ood {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", help="offline end-to-end demo on scikit-learn's digits (no download, ~2 min on CPU)",
                          description="Train a small classifier on digits 0-5, fit MSP and energy watermarks, and "
                                      "evaluate against held-out digits, photo patches and noise.")
    demo.add_argument("--out", required=True, help="folder for results.json, report.md and the plots")
    demo.add_argument("--epochs", type=int, default=50, help="watermark epochs per objective [50]")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--preset", default="cifar10", choices=["cifar10", "auto"],
                      help="the paper's CIFAR-10 presets (default) or auto (chosen on held-out training digits)")
    _add_runtime(demo)

    fit = sub.add_parser("fit", help="learn a watermark for a model on an ID training set",
                         description="Fit a watermark and write watermark.safetensors (+ .json), history.json and "
                                     "watermark.png to --out. Re-running the same command resumes.")
    _add_model(fit)
    _add_data(fit, ID_HELP, ood=False)
    fit.add_argument("--out", required=True, help="output folder")
    _add_fit(fit, multi_objective=False)
    _add_runtime(fit)

    ev = sub.add_parser("evaluate", help="score ID vs OOD sets: a watermark, a detector file, or every detector",
                        description="Write results.json, report.md, histograms and ROC curves to --out. With "
                                    "--watermark: with and without it; with --detector: the file as shipped; with "
                                    "neither: the detectors of --scores (or all) on the model as given, no "
                                    "watermark fitted. --scores adds leaderboard.md/.png.")
    _add_model(ev)
    ev.add_argument("--watermark", help="a .safetensors watermark written by fit or bench")
    ev.add_argument("--detector", help="a detector file written by calibrate: evaluate it as shipped "
                                       "(its score, fitted state, watermark and threshold)")
    _add_data(ev, "ID data folder; its test split is evaluated", ood=True)
    ev.add_argument("--score", help="the detector to report (any name --scores accepts) [with --watermark: its "
                                    "objective's score; without: the first of --scores]")
    ev.add_argument("--scores", nargs="+", default=None, help=SCORES_HELP)
    ev.add_argument("--seed", type=int, default=0, help="seed of the OOD subsampling [0]")
    ev.add_argument("--out", required=True, help="output folder")
    _add_runtime(ev)

    bench = sub.add_parser("bench", help="the paper's protocol: baseline vs watermark for each objective",
                           description="Fit one watermark per objective and compare with the baseline on every OOD "
                                       "set. Writes results.json, report.md, watermarks and plots; re-running the "
                                       "same command resumes an interrupted run.")
    _add_model(bench)
    _add_data(bench, ID_HELP, ood=True)
    bench.add_argument("--out", required=True, help="output folder")
    bench.add_argument("--scores", nargs="+", default=None,
                       help=SCORES_HELP + "; writes leaderboard.md and leaderboard.png")
    _add_fit(bench, multi_objective=True)
    bench.add_argument("--auto-tolerance", type=float, default=0.0, metavar="SE",
                       help="--preset auto: binomial standard errors by which a watermark may lose to the zero "
                            "watermark on one validation outlier kind and must beat it overall (0: exact) [0]")
    _add_runtime(bench)
    cal = sub.add_parser("calibrate", help="build a detector: watermark + score + threshold at a chosen ID acceptance",
                         description="Set the threshold so that --tpr of held-out ID images are accepted, and "
                                     "write a detector file (safetensors + JSON).")
    _add_model(cal)
    cal.add_argument("--watermark", help="watermark file; omit for a plain (unwatermarked) detector")
    _add_data(cal, ID_HELP, ood=False)
    cal.add_argument("--score", default=None,
                     help="a detector name (msp energy maxlogit entropy gen klmatching odin mahalanobis rmd knn vim "
                          "she react ash dice pnml), a combination such as knn+vim+energy, or auto: rank them all, "
                          "with and without --watermark, on held-out ID training data vs synthetic outliers (no OOD "
                          "data) [the watermark's score, else energy]")
    cal.add_argument("--tpr", type=float, default=0.95,
                     help="share of ID inputs to accept, in (0, 1): the split-conformal threshold guarantees that an "
                          "ID input is rejected with probability at most 1 - tpr [0.95]")
    cal.add_argument("--per-class", action="store_true",
                     help="one threshold per predicted class, each with its own guarantee (every class needs at "
                          "least 1/(1 - tpr) - 1 calibration images)")
    cal.add_argument("--split", default="holdout", choices=["holdout", "test"],
                     help="calibrate on a seeded 10%% hold-out of the training split (default) or on the test split")
    cal.add_argument("--seed", type=int, default=0)
    cal.add_argument("--out", required=True, help="detector file to write (.safetensors; a .json is written beside it)")
    _add_runtime(cal)

    pred = sub.add_parser("predict", help="score inputs with a calibrated detector and decide in/out",
                          description="Write one row per input (score, is_ood) as CSV or JSON.")
    _add_model(pred)
    pred.add_argument("--detector", required=True, help="detector file written by calibrate")
    pred.add_argument("--input", required=True, help="a folder of images or an .npz with 'x'")
    pred.add_argument("--out", required=True, help="output .csv (written as it goes; any folder size) or .json")
    pred.add_argument("--workers", type=int, default=2, help="DataLoader processes decoding images [2]")
    pred.add_argument("--fail-on-shift", type=float, metavar="ALPHA",
                      help="exit with status 3 when the shift alarm's exact test rejects 'these inputs are like the "
                           "calibration data' at level ALPHA, e.g. 0.01 (for pipelines)")
    pred.add_argument("--skip-bad-images", action="store_true",
                      help="write 'unreadable' rows for files that cannot be decoded instead of stopping")
    _add_runtime(pred)

    exp = sub.add_parser("export", help="export a calibrated detector to TorchScript and/or ONNX",
                         description="One module: raw images in (float in [0, 1], NCHW, any batch size); the model's "
                                     "normalization, watermark, model, score and threshold inside; "
                                     "(logits, score, is_ood) out, score higher = more ID.")
    _add_model(exp)
    exp.add_argument("--detector", required=True, help="detector file written by calibrate")
    exp.add_argument("--format", nargs="+", default=["torchscript", "onnx"], choices=["torchscript", "onnx"])
    exp.add_argument("--p-value", action="store_true",
                     help="a fourth output: the conformal p-value of each input (the calibration scores inside)")
    exp.add_argument("--out", required=True, help="output folder")
    _add_runtime(exp)
    for command in sub.choices.values():  # --debug is accepted before or after the command
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                             help="show full tracebacks on errors")
    return parser


def _data_options(args: argparse.Namespace):
    from .datasets import DataOptions

    if getattr(args, "workers", 2) < 0:
        raise WatermarkOODError(f"--workers must be >= 0, got {args.workers}")
    return DataOptions(stream=getattr(args, "stream", None), workers=getattr(args, "workers", 2),
                       skip_bad_images=getattr(args, "skip_bad_images", False), resize=getattr(args, "resize", None),
                       random_resized_crop=getattr(args, "train_crop", "center") == "random-resized")


def _execution(args: argparse.Namespace):
    from .runtime import ExecutionConfig

    return ExecutionConfig(device=args.device, precision=args.precision, compile=args.compile,
                           cuda_graphs=args.cuda_graphs, threads=args.threads, eval_batch_size=args.eval_batch_size)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {k: getattr(args, k) for k in FIT_OVERRIDES if getattr(args, k, None) is not None}


def _check_out(path: str) -> Path:
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise WatermarkOODError(f"--out {out} exists and is not a folder")
    return out


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import DemoSettings, run_demo

    out = _check_out(args.out)
    run_demo(out, DemoSettings(epochs=args.epochs, seed=args.seed, preset=args.preset), progress=not args.no_progress,
             execution=_execution(args))
    print(f"wrote {out}/results.json, {out}/report.md and plots")
    return 0


def cmd_fit(args: argparse.Namespace) -> int:
    from .bench import fit_config_for
    from .datasets import load_id_data
    from .learner import WatermarkLearner
    from .models import load_model
    from .reporting import plot_history, plot_watermark
    from .fileio import atomic_write_json

    out = _check_out(args.out)
    config = fit_config_for(args.preset, args.objective, _overrides(args))
    train, _ = load_id_data(args.id_data, args.image_size, options=_data_options(args))
    model = load_model(args.model, args.checkpoint, None, train.image_shape[0], args.mean, args.std,
                       fallback_classes=train.num_classes)
    learner = WatermarkLearner(model.module, model.normalization, config, _execution(args), model.model_id)
    result = learner.fit(train, progress=not args.no_progress, checkpoint_dir=out,
                         checkpoint_every=args.checkpoint_every)
    path = result.watermark.save(out / "watermark.safetensors")
    atomic_write_json(out / "history.json", [r.to_dict() for r in result.history])
    plot_watermark(result.watermark.tensor, out / "watermark.png", f"{args.objective} watermark")
    if result.history:
        plot_history([r.to_dict() for r in result.history], out / "history.png")
    stats = result.watermark.stats()
    print(f"wrote {path} (max |w| {stats['max_abs']:.3f}); fit {result.fit_seconds:.1f}s")
    return 0


def _score_names(names: Sequence[str] | None) -> list[str]:
    from .pipelines import expand_scores

    return expand_scores(names)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .pipelines import EvaluateSettings, ModelSource, check_evaluate, evaluate_pipeline

    settings = EvaluateSettings(
        id_data=args.id_data, ood_data=args.ood_data, out=args.out, watermark=args.watermark, detector=args.detector,
        score=args.score, scores=args.scores or (), image_size=args.image_size, data=_data_options(args),
        protocol=not args.all_ood, seed=args.seed, progress=not args.no_progress)
    check_evaluate(settings)
    evaluate_pipeline(settings, ModelSource(args.model, args.checkpoint, args.mean, args.std), _execution(args))
    return 0


def score_for(objective: str) -> str:
    from .scores import score_for_objective

    from .config import OBJECTIVES

    return score_for_objective(objective) if objective in OBJECTIVES else "energy"


def _tolerance(value: float) -> float:
    if not (value >= 0 and value < float("inf")):
        raise WatermarkOODError(f"--auto-tolerance is a number of standard errors, at least 0; got {value}")
    return value


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import BenchConfig, run_benchmark

    cfg = BenchConfig(
        model=args.model, checkpoint=args.checkpoint, id_data=args.id_data, ood_data=args.ood_data,
        out=str(_check_out(args.out)), objectives=args.objective, preset=args.preset, overrides=_overrides(args),
        protocol=not args.all_ood, mean=args.mean, std=args.std, checkpoint_every=args.checkpoint_every,
        execution=_execution(args), image_size=args.image_size, data=_data_options(args),
        scores=_score_names(args.scores), auto_tolerance=_tolerance(args.auto_tolerance),
    )
    run_benchmark(cfg, progress=not args.no_progress)
    print(f"wrote {cfg.out}/results.json and {cfg.out}/report.md")
    return 0


def _install_stop_handler() -> None:
    """SIGINT/SIGTERM: finish the current step, write a checkpoint, then stop (see learner.StopRequested)."""
    from .learner import STOP

    STOP.clear()

    def handler(signum, frame):  # noqa: ARG001
        if STOP.is_set():  # a second signal stops at once
            raise KeyboardInterrupt
        STOP.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handler)


def _detector_model(args, meta_shape=None):
    from .models import load_model

    channels = meta_shape[0] if meta_shape else 3
    return load_model(args.model, args.checkpoint, None, channels, args.mean, args.std)


def cmd_calibrate(args: argparse.Namespace) -> int:
    from .datasets import load_id_data
    from .detector import Detector
    from .detectors import check_name
    from .watermark import Watermark

    if args.score not in (None, "auto"):
        check_name(args.score)
    train, test = load_id_data(args.id_data, args.image_size, options=_data_options(args))
    watermark = Watermark.load(args.watermark, expected_shape=test.image_shape) if args.watermark else None
    score = args.score or (score_for(watermark.metadata.get("objective", "")) if watermark else "energy")
    model = _detector_model(args, test.image_shape)
    execution = _execution(args)
    if score == "auto":
        from .progress import say
        from .selection import SelectionSettings, select_detector

        if args.split == "test":
            raise WatermarkOODError("--score auto chooses and calibrates on held-out training data; drop --split test")
        say("ranking every detector on held-out ID training data vs synthetic outliers (no OOD data)")
        selection = select_detector(model.module, model.normalization, train, watermark, args.tpr,
                                    SelectionSettings(seed=args.seed, per_class=args.per_class), execution,
                                    model.model_id,
                                    log=None if args.no_progress else say)
        detector = selection.detector
        calibration = None
    else:
        fit_split, holdout = train.split(0.1, args.seed)
        calibration = holdout.sample(5000, args.seed) if args.split == "holdout" else test
        detector = Detector(model.module, model.normalization, watermark, score, execution=execution,
                            model_id=model.model_id).fit(fit_split, seed=args.seed).calibrate(
                                calibration, args.tpr, args.per_class, train.num_classes)
    detector.class_names = getattr(train, "class_names", None)
    path = detector.save(args.out)
    if detector.selection is not None:
        from .reporting import write_selection_report

        report = write_selection_report(Path(path).with_suffix(".md"), detector.selection)
        chosen = detector.selection["chosen"]
        print(f"chose {chosen['score']} ({'with' if chosen['watermark'] == 'given' else 'without'} the watermark) "
              f"from {len(detector.selection['ranking'])} candidates in {detector.selection['seconds']:.0f}s; "
              f"ranking in {report}")
    accepted = "" if calibration is None else \
        f", accepts {100 * (1 - float(detector.predict(calibration).is_ood.mean())):.2f}% of " \
        f"{len(calibration)} ID images ({args.split})"
    guarantee = ""
    if detector.calibration is not None:
        summary = detector.calibration.summary()
        guarantee = (f"; guaranteed: an ID input is rejected with probability at most "
                     f"{100 * summary['guaranteed_false_rejection_at_most']:.2f}% (split-conformal, n = {summary['n']}"
                     f"{', per class' if summary['per_class'] else ''})")
    print(f"wrote {path}: score {detector.score}, threshold {detector.threshold:.6g}{accepted}{guarantee}")
    return 0


def _read_inputs(args: argparse.Namespace, shape) -> tuple[object, list[str]]:
    """A folder is streamed (decoded batch by batch, any size); an .npz is read whole."""
    import torch

    from .data import load_npz
    from .datasets import image_files
    from .streaming import FileImageSet, ImageTransform

    p = Path(args.input)
    if p.is_dir():
        files = image_files(p)
        if not files:
            raise WatermarkOODError(f"{p}: no images found")
        images = FileImageSet(files, torch.full((len(files),), -1), p.name, ImageTransform(shape[1], None, shape[0]),
                              _data_options(args).workers, args.skip_bad_images)
        return images, [str(f.relative_to(p)) for f in files]
    data = load_npz(p)
    return data, [str(i) for i in range(len(data))]


def cmd_predict(args: argparse.Namespace) -> int:
    import csv
    import json as json_module

    import torch

    from .detector import Detector
    from .fileio import atomic_write_text
    from .progress import bar

    meta, _ = Detector.read(args.detector)
    shape = meta.get("input_shape") or [3, 32, 32]
    model = _detector_model(args, shape)
    detector = Detector.load(args.detector, model.module, _execution(args))
    images, names = _read_inputs(args, shape)
    if images.image_shape != tuple(shape):
        raise WatermarkOODError(f"{args.input}: images are {images.image_shape}, the detector expects {tuple(shape)}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    as_json = out.suffix == ".json"
    rows, flagged, unreadable, step = [], 0, 0, 1000
    try:
        with tmp.open("w", newline="") as handle:
            columns = ["input", "score", "is_ood", "predicted_class"] + (["class_name"] if detector.class_names else []) \
                + (["p_value"] if detector.calibration is not None else [])
            writer = csv.DictWriter(handle, fieldnames=columns)
            if not as_json:
                writer.writeheader()
            for start in bar(range(0, len(images), step), not args.no_progress, desc="predict", unit="batch"):
                part = images.subset(torch.arange(start, min(start + step, len(images))))
                chunk = detector.predict(part).to_rows(names[start:start + step])
                flagged += sum(r["is_ood"] is True for r in chunk)
                unreadable += sum(r["is_ood"] == "unreadable" for r in chunk)
                if as_json:
                    rows += chunk
                else:
                    writer.writerows(chunk)
        shift = _shift_alarm(detector, flagged, len(names) - unreadable, args.fail_on_shift)
        if as_json:
            atomic_write_text(tmp, json_module.dumps({"threshold": detector.threshold, "score": detector.score,
                                                      "shift": shift, "rows": rows}, indent=1))
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    skipped = f"; {unreadable} unreadable files skipped" if unreadable else ""
    print(f"wrote {out}: {flagged} of {len(names) - unreadable} inputs flagged as OOD{skipped}")
    print(shift["message"], file=sys.stderr)
    return 3 if shift["fail"] else 0


def _shift_alarm(detector, flagged: int, inputs: int, fail_on: float | None) -> dict[str, Any]:
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


def cmd_export(args: argparse.Namespace) -> int:
    from .detector import Detector
    from .export import export_onnx, export_torchscript

    meta, _ = Detector.read(args.detector)
    model = _detector_model(args, meta.get("input_shape"))
    detector = Detector.load(args.detector, model.module, _execution(args))
    out = Path(args.out)
    if "torchscript" in args.format:
        print(f"wrote {export_torchscript(detector, out / 'detector.torchscript.pt', args.p_value)}")
    if "onnx" in args.format:
        print(f"wrote {export_onnx(detector, out / 'detector.onnx', with_p_value=args.p_value)}")
    return 0


def check_options(args: argparse.Namespace) -> None:
    """Every option that can be judged without data, before any loading or fitting (one line, exit 2)."""
    from .detectors import check_name

    def positive(name: str, minimum: int = 1) -> None:
        value = getattr(args, name, None)
        if value is not None and value < minimum:
            raise WatermarkOODError(f"--{name.replace('_', '-')} must be at least {minimum}, got {value}")

    for name in ("eval_batch_size", "threads", "image_size", "resize", "epochs", "batch_size", "train_limit",
                 "checkpoint_every"):
        positive(name)
    positive("workers", 0)
    tpr = getattr(args, "tpr", None)
    if tpr is not None and not 0.0 < tpr < 1.0:
        raise WatermarkOODError(f"--tpr is the share of ID inputs to accept, in (0, 1); got {tpr}")
    level = getattr(args, "fail_on_shift", None)
    if level is not None and not 0.0 < level < 1.0:
        raise WatermarkOODError(f"--fail-on-shift is a significance level in (0, 1), e.g. 0.01; got {level}")
    score = getattr(args, "score", None)
    if score not in (None, "auto") or (score == "auto" and args.command != "calibrate"):
        check_name(score)
    if getattr(args, "scores", None):
        _score_names(args.scores)
    if getattr(args, "auto_tolerance", None) is not None:
        _tolerance(args.auto_tolerance)
    for name, what in (("checkpoint", "checkpoint"), ("watermark", "watermark file"), ("detector", "detector file")):
        path = getattr(args, name, None)
        if path is not None and not Path(path).is_file():
            raise WatermarkOODError(f"{path}: {what} not found")
    if getattr(args, "id_data", None) is not None and not Path(args.id_data).exists():
        from .datasets import ID_LAYOUTS

        raise WatermarkOODError(f"{args.id_data}: ID data not found; expected {ID_LAYOUTS}")
    if getattr(args, "input", None) is not None and not Path(args.input).exists():
        raise WatermarkOODError(f"{args.input}: --input not found (expected a folder of images or an .npz with 'x')")


COMMANDS = {"demo": cmd_demo, "fit": cmd_fit, "evaluate": cmd_evaluate, "bench": cmd_bench,
            "calibrate": cmd_calibrate, "predict": cmd_predict, "export": cmd_export}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    out = Path(args.out) if getattr(args, "out", None) else None
    created = out is not None and not out.exists()
    from .learner import StopRequested

    if args.command in ("fit", "bench"):
        _install_stop_handler()
    from . import distributed

    if distributed.launched_by_torchrun() and hasattr(args, "device"):
        args.device = distributed.init_from_environment(args.device)
        if not distributed.is_main_process():
            args.no_progress = True
            sys.stdout = open(os.devnull, "w")  # one voice: rank 0 prints, every rank computes
    from .learner import STOP

    try:
        check_options(args)
        status = COMMANDS[args.command](args)
        if STOP.is_set():  # the signal came after the last step: the outputs are complete, the exit says interrupted
            print("watermark-ood: interrupted after the work had finished; all outputs were written", file=sys.stderr)
            return 130
        return status
    except StopRequested as stop:
        print(f"watermark-ood: stopped; checkpoint written to {stop.args[0]}. Run the same command again to resume.",
              file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("watermark-ood: interrupted", file=sys.stderr)
        return 130
    except WatermarkOODError as error:
        if args.debug:
            raise
        if created and out is not None and out.is_dir() and not any(out.iterdir()):
            shutil.rmtree(out, ignore_errors=True)
        print(f"watermark-ood: error: {error}", file=sys.stderr)
        return 2
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    sys.exit(main())
