"""Predictive normalized maximum likelihood (pNML): Bibas et al., NeurIPS 2021.

Reads the penultimate features (the input of the last linear layer) and the logits. Score (higher = more ID): -log
sum_k p_k / (p_k + p_k^g (1 - p_k)) with g = h^T (X^T X)^+ h over the ID features X: the regret.
"""

from __future__ import annotations

from pytorch_ood import detector as pod

from watermark_ood.core.schema import StateSchema, Value
from watermark_ood.detection.registry import DetectorKind, Reads, register

KIND = DetectorKind("pnml", Reads.FEATURES, "Bibas et al., NeurIPS 2021", True, StateSchema(
    {"_feature_projector": ("D", "D")}, {"eps": Value("float", 0.0, 1.0, low_open=True),
                                                "_log_num_classes": Value("float-or-null", required=False)},
    optional_tensors={"_log_num_classes": ()}),  # log K, cached by the library after its first score
    lambda h: pod.PNML(None, head=h.flat), library="PNML")
register(KIND)
