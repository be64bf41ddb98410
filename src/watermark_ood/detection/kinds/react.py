"""ReAct: Sun et al., NeurIPS 2021 (on the penultimate activations).

Reads the penultimate features (the input of the last linear layer) and the logits. Score (higher = more ID):
logsumexp(W min(h, c) + b): the energy after clipping the features at c, the 90th percentile of ID activations.
"""

from __future__ import annotations

from pytorch_ood import detector as pod

from watermark_ood.core.schema import StateSchema, Value
from watermark_ood.detection.registry import DetectorKind, Reads, register

KIND = DetectorKind("react", Reads.FEATURES, "Sun et al., NeurIPS 2021 (on the penultimate activations)", True,
                    StateSchema({}, {"percentile": Value("float", 0.0, 1.0), "threshold": Value("float"),
                                     "_is_fitted": Value("bool")}),
                    lambda h: pod.ReAct(None, head=h.flat), "feature_maps", library="ReAct")
register(KIND)
