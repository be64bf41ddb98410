"""False-discovery control of ``predict --fdr``, measured: over re-splits of the ID test images into a calibration set
and inputs, batches that mix ID inputs with a share of one OOD set, the realised false-discovery proportion (the share
of rejected inputs that were ID) of Benjamini-Hochberg at level q, and its power (the share of OOD inputs rejected),
next to the per-input conformal threshold at tpr 0.95 (``is_ood``), which bounds false rejections, not discoveries.

The detector is fitted once on ID training images (the named-score data policy); every score is computed once, then
each re-split redraws the calibration set and the batches (seeded), so 200 re-splits cost seconds.

    python benchmarks/fdr_control.py --model resnet20 \
        --checkpoint ../shared/models/cifar10_resnet/resnet20-12fca82f.th --id-data ../shared/data/cifar10 \
        --ood-data ../shared/data/ood/*.npz --out benchmarks/results/fdr/resnet20.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from named_scores import add_arguments, named_scores

from watermark_ood.detection.conformal import benjamini_hochberg, conformal_rank, p_values


def resplit(id_scores: np.ndarray, ood_scores: np.ndarray, share: float, q: float, calibration: int, batch: int,
            rng: np.random.Generator, tpr: float = 0.95) -> dict[str, float]:
    """One re-split: calibration set, one batch; FDP and power of Benjamini-Hochberg and of the per-input rule."""
    order = rng.permutation(len(id_scores))
    cal = np.sort(id_scores[order[:calibration]])
    n_ood = int(round(share * batch))
    ids = id_scores[order[calibration:calibration + batch - n_ood]]
    oods = ood_scores[rng.choice(len(ood_scores), n_ood, replace=n_ood > len(ood_scores))]
    p = p_values(cal, np.concatenate([ids, oods]))
    is_id = np.arange(len(p)) < len(ids)
    out = {}
    per_input = p <= conformal_rank(calibration, tpr) / (calibration + 1)
    for name, rejected in (("bh", benjamini_hochberg(p, q)), ("per_input", per_input)):
        out[f"{name}_fdp"] = float((rejected & is_id).sum() / max(int(rejected.sum()), 1))
        out[f"{name}_power"] = float(rejected[~is_id].mean()) if n_ood else float("nan")
    return out


def summarise(runs: list[dict[str, float]]) -> dict[str, float]:
    keys = runs[0].keys()
    table = {k: np.array([r[k] for r in runs]) for k in keys}
    return {**{f"{k}_mean": float(np.nanmean(v)) for k, v in table.items()},
            **{f"{k}_se": float(np.nanstd(v) / np.sqrt(len(v))) for k, v in table.items()}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.add_argument("--resplits", type=int, default=200)
    p.add_argument("--levels", type=float, nargs="+", default=[0.05, 0.1, 0.2])
    p.add_argument("--shares", type=float, nargs="+", default=[0.01, 0.05, 0.2, 0.5])
    p.add_argument("--calibration", type=int, default=2000, help="calibration images per re-split [2000]")
    p.add_argument("--batch", type=int, default=1000, help="inputs per batch [1000]")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    t0 = time.perf_counter()
    scored = named_scores(args)
    id_scores, ood = scored.id_scores, scored.ood_scores
    rows = []
    for name, scores in ood.items():
        for share in args.shares:
            for q in args.levels:
                rng = np.random.default_rng(0)
                runs = [resplit(id_scores, scores, share, q, args.calibration, args.batch, rng)
                        for _ in range(args.resplits)]
                row = {"ood_set": name, "ood_share": share, "level": q, **summarise(runs)}
                row["bh_fdr_within_level"] = bool(row["bh_fdp_mean"] <= q + 2 * row["bh_fdp_se"])
                rows.append(row)
                print(f"{row['ood_set']:22s} share {share:4.2f} q {q:4.2f}: BH FDP {row['bh_fdp_mean']:.3f} "
                      f"power {row['bh_power_mean']:.3f} | per-input FDP {row['per_input_fdp_mean']:.3f} power "
                      f"{row['per_input_power_mean']:.3f}", flush=True)
    out = {"model": scored.model_id, "score": args.score, "resplits": args.resplits, "calibration": args.calibration,
           "batch": args.batch, "id_test_images": scored.id_test_images, "seconds": time.perf_counter() - t0, "rows": rows,
           "all_within_level": all(r["bh_fdr_within_level"] for r in rows)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"every cell's mean FDP within its level (+2 s.e.): {out['all_within_level']}; wrote {args.out}")


if __name__ == "__main__":
    main()
