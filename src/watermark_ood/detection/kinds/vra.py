"""VRA (variational rectified activation): Xu et al., NeurIPS 2023 (variational rectified activation, on the pooled
penultimate activations).

Reads the penultimate features (the input of the last linear layer) and the logits. Score (higher = more ID):
logsumexp(W v(h) + b), v zeroing activations below a lower ID percentile and clipping those above an upper one.
"""

from __future__ import annotations

from pytorch_ood import detector as pod

from watermark_ood.core.schema import StateSchema, Value
from watermark_ood.detection.registry import DetectorKind, Reads, register

KIND = DetectorKind("vra", Reads.FEATURES, "Xu et al., NeurIPS 2023 (variational rectified activation, on the pooled "
                    "penultimate activations)", True, StateSchema(
                        {"_lower_threshold": ("D", 1, 1), "_upper_threshold": ("D", 1, 1)},
                        {"lower_percentile": Value("float", 0.0, 1.0), "upper_percentile": Value("float", 0.0, 1.0)}),
                    lambda h: pod.VRA(None, head=h.flat), "feature_maps", library="VRA")
register(KIND)
