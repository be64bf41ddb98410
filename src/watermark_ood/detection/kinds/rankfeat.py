"""RankFeat: Song et al., NeurIPS 2022 (the last feature map without its rank-1 part, then the energy).

Reads the logits of the model with one feature map changed (by default its last; --layers names another): it runs
the rest of the model on the changed map. Score (higher = more ID): the energy of the model run on from its last
feature map minus its rank-1 part (the largest singular value's).
"""

from __future__ import annotations

from watermark_ood.detection.builders import changed_map, energy_of_changed
from watermark_ood.detection.registry import DetectorKind, Reads, register

RANKFEAT_REFUSAL = "rankfeat cannot be exported: ONNX has no operator for its SVD; use `watermark-ood predict`"

KIND = DetectorKind("rankfeat", Reads.MAP, "Song et al., NeurIPS 2022 (the last feature map without its rank-1 "
                    "part, then the energy)", outlier=energy_of_changed, library="RankFeat",
                    change_map=changed_map("RankFeat"), export_refusal=RANKFEAT_REFUSAL)
register(KIND)
