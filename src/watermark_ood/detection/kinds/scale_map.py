"""SCALE on the last feature map: Xu et al., ICLR 2024 (SCALE on the last feature map, then the energy).

Reads the logits of the model with one feature map changed (by default its last; --layers names another): it runs
the rest of the model on the changed map. Score (higher = more ID): the energy of the model run on from its last
feature map scaled (not pruned) as SCALE does.
"""

from __future__ import annotations

from watermark_ood.detection.builders import changed_map, energy_of_changed
from watermark_ood.detection.registry import DetectorKind, Reads, register

KIND = DetectorKind("scale-map", Reads.MAP, "Xu et al., ICLR 2024 (SCALE on the last feature map, then the energy)",
                    outlier=energy_of_changed, library="SCALE", change_map=changed_map("SCALE"))
register(KIND)
