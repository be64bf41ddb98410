"""Shared by the analysis scripts that may look at OOD data (never used by the library's selection).

Each OOD set is split into two disjoint halves: one that an analysis may learn from (an oracle)
and one that only measures, so no number is measured on the images it was learned from.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from watermark_ood.data.images import ImageSet, load_npz
from watermark_ood.detection.logit_scores import get_score
from watermark_ood.evaluation.metrics import auroc, fpr_at_tpr
from watermark_ood.runtime.device import ExecutionConfig
from watermark_ood.runtime.inference import predict_logits
from watermark_ood.watermark.file import Watermark


def ood_halves(paths: Sequence[str], id_count: int) -> tuple[list[ImageSet], list[ImageSet]]:
    """(learn, measure) halves of each set; each set first subsampled to 2 x |ID| / 5 images, seed 2."""
    learn, measure = [], []
    for path in paths:
        s = load_npz(path)
        s = s.sample(min(len(s), 2 * (id_count // 5)), 2)
        half = len(s) // 2
        learn.append(s.subset(torch.arange(half)))
        measure.append(s.subset(torch.arange(half, len(s)), s.name))
    return learn, measure


def detection_metrics(model, normalization, id_test: ImageSet, ood_sets: Sequence[ImageSet],
                      w: torch.Tensor | None, score_name: str, execution: ExecutionConfig | None = None) -> dict:
    """Accuracy on ``id_test`` and FPR95 / AUROC of ``score_name`` per OOD set and on average (CPU unless
    ``execution`` names another device)."""
    exe = execution or ExecutionConfig(device="cpu", eval_batch_size=1000)
    score, mark = get_score(score_name), None if w is None else Watermark(w)
    id_logits = predict_logits(model, id_test, normalization, mark, exe)
    s_id = score(id_logits).numpy()
    per = {}
    for s in ood_sets:
        s_out = score(predict_logits(model, s, normalization, mark, exe)).numpy()
        per[s.name] = {"fpr95": fpr_at_tpr(s_id, s_out), "auroc": auroc(s_id, s_out)}
    return {"accuracy": float((id_logits.argmax(1) == id_test.labels).float().mean()),
            "mean_fpr95": float(np.mean([v["fpr95"] for v in per.values()])),
            "mean_auroc": float(np.mean([v["auroc"] for v in per.values()])), "per_set": per}


def describe(m: dict) -> str:
    return (f"FPR95 {100 * m['mean_fpr95']:5.1f} AUROC {100 * m['mean_auroc']:5.1f} acc {100 * m['accuracy']:5.1f}  "
            + " ".join(f"{k[:8]} {100 * v['fpr95']:.1f}" for k, v in m["per_set"].items()))
