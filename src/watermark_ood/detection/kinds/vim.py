"""Virtual-logit matching (ViM): Wang et al., CVPR 2022.

Reads the penultimate features (the input of the last linear layer) and the logits. Score (higher = more ID):
logsumexp(z) - alpha ||P_res (h - u)||: the energy minus the norm of the features' residual outside the d principal
directions of the ID features (around u = -W^+ b), scaled by alpha to the ID logits.
"""

from __future__ import annotations

from typing import Any

from pytorch_ood import detector as pod

from watermark_ood.core.schema import StateSchema, Value
from watermark_ood.detection.builders import Head
from watermark_ood.detection.registry import DetectorKind, Reads, register


def build_vim(head: Head) -> Any:
    d = 64 if head.dim is None or head.dim > 128 else max(1, head.dim // 2)
    return pod.ViM(None, d=d, w=head.weight, b=head.bias)


KIND = DetectorKind("vim", Reads.FEATURES, "Wang et al., CVPR 2022", True, StateSchema(
    {"w": ("K", "D"), "b": ("K",), "u": ("D",), "principal_subspace": ("D", "D-d")},  # the residual space
    {"d": Value("int", 1, "D"), "alpha": Value("float", 0.0, low_open=True)}), build_vim, library="ViM")
register(KIND)
