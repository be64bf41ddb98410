"""Whether a change of the code keeps what ``--score auto`` chooses and what every candidate scores: run it once
per checkout (``PYTHONPATH=<checkout>/src``) with the same seed, then compare the two records.

``record`` ranks the default pool on a shared model (``select_detector``, seed 0) and writes the chosen detector,
every ranking row's FPR95 and AUROC on the synthetic outliers, and the chosen detector's scores of a fixed sample of
ID test and OOD images. ``compare`` reads two records and says whether the choices are identical, and how far apart
the ranking figures and the scores are (bit for bit where the computation did not change; within 1e-6 relative
where batching changed the float order).

    PYTHONPATH=/tmp/before/src python benchmarks/same_choice.py record --model resnet20 \
        --checkpoint ../shared/models/cifar10_resnet/resnet20-12fca82f.th --id-data ../shared/data/cifar10 \
        --ood-data ../shared/data/ood/*.npz --out before.json
    python benchmarks/same_choice.py record ... --out after.json
    python benchmarks/same_choice.py compare before.json after.json --out benchmarks/results/....json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

import numpy as np
import torch


def record(args: argparse.Namespace) -> None:
    import watermark_ood
    from watermark_ood.data.images import ImageSet
    from watermark_ood.data.readers import load_id_data, load_ood_data
    from watermark_ood.models.registry import load_model
    from watermark_ood.runtime.device import ExecutionConfig
    from watermark_ood.selection.auto_score import select_detector

    torch.manual_seed(0)
    train, test = load_id_data(args.id_data)
    model = load_model(args.model, args.checkpoint)
    probe = [test.sample(args.images, 0)] + [load_ood_data(s, test.image_shape).sample(args.images // 2, 0)
                                             for s in args.ood_data]
    images = ImageSet(torch.cat([p.images for p in probe]), torch.full((sum(map(len, probe)),), -1), "probe")
    t0 = time.perf_counter()
    selection = select_detector(model.module, model.normalization, train, execution=ExecutionConfig(device="cpu"),
                                model_id=model.model_id, log=None)
    seconds = time.perf_counter() - t0
    scores = selection.detector.scores(images)
    rows = {f"{r['score']} ({r['watermark']})": {"ok": r["ok"], "fpr95": r.get("ranking_fpr95"),
                                                  "auroc": r.get("ranking_auroc")} for r in selection.ranking}
    source = Path(watermark_ood.__file__).resolve().parents[2]
    commit = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    Path(args.out).write_text(json.dumps({
        "code": str(source), "commit": commit.strip(), "model": model.model_id, "seconds": seconds,
        "chosen": selection.detector.score, "threshold": selection.detector.threshold, "ranking": rows,
        "probe_images": len(images), "scores": [float(s) for s in scores]}, indent=1))
    print(f"{commit.strip()[:8]}: chose {selection.detector.score} in {seconds:.0f}s")


def relative(a: np.ndarray, b: np.ndarray) -> float:
    scale = np.maximum(np.abs(b), 1e-30)
    return float(np.max(np.where(a == b, 0.0, np.abs(a - b) / scale))) if len(a) else 0.0


def compare(args: argparse.Namespace) -> None:
    before, after = (json.loads(Path(p).read_text()) for p in (args.before, args.after))
    names = sorted(set(before["ranking"]) | set(after["ranking"]))
    rows = {}
    for name in names:
        b, a = before["ranking"].get(name), after["ranking"].get(name)
        same = b == a
        rows[name] = {"identical": same, **({} if same else {"before": b, "after": a})}
    scores_b, scores_a = np.array(before["scores"]), np.array(after["scores"])
    out = {"before": {k: before[k] for k in ("commit", "chosen", "threshold", "seconds")},
           "after": {k: after[k] for k in ("commit", "chosen", "threshold", "seconds")},
           "same_choice": before["chosen"] == after["chosen"],
           "ranking_rows": len(names), "ranking_rows_identical": sum(r["identical"] for r in rows.values()),
           "ranking_differences": {k: v for k, v in rows.items() if not v["identical"]},
           "scores_bit_identical": bool(np.array_equal(scores_b, scores_a)),
           "scores_max_relative_difference": relative(scores_a, scores_b),
           "threshold_identical": before["threshold"] == after["threshold"]}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(json.dumps({k: v for k, v in out.items() if k != "ranking_differences"}, indent=1))
    for name, row in out["ranking_differences"].items():
        print(f"differs: {name}: {row['before']} -> {row['after']}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("record")
    r.add_argument("--model", required=True)
    r.add_argument("--checkpoint", required=True)
    r.add_argument("--id-data", required=True)
    r.add_argument("--ood-data", nargs="+", required=True)
    r.add_argument("--images", type=int, default=1000, help="ID test images scored (each OOD set half) [1000]")
    r.add_argument("--out", required=True)
    c = sub.add_parser("compare")
    c.add_argument("before")
    c.add_argument("after")
    c.add_argument("--out", required=True)
    args = p.parse_args()
    record(args) if args.command == "record" else compare(args)


if __name__ == "__main__":
    main()
