"""Controlled experiments (issue: self-tuning): why the paper's presets hurt the shared ResNets.

For one model it measures, at the zero watermark, the size of each term of the objective on real ID batches
and Gaussian surrogates, and then fits short runs that change one thing at a time (step size, outlier weight,
temperature, magnitude budget, noise scale, schedule) and reports test metrics of the matching score.

    python studies/why_presets_fail.py --model resnet20 \
        --checkpoint ../shared/models/cifar10_resnet/resnet20-12fca82f.th --id-data ../shared/data/cifar10 \
        --ood-data ../shared/data/ood/*.npz --steps 40 --out benchmarks/results/why-presets-fail-resnet20.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from watermark_ood import ExecutionConfig, evaluate, get_preset, load_model
from watermark_ood.data.readers import load_id_data, load_ood_data
from watermark_ood.detection.logit_scores import msp_score
from watermark_ood.watermark.learner import WatermarkLearner

VARIANTS = {
    "paper preset": {},
    "alpha / 10": {"alpha": 0.001},
    "beta / 10": {"beta_scale": 0.1},
    "beta / 100": {"beta_scale": 0.01},
    "L-inf budget 0.1 + cosine": {"linf_budget": 0.1, "alpha": 0.0125, "schedule": "cosine"},
    "L-inf budget 0.03 + cosine": {"linf_budget": 0.03, "alpha": 0.004, "schedule": "cosine"},
    "noise scaled to data std (sigma 1)": {"noise_scale": "data", "sigma": 1.0},
}


@torch.no_grad()
def loss_terms(model, norm, train, objective, cfg, n=512):
    """Objective terms at w = 0 on n ID images and n Gaussian surrogates."""
    x = norm(train.images[:n])
    y = train.labels[:n]
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(0)) * cfg.sigma
    z_in, z_out = model(x), model(noise)
    ce = float(torch.nn.functional.cross_entropy(z_in, y))
    out = {"ce_id": ce, "mean_logsumexp_id": float(torch.logsumexp(z_in, 1).mean()),
           "mean_logsumexp_noise": float(torch.logsumexp(z_out, 1).mean()),
           "mean_msp_id": float(msp_score(z_in).mean()), "mean_msp_noise": float(msp_score(z_out).mean())}
    if objective == "msp":
        out["outlier_term"] = cfg.beta * float((torch.logsumexp(z_out, 1) - z_out.mean(1)).mean())
    else:
        out["outlier_term"] = cfg.beta * float(torch.exp(cfg.t_out * z_out).mean() + torch.exp(-cfg.t_in * z_in).mean())
    out["outlier_term_over_ce"] = out["outlier_term"] / max(ce, 1e-9)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet20")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--id-data", required=True)
    p.add_argument("--ood-data", nargs="+", required=True)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--objectives", nargs="+", default=["msp", "energy"])
    p.add_argument("--out", required=True)
    args = p.parse_args()
    exe = ExecutionConfig(device="cpu")
    train, test = load_id_data(args.id_data)
    loaded = load_model(args.model, args.checkpoint, fallback_classes=10)
    model, norm = loaded.module, loaded.normalization
    test = test.sample(2000, 0)
    ood = [load_ood_data(o, test.image_shape).sample(400, i) for i, o in enumerate(args.ood_data)]
    report = {"model": args.model, "steps": args.steps, "command": " ".join(sys.argv), "objectives": {}}
    baseline = None
    for objective in args.objectives:
        base = get_preset("cifar10", objective).config(epochs=1, seed=0)
        entry = {"terms_at_zero": loss_terms(model, norm, train, objective, base), "variants": {}}
        print(objective, json.dumps(entry["terms_at_zero"]), flush=True)
        subset = train.sample(args.steps * base.batch_size, 1)
        for name, change in VARIANTS.items():
            change = dict(change)
            scale = change.pop("beta_scale", 1.0)
            cfg = base.replace(beta=base.beta * scale, **change)
            t = time.perf_counter()
            fit = WatermarkLearner(model, norm, cfg, exe).fit(subset, progress=False)
            ev = evaluate(model, norm, test, ood, fit.watermark, exe, protocol=False, baseline=baseline)
            baseline = ev.baseline
            m = ev.metrics(objective)
            row = {"fpr95": [m["baseline"]["mean"]["fpr95"], m["watermarked"]["mean"]["fpr95"]],
                   "auroc": [m["baseline"]["mean"]["auroc"], m["watermarked"]["mean"]["auroc"]],
                   "accuracy": [ev.accuracy()["baseline"], ev.accuracy()["watermarked"]],
                   "max_abs_w": fit.watermark.stats()["max_abs"], "seconds": time.perf_counter() - t,
                   "hyperparameters": cfg.hyperparameters()}
            entry["variants"][name] = row
            print(f"{objective:6s} {name:36s} FPR95 {100 * row['fpr95'][0]:.1f} -> {100 * row['fpr95'][1]:.1f}  "
                  f"AUROC {100 * row['auroc'][0]:.1f} -> {100 * row['auroc'][1]:.1f}  "
                  f"acc {100 * row['accuracy'][0]:.1f} -> {100 * row['accuracy'][1]:.1f}  max|w| {row['max_abs_w']:.3f}",
                  flush=True)
        report["objectives"][objective] = entry
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
