"""Upper bound for the surrogate question (issue: self-tuning): train the watermark with *real* OOD images as outliers.

The library's learner, unchanged except that each batch's outliers are drawn from one half of
the real OOD test sets instead of Gaussian noise; metrics come from the other half. This is an
oracle for analysis only (it reads OOD test data) and is never used by ``--preset auto``. If even
real outliers give no watermark that lowers FPR95 without costing accuracy, the surrogates are
not what holds the method back on this model.

    python studies/oracle_surrogate.py --model resnet20 --checkpoint ../shared/models/cifar10_resnet/resnet20-12fca82f.th \
        --id-data ../shared/data/cifar10 --ood-data ../shared/data/ood/*.npz --out benchmarks/results/oracle-resnet20.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from ood_halves import describe, detection_metrics, ood_halves  # a script beside this one (its folder is on sys.path)

from watermark_ood.data.readers import load_id_data
from watermark_ood.detection.logit_scores import score_for_objective
from watermark_ood.models.registry import load_model
from watermark_ood.runtime.device import ExecutionConfig
from watermark_ood.watermark.config import get_preset
from watermark_ood.watermark.learner import WatermarkLearner

VARIANTS = {
    "preset": {},
    "linf-0.03-cosine": dict(linf_budget=0.03, schedule="cosine", alpha=0.03 / 8),
    "linf-0.1-cosine": dict(linf_budget=0.1, schedule="cosine", alpha=0.1 / 8),
    "linf-0.3-cosine": dict(linf_budget=0.3, schedule="cosine", alpha=0.3 / 8),
    # Balance: the preset's outlier term is 100-1000x the ID cross-entropy on these models (see README).
    "linf-0.1-cosine-beta/100": dict(linf_budget=0.1, schedule="cosine", alpha=0.1 / 8, beta_scale=0.01),
    "linf-0.3-cosine-beta/100": dict(linf_budget=0.3, schedule="cosine", alpha=0.3 / 8, beta_scale=0.01),
}


class OracleLearner(WatermarkLearner):
    """Outliers are real OOD images (normalized, randomly chosen per step) instead of noise."""

    pool: torch.Tensor

    def batch(self, pixels, y, n, rows, rng, device):
        x, y, _ = super().batch(pixels, y, n, rows, rng, device)
        pick = torch.randint(0, len(self.pool), (len(y),), generator=rng, device=device)
        return x, y, self.normalization(self.pool[pick].to(device))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--id-data", required=True)
    parser.add_argument("--ood-data", nargs="+", required=True)
    parser.add_argument("--objectives", nargs="+", default=["energy", "msp"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train-limit", type=int, default=10000)
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    t0 = time.perf_counter()

    loaded = load_model(args.model, args.checkpoint, fallback_classes=10)
    model, norm = loaded.module, loaded.normalization
    train, test = load_id_data(args.id_data)
    id_test = test.sample(4000, 1)
    learn, held = ood_halves(args.ood_data, len(id_test))
    pool_images = torch.cat([s.images for s in learn])
    exe = ExecutionConfig(device="cpu", precision=args.precision)

    def measure(w: torch.Tensor | None, score_name: str) -> dict:
        return detection_metrics(model, norm, id_test, held, w, score_name)

    report = {"command": " ".join(sys.argv), "model": args.model, "results": {}}
    for objective in args.objectives:
        score_name = score_for_objective(objective)
        rows = {"zero": measure(None, score_name)}
        z = rows["zero"]
        print(f"{args.model} {objective}: zero FPR95 {100 * z['mean_fpr95']:.1f} AUROC {100 * z['mean_auroc']:.1f} "
              f"acc {100 * z['accuracy']:.1f}", flush=True)
        for name in args.variants:
            cfg = get_preset("cifar10", objective).config(epochs=args.epochs, train_limit=args.train_limit, seed=0)
            changes = dict(VARIANTS[name])
            cfg = cfg.replace(beta=cfg.beta * changes.pop("beta_scale", 1.0), **changes)
            learner = OracleLearner(model, norm, cfg, exe)
            learner.pool = pool_images
            fit = learner.fit(train, progress=False)
            m = measure(fit.watermark.tensor, score_name)
            rows[name] = {**m, "fit_seconds": fit.fit_seconds, "max_abs_w": float(fit.watermark.tensor.abs().max())}
            print(f"  oracle {name:18s} {describe(m)}", flush=True)
        report["results"][objective] = rows
    report["seconds"] = time.perf_counter() - t0
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out} ({report['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
