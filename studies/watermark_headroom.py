"""How much can one additive watermark help at all, and which surrogate points the right way? (issue: self-tuning)

First-order analysis, no training: for a score s (energy or MSP), the watermark that
raises s on ID inputs more than on outliers is, to first order, w = eps * sign(g_ID - g_OUT)
with g = the mean input gradient of s over a set. This script builds that one-step
watermark from different outlier sources and measures the *test* FPR95 / AUROC / accuracy:

- surrogates usable without OOD data: the paper's Gaussian noise (sigma 0.4 and 1.5,
  normalized units), mosaics of ID patches, patch-shuffled, rotated and low-frequency-noise
  images (the validation kinds), and "ID only" (g_OUT = 0);
- an **oracle** built from real OOD images (for analysis only, never for selection): the
  gradient comes from one half of each OOD test set and the metrics from the other half.

If even the oracle direction does not lower FPR95, no watermark hyperparameter can.

    python studies/watermark_headroom.py --model resnet20 --checkpoint ../shared/models/cifar10_resnet/resnet20-12fca82f.th \
        --id-data ../shared/data/cifar10 --ood-data ../shared/data/ood/*.npz --out benchmarks/results/headroom-resnet20.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from ood_halves import describe, detection_metrics, ood_halves  # a script beside this one (its folder is on sys.path)

from watermark_ood.core.randomness import generator
from watermark_ood.data.readers import load_id_data
from watermark_ood.data.synthetic import mosaic, synthesize_outliers
from watermark_ood.detection.logit_scores import get_score
from watermark_ood.models.registry import load_model


def mean_gradient(model, normalization, inputs: torch.Tensor, score, batch: int = 250) -> torch.Tensor:
    """Mean over ``inputs`` (already normalized) of the gradient of the score w.r.t. the input."""
    total = torch.zeros(inputs.shape[1:])
    for start in range(0, len(inputs), batch):
        x = inputs[start:start + batch].clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(score(model(x)).sum(), x)
        total += grad.sum(0)
    return total / len(inputs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--id-data", required=True)
    parser.add_argument("--ood-data", nargs="+", required=True)
    parser.add_argument("--images", type=int, default=2000, help="ID train images (and surrogates) per gradient")
    parser.add_argument("--test-images", type=int, default=4000, help="ID test images for the metrics")
    parser.add_argument("--eps", type=float, nargs="+", default=[0.01, 0.03, 0.1, 0.3])
    parser.add_argument("--scores", nargs="+", default=["energy", "msp"])
    parser.add_argument("--direction", choices=["sign", "l2"], default="sign",
                        help="sign: eps * sign(d) (L-inf steepest ascent); l2: d scaled to the L2 norm of eps * sign(d)")
    parser.add_argument("--sources", nargs="+", help="only these outlier sources")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    t0 = time.perf_counter()

    loaded = load_model(args.model, args.checkpoint, fallback_classes=10)
    model, norm = loaded.module.eval(), loaded.normalization
    for p in model.parameters():
        p.requires_grad_(False)
    train, test = load_id_data(args.id_data)
    id_train = train.sample(args.images, 0)
    id_test = test.sample(args.test_images, 1)
    x_id = norm(id_train.images)
    rng = generator(torch.device("cpu"), 0, 7)
    sources = {
        "gaussian-0.4": torch.randn(x_id.shape, generator=rng) * 0.4,
        "gaussian-1.5": torch.randn(x_id.shape, generator=rng) * 1.5,
        "mosaic": mosaic(x_id, rng),
        "validation-kinds": norm(synthesize_outliers(train.sample(args.images, 5), 0).images),
        "id-only": None,
    }
    ood_grad, ood_eval = ood_halves(args.ood_data, len(id_test))
    sources["oracle-real-ood"] = norm(torch.cat([s.images for s in ood_grad]))

    def measure(w: torch.Tensor, score_name: str) -> dict:
        return detection_metrics(model, norm, id_test, ood_eval, w, score_name)

    report = {"command": " ".join(sys.argv), "model": args.model, "direction": args.direction, "results": {}}
    for score_name in args.scores:
        score = get_score(score_name)
        g_id = mean_gradient(model, norm, x_id, score)
        zero = measure(torch.zeros((1, *x_id.shape[1:])), score_name)
        rows = {"zero": zero}
        print(f"{args.model} {score_name}: zero watermark FPR95 {100 * zero['mean_fpr95']:.1f} "
              f"AUROC {100 * zero['mean_auroc']:.1f} acc {100 * zero['accuracy']:.1f}", flush=True)
        for name, x_out in sources.items():
            if args.sources and name not in args.sources:
                continue
            direction = g_id if x_out is None else g_id - mean_gradient(model, norm, x_out, score)
            cos = float(torch.nn.functional.cosine_similarity(direction.flatten(), g_id.flatten(), dim=0))
            for eps in args.eps:
                w = eps * torch.sign(direction)
                if args.direction == "l2":  # same L2 norm as the sign step, spent along the gradient itself
                    w = direction * (w.norm() / direction.norm().clamp_min(1e-12))
                w = w.unsqueeze(0)
                m = measure(w, score_name)
                rows[f"{name}@{eps}"] = {**m, "cosine_with_id_gradient": cos}
                print(f"  {name:18s} eps {eps:<5} {describe(m)}", flush=True)
        report["results"][score_name] = rows
    report["seconds"] = time.perf_counter() - t0
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out} ({report['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
