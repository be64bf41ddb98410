"""The command line's arguments: one parser, every command's options, their help (what the CLI accepts; what
each command does is in :mod:`watermark_ood.pipelines`)."""

from __future__ import annotations

import argparse
from typing import Any

from watermark_ood.core.version import __version__
from watermark_ood.detection.registry import LAYER_SCORES, SCORE_NAMES
from watermark_ood.watermark.config import OBJECTIVES, PRESETS

EPILOG = """examples:
  # ship a detector for your model, chosen without OOD data, then use it
  watermark-ood calibrate --score auto --model resnet20 --checkpoint resnet20.th --id-data data/cifar10 \\
      --out detector.safetensors
  watermark-ood predict --model resnet20 --checkpoint resnet20.th --detector detector.safetensors \\
      --input photos/ --out scores.csv
  watermark-ood export --model resnet20 --checkpoint resnet20.th --detector detector.safetensors --out exported
  # your own model: a file and a callable (called with no arguments), its weights and normalization
  watermark-ood calibrate --score auto --model mynet.py:MyNet --checkpoint mynet.pt \\
      --mean 0.49,0.48,0.45 --std 0.25,0.24,0.26 --id-data data/mine --out detector.safetensors
  # measure detectors on real OOD sets; learn the paper's watermark
  watermark-ood evaluate --model resnet20 --checkpoint resnet20.th --id-data data/cifar10 \\
      --ood-data data/ood/textures.npz data/svhn/test_32x32.mat --scores all --out runs/leaderboard
  watermark-ood fit --model resnet20 --checkpoint resnet20.th --id-data data/cifar10 --preset cifar10 \\
      --objective energy --epochs 2 --train-limit 10000 --out runs/r20
  watermark-ood demo --out demo-out
"""

SCORES_HELP = (f"detectors to compare, each with and without the watermark: names ({' '.join(SCORE_NAMES)}), "
               "combinations such as knn+vim+energy, or all")
ID_HELP = "ID data folder (train.npz/test.npz, torchvision's CIFAR layout, or ImageFolder train/ and test/)"

def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.replace(",", " ").split())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from None


RUNTIME_OPTIONS = ("device", "precision", "compile", "cuda_graphs", "threads", "eval_batch_size")
FITS = RUNTIME_OPTIONS  # commands that learn a watermark: every execution option applies
INFERS = ("device", "precision", "threads", "eval_batch_size")  # forward (and detectors' own backward) passes only


def _add_runtime(p: argparse.ArgumentParser, applies: tuple[str, ...] = FITS) -> None:
    """The execution options; those that do not apply to a command stay accepted (scripts keep working) but are
    not listed in its help."""
    def shown(name: str, text: str) -> str:
        return text if name in applies else argparse.SUPPRESS

    fits = "compile" in applies
    g = p.add_argument_group("execution")
    g.add_argument("--device", default="auto", help=shown("device", "cpu, cuda, cuda:N or auto (CUDA if available) "
                                                                    "[auto]"))
    g.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                   help=shown("precision", "autocast precision for the model's " + (
                       "forward/backward passes" if fits else "forward passes") + " [fp32]"))
    g.add_argument("--compile", action="store_true",
                   help=shown("compile", "torch.compile the model for the watermark's steps (slow start, faster "
                                         "steps)"))
    g.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction, default=True,
                   help=shown("cuda_graphs", "on CUDA, replay each watermark step as a CUDA graph (removes "
                                             "kernel-launch overhead) [on]"))
    g.add_argument("--threads", type=int, default=None, help=shown("threads", "CPU threads for PyTorch [PyTorch's "
                                                                              "default]"))
    g.add_argument("--eval-batch-size", type=int, default=1000,
                   help=shown("eval_batch_size", "batch size for scoring [1000]"))
    g.add_argument("--no-progress", action="store_true", help="hide progress bars and progress lines")


def _add_model(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", required=True,
                   help="registry name (wrn40_2, resnet20/32/44/56/110, small_cnn), torchvision:NAME, "
                        "or your own: path/to/file.py:callable or package.module:callable (called with no "
                        "arguments, it returns the nn.Module; give --mean/--std unless it has a `normalization`)")
    g.add_argument("--checkpoint", help="weights file (.pt/.th/.pth loaded with weights_only=True, or .safetensors); "
                                        "required unless --random-weights")
    g.add_argument("--random-weights", action="store_true",
                   help="use the architecture's seeded random weights instead of a --checkpoint (to try the tool; "
                        "a detector for an untrained model detects nothing useful)")
    g.add_argument("--mean", type=_floats, help="override the model's input mean, e.g. 0.485,0.456,0.406")
    g.add_argument("--std", type=_floats, help="override the model's input std")


HYPERPARAMETERS = (  # (option, type, help): the fit config's numbers a command line may override
    ("--epochs", int, "epochs over the ID training data [50]"),
    ("--train-limit", int, "fit on a seeded random subset of this many ID training images"),
    ("--batch-size", int, "ID images per step; as many noise images are added [128]"),
    ("--alpha", float, "sign-descent step size, divided by 10 half-way [0.01]"),
    ("--sigma", float, "std of the Gaussian surrogate outliers, normalized units"),
    ("--rho", float, "sharpness-aware perturbation radius"),
    ("--beta", float, "weight of the outlier term"),
    ("--t-in", float, "energy objective: ID temperature"),
    ("--t-out", float, "energy objective: outlier temperature"),
    ("--m-in", float, "hinge/anchored: ID logsumexp margin [ID training median]"),
    ("--m-out", float, "hinge/anchored: outlier logsumexp margin [ID training 5%% quantile]"),
    ("--linf-budget", float, "clip the watermark to [-B, B] after each step (not in the paper)"),
    ("--l2-budget", float, "project the watermark onto an L2 ball (not in the paper)"),
)


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
    for option, kind, text in HYPERPARAMETERS:
        g.add_argument(option, type=kind, help=text)
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


def _demo_command(sub: Any) -> None:
    demo = sub.add_parser("demo", help="offline end-to-end demo on scikit-learn's digits (no download; 3 min on 2 CPU cores, "
                               "README)",
                          description="Train a small classifier on digits 0-5, fit MSP and energy watermarks, and "
                                      "evaluate against held-out digits, photo patches and noise.")
    demo.add_argument("--out", required=True, help="folder for results.json, report.md and the plots")
    demo.add_argument("--epochs", type=int, default=50, help="watermark epochs per objective [50]")
    demo.add_argument("--seed", type=int, default=0,
                      help="seed of the classifier's training, data order, flips and noise [0]")
    demo.add_argument("--preset", default="cifar10", choices=["cifar10", "auto"],
                      help="the paper's CIFAR-10 presets (default) or auto (chosen on held-out training digits)")
    _add_runtime(demo)


def _fit_command(sub: Any) -> None:
    fit = sub.add_parser("fit", help="learn a watermark for a model on an ID training set",
                         description="Fit a watermark and write watermark.safetensors (+ .json), history.json and "
                                     "watermark.png to --out. Re-running the same command resumes.")
    _add_model(fit)
    _add_data(fit, ID_HELP, ood=False)
    fit.add_argument("--out", required=True, help="output folder")
    _add_fit(fit, multi_objective=False)
    _add_runtime(fit)


def _add_layers(parser: Any, more: str = "") -> None:
    parser.add_argument("--layers", nargs="+", metavar="NAME", default=None,
                        help="the layers a detector on intermediate layers taps, named as in model.named_modules() "
                             f"(for {' '.join(LAYER_SCORES)}){more} [each stage's output of a registered "
                             "architecture]")


def _evaluate_command(sub: Any) -> None:
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
    _add_layers(ev, " (a feature-map kind takes one; it keeps its default map when several are named)")
    ev.add_argument("--seed", type=int, default=0, help="seed of the OOD subsampling [0]")
    ev.add_argument("--out", required=True, help="output folder")
    _add_runtime(ev, INFERS)


def _bench_command(sub: Any) -> None:
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


def _calibrate_command(sub: Any) -> None:
    cal = sub.add_parser("calibrate", help="build a detector: watermark + score + threshold at a chosen ID acceptance",
                         description="Set the threshold so that --tpr of held-out ID images are accepted, and "
                                     "write a detector file (safetensors + JSON).")
    _add_model(cal)
    cal.add_argument("--watermark", help="watermark file; omit for a plain (unwatermarked) detector")
    _add_data(cal, ID_HELP, ood=False)
    cal.add_argument("--score", default=None,
                     help=f"a detector name ({' '.join(SCORE_NAMES)}), a combination such as knn+vim+energy, or "
                          "auto (recommended): rank the pool of --candidates and their combinations, with and "
                          "without --watermark, on held-out ID training data vs synthetic outliers (no OOD data), "
                          "minutes on a CPU [the watermark's score, else energy: seconds, and what scripts written "
                          "before auto existed expect]")
    cal.add_argument("--candidates", nargs="+", metavar="NAME", default=None,
                     help="the detectors --score auto ranks: shipped (every detector but combood, mcd and those no "
                          "pool test has adopted yet), all (every detector the model runs), and/or detector names, "
                          "e.g. shipped combood or msp energy knn [shipped]")
    _add_layers(cal)
    cal.add_argument("--tpr", type=float, default=0.95,
                     help="share of ID inputs to accept, in (0, 1): the split-conformal threshold guarantees that an "
                          "ID input is rejected with probability at most 1 - tpr [0.95]")
    cal.add_argument("--per-class", action="store_true",
                     help="one threshold per predicted class, each with its own guarantee (every class needs at "
                          "least 1/(1 - tpr) - 1 calibration images)")
    cal.add_argument("--split", default="holdout", choices=["holdout", "test"],
                     help="calibrate on a seeded 10%% hold-out of the training split (default) or on the test split")
    cal.add_argument("--seed", type=int, default=0,
                     help="seed of the hold-out split, the fit sample and --score auto's synthetic outliers [0]")
    cal.add_argument("--out", required=True, help="detector file to write (.safetensors; a .json is written beside it)")
    _add_runtime(cal, INFERS)


def _predict_command(sub: Any) -> None:
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
    pred.add_argument("--fdr", type=float, metavar="Q",
                      help="also reject by Benjamini-Hochberg over all inputs' conformal p-values (column fdr_reject): "
                           "the expected share of ID inputs among those rejected is at most Q, e.g. 0.1")
    pred.add_argument("--monitor", metavar="STATE",
                      help="watch the inputs as one stream (in input order, across calls): a conformal test martingale "
                           "whose state file STATE is created, or resumed and extended; exit status 3 once its alarm "
                           "has fired (false alarm over the whole ID stream at most 1/C)")
    pred.add_argument("--alarm", type=float, metavar="C",
                      help="the stream monitor's alarm level, above 1, for a new STATE [100: false alarms at most 1%%]")
    pred.add_argument("--skip-bad-images", action="store_true",
                      help="write 'unreadable' rows for files that cannot be decoded instead of stopping")
    _add_runtime(pred, INFERS)


def _export_command(sub: Any) -> None:
    exp = sub.add_parser("export", help="export a calibrated detector to TorchScript and/or ONNX",
                         description="One module: raw images in (float in [0, 1], NCHW, any batch size); the model's "
                                     "normalization, watermark, model, score and threshold inside; "
                                     "(logits, score, is_ood) out, score higher = more ID.")
    _add_model(exp)
    exp.add_argument("--detector", required=True, help="detector file written by calibrate")
    exp.add_argument("--format", nargs="+", default=["torchscript", "onnx"], choices=["torchscript", "onnx"],
                     help="what to write: detector.torchscript.pt and/or detector.onnx [both]")
    exp.add_argument("--p-value", action="store_true",
                     help="a fourth output: the conformal p-value of each input (the calibration scores inside)")
    exp.add_argument("--out", required=True, help="output folder")
    _add_runtime(exp, ("threads",))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="watermark-ood",
        description="Make a fixed, trained image classifier reject inputs it was never trained for: choose the "
                    "best OOD detector for it without OOD data (calibrate --score auto), with a guaranteed false-"
                    "rejection rate, and ship it as one file (predict) or one exported module (export). Optionally "
                    "learn an input-space watermark that helps some detectors (fit, bench; Wang et al., NeurIPS "
                    "2022). No weights change.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"watermark-ood {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for add_command in (_demo_command, _fit_command, _evaluate_command, _bench_command, _calibrate_command,
                        _predict_command, _export_command):
        add_command(sub)
    for command in sub.choices.values():  # --debug is accepted before or after the command
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                             help="show full tracebacks on errors")
    return parser
