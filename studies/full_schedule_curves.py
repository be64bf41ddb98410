"""The paper's full schedule with test curves every few epochs, as the official code prints them (issue 14).

Fits one watermark (resumable: checkpoints live in --run-dir, outside the checkout) and, at epoch 0 and every
--eval-every epochs, appends one JSON line to --curve: ID test accuracy, per-set FPR95/AUROC of the objective's
matching score on the paper's protocol (full ID test, |ID test|/5 per OOD set), and the watermark's size.
The curves only *report*: nothing is chosen by them. Re-running the same command continues both the fit and
the curve (epochs already in the curve file are not evaluated again).

    python studies/full_schedule_curves.py --model resnet20 \
        --checkpoint ../shared/models/cifar10_resnet/resnet20-12fca82f.th --id-data ../shared/data/cifar10 \
        --ood-data ../shared/data/ood/*.npz --objective hinge --run-dir ~/wood-runs/r20-hinge \
        --curve benchmarks/results/full-schedule-cpu/resnet20-hinge.jsonl
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from ood_halves import detection_metrics

from watermark_ood.data.readers import load_id_data, load_ood_data
from watermark_ood.detection.logit_scores import score_for_objective
from watermark_ood.evaluation.protocol import protocol_subsample
from watermark_ood.models.registry import load_model
from watermark_ood.pipelines.bench import fit_config_for
from watermark_ood.runtime.device import ExecutionConfig, device_name
from watermark_ood.watermark.learner import WatermarkLearner


def parse_overrides(items: list[str]) -> dict:
    """``name=value`` pairs for FitConfig (numbers parsed; ``none`` unsets)."""
    out = {}
    for item in items:
        key, value = item.split("=", 1)
        out[key] = None if value == "none" else (float(value) if value.replace(".", "", 1).replace("-", "", 1)
                                                 .replace("e", "", 1).isdigit() else value)
        if key in ("epochs", "batch_size", "train_limit", "seed") and out[key] is not None:
            out[key] = int(out[key])
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet20")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--id-data", required=True)
    p.add_argument("--ood-data", nargs="+", required=True)
    p.add_argument("--objective", default="hinge")
    p.add_argument("--preset", default="cifar10")
    p.add_argument("--set", nargs="*", default=[], help="FitConfig overrides, name=value")
    p.add_argument("--eval-every", type=int, default=5)
    p.add_argument("--precision", default="fp32")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (on CUDA each step is a CUDA graph)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--run-dir", required=True, help="checkpoint folder (outside the checkout)")
    p.add_argument("--curve", required=True, help="JSON-lines file the curve is appended to")
    args = p.parse_args()

    overrides = parse_overrides(args.set)
    config = fit_config_for(args.preset, args.objective, overrides)
    execution = ExecutionConfig(device=args.device, precision=args.precision, threads=args.threads,
                                eval_batch_size=500)
    execution.apply_threads()
    train, test = load_id_data(args.id_data)
    model = load_model(args.model, args.checkpoint)
    ood = protocol_subsample([load_ood_data(s, test.image_shape) for s in args.ood_data], len(test), 0)
    score = score_for_objective(config.objective)
    curve = Path(args.curve)
    curve.parent.mkdir(parents=True, exist_ok=True)
    done = {json.loads(line)["epoch"] for line in curve.read_text().splitlines() if line.strip()} \
        if curve.is_file() else set()
    started = time.perf_counter()

    def record(epoch: int, w: torch.Tensor | None, extra: dict) -> None:
        if epoch in done:
            return
        metrics = detection_metrics(model.module, model.normalization, test, ood, w, score, execution)
        line = {"epoch": epoch, "score": score, **metrics, **extra,
                "max_abs_w": 0.0 if w is None else float(w.abs().max()),
                "mean_abs_w": 0.0 if w is None else float(w.abs().mean()),
                "wall_seconds_this_process": time.perf_counter() - started}
        with curve.open("a") as f:
            f.write(json.dumps(line) + "\n")
        done.add(epoch)
        print(f"epoch {epoch}: acc {100 * metrics['accuracy']:.2f} mean FPR95 {100 * metrics['mean_fpr95']:.1f} "
              + " ".join(f"{k} {100 * v['fpr95']:.1f}" for k, v in metrics["per_set"].items()), flush=True)

    record(0, None, {"config": config.hyperparameters(), "model": args.model, "device_name": device_name(
        execution.torch_device()), "precision": args.precision, "threads": torch.get_num_threads()})

    learner = WatermarkLearner(model.module, model.normalization, config, execution, model.model_id)

    def on_epoch(rec, w) -> None:
        print(json.dumps(rec.to_dict()), flush=True)
        if rec.epoch % args.eval_every == 0 or rec.epoch == config.epochs:
            record(rec.epoch, w, {"loss": rec.loss, "alpha": rec.alpha, "epoch_seconds": rec.seconds,
                                  "config": learner.config.hyperparameters()})

    result = learner.fit(train, callback=on_epoch, progress=False, checkpoint_dir=args.run_dir)
    result.watermark.save(Path(args.run_dir) / "watermark.safetensors")
    print(f"done: {result.fit_seconds:.0f} s this process, {result.images_per_second:.0f} img/s", flush=True)


if __name__ == "__main__":
    main()
