"""Deep nearest neighbours (KNN): Sun et al., ICML 2022.

Reads the penultimate features (the input of the last linear layer) and the logits. Score (higher = more ID):
-||h/||h|| - b_(k)||, the distance of the L2-normalised features to their k-th nearest normalised ID training
feature (k = 50).
"""

from __future__ import annotations

from typing import Any

import torch
from pytorch_ood import detector as pod

from watermark_ood.core.schema import StateSchema, Value
from watermark_ood.detection import functional as F
from watermark_ood.detection.builders import Head
from watermark_ood.detection.registry import DetectorKind, Reads, register


def build_knn(head: Head) -> Any:
    """k = 50, fewer when fitted on fewer images. The ID bank is kept (L2-normalized) because scikit-learn's search
    neither traces nor saves without pickle: export measures the same distance in torch, loading rebuilds the
    index."""
    k = 50 if head.count is None or head.count > 50 else max(1, head.count - 1)
    return pod.KNN(None, k=k)


def keep_bank(impl: Any, features: torch.Tensor, labels: torch.Tensor) -> None:
    impl.bank = impl._prepare(features[labels >= 0]).contiguous()


KIND = DetectorKind("knn", Reads.FEATURES, "Sun et al., ICML 2022", True, StateSchema(
    {"bank": ("N", "D")}, {"k": Value("int", 1, "N"), "normalize": Value("bool"), "_is_fitted": Value("bool")}),
    build_knn, traced=lambda impl, logits, features: F.knn_kth_distance(features, impl.bank, impl.k),
    after_fit=keep_bank,
    after_load=lambda impl: impl.knn.fit(impl.bank.numpy()), library="KNN")
register(KIND)
