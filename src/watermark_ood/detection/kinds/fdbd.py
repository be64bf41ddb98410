"""fDBD (feature distance to decision boundaries): Liu & Qin, ICML 2024 (feature distance to the decision boundaries).

Reads the penultimate features (the input of the last linear layer) and the logits. Score (higher = more ID): mean
over k != y of |(w_y - w_k)^T h + b_y - b_k| / ||w_y - w_k||, divided by ||h - mu|| (mu the ID mean).
"""

from __future__ import annotations

from pytorch_ood import detector as pod

from watermark_ood.core.schema import StateSchema
from watermark_ood.detection.registry import DetectorKind, Reads, register

KIND = DetectorKind("fdbd", Reads.FEATURES, "Liu & Qin, ICML 2024 (feature distance to the decision boundaries)", True,
                    StateSchema({"train_mean": ("D",), "_denom_matrix": ("K", "K")}),
                    lambda h: pod.fDBD(None, head=h.need()), library="fDBD")
register(KIND)
