"""Issue 28's targets on a real model: the auto-chosen detector's false rejections next to their guaranteed bound,
the shift alarm on ID data and on mixtures with OOD images, and what p-values cost in predict.

1. ``calibrate --score auto`` (no OOD data) on the ID training split; its split-conformal threshold guarantees
   P(reject an ID input) <= k/(n+1).
2. False-rejection rate on the ID *test* split (a real, slightly different draw: the guarantee assumes
   exchangeability, which the shared JPEG copy's test split may not fully meet), and over ``--resplits`` seeded
   re-splits of a hold-out of the ID training split (calibrate on half, measure on the other half), each next
   to its bound.
3. Shift alarm (``--alpha``, beta-binomial and binomial p-values) on batches of ``--batch`` ID test images and on
   mixtures with 1%, 5% and 20% OOD images from each shared OOD set: the share of ``--draws`` seeded batches
   on which it fires.
4. Predict's time with and without p-values (the calibration removed), same images, interleaved repeats.

    python benchmarks/conformal_guarantees.py --model resnet20 \\
        --checkpoint ../shared/models/cifar10_resnet/resnet20-12fca82f.th --id-data ../shared/data/cifar10 \\
        --ood-data ../shared/data/ood/*.npz --out benchmarks/results/conformal/resnet20.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from watermark_ood.data.readers import load_id_data, load_ood_data
from watermark_ood.detection.conformal import conformal_rank, conformal_threshold, shift_test
from watermark_ood.detection.detector import Detector
from watermark_ood.models.registry import load_model
from watermark_ood.selection.auto_score import SelectionSettings, select_detector, selection_splits


def resplit_rates(scores: np.ndarray, tpr: float, resplits: int) -> dict[str, float]:
    n = len(scores) // 2
    rates = []
    for seed in range(resplits):
        order = np.random.default_rng(seed).permutation(len(scores))
        threshold = conformal_threshold(scores[order[:n]], tpr)
        rates.append(float(np.mean(scores[order[n:]] < threshold)))
    k = conformal_rank(n, tpr)
    return {"n": n, "resplits": resplits, "mean": float(np.mean(rates)), "std": float(np.std(rates)),
            "bound": k / (n + 1), "se_of_mean": float(np.std(rates) / np.sqrt(resplits))}


def alarm_rates(detector: Detector, id_scores: np.ndarray, ood: dict[str, np.ndarray], batch: int, draws: int,
                alpha: float) -> dict[str, dict[str, float]]:
    n, tpr = detector.calibration.n, detector.tpr
    rng = np.random.default_rng(0)
    out: dict[str, dict[str, float]] = {}
    for name, share in [("id-test", 0.0)] + [(f"{s}-{int(100 * q)}%", q) for s in ood for q in (0.01, 0.05, 0.2)]:
        fired, fired_binomial = 0, 0
        for _ in range(draws):
            m_ood = int(round(share * batch))
            picked = rng.choice(id_scores, batch - m_ood, replace=False)
            if m_ood:
                picked = np.concatenate([picked, rng.choice(ood[name.rsplit("-", 1)[0]], m_ood, replace=False)])
            test = shift_test(int((picked < detector.threshold).sum()), batch, tpr, n)
            fired += test["p_value"] < alpha
            fired_binomial += test["binomial_p"] < alpha
        out[name] = {"fires": fired / draws, "fires_binomial": fired_binomial / draws}
    return out


def predict_overhead(detector: Detector, images, repeats: int) -> dict[str, float]:
    calibration = detector.calibration
    with_p, without = [], []
    for _ in range(repeats):
        detector.calibration = calibration
        t0 = time.perf_counter()
        detector.predict(images)
        with_p.append(time.perf_counter() - t0)
        detector.calibration = None
        t0 = time.perf_counter()
        detector.predict(images)
        without.append(time.perf_counter() - t0)
    detector.calibration = calibration
    return {"images": len(images), "seconds_with_p_values": float(np.median(with_p)),
            "seconds_without": float(np.median(without)),
            "overhead": float(np.median(with_p) / np.median(without) - 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet20")
    p.add_argument("--checkpoint")
    p.add_argument("--id-data", required=True)
    p.add_argument("--ood-data", nargs="+", required=True)
    p.add_argument("--tpr", type=float, default=0.95)
    p.add_argument("--resplits", type=int, default=200)
    p.add_argument("--batch", type=int, default=1000, help="inputs per alarm batch")
    p.add_argument("--draws", type=int, default=200)
    p.add_argument("--alpha", type=float, default=0.01)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    torch.manual_seed(0)
    train, test = load_id_data(args.id_data)
    model = load_model(args.model, args.checkpoint)
    t0 = time.perf_counter()
    selection = select_detector(model.module, model.normalization, train, None, args.tpr, SelectionSettings(),
                                model_id=model.model_id)
    detector = selection.detector
    choose_seconds = time.perf_counter() - t0
    _, _, _, holdout = selection_splits(train, SelectionSettings())
    holdout_scores = detector.scores(holdout).astype(np.float64)
    test_scores = detector.scores(test).astype(np.float64)
    ood = {Path(spec).stem: detector.scores(load_ood_data(spec, test.image_shape)).astype(np.float64)
           for spec in args.ood_data}
    summary = detector.calibration.summary()
    report = {
        "command": "python benchmarks/conformal_guarantees.py " + " ".join(
            f"--{k.replace('_', '-')} {' '.join(v) if isinstance(v, list) else v}" for k, v in vars(args).items()
            if v is not None),
        "model": model.model_id, "detector": detector.score, "choose_seconds": choose_seconds,
        "calibration": summary,
        "id_test": {"n": len(test_scores), "false_rejection": float(np.mean(test_scores < detector.threshold)),
                    "bound": summary["guaranteed_false_rejection_at_most"]},
        "resplits_of_training_holdout": resplit_rates(holdout_scores, args.tpr, args.resplits),
        "alarm": {"batch": args.batch, "draws": args.draws, "alpha": args.alpha,
                  "rates": alarm_rates(detector, test_scores, ood, args.batch, args.draws, args.alpha)},
        "predict_overhead": predict_overhead(detector, test, 5),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
