"""ASH-S on the last feature map: Djurisic et al., ICLR 2023 (ASH-S on the last feature map, as the paper applies it;
the rest of the model runs on the pruned map, then its energy).

Reads the logits of the model with one feature map changed (by default its last; --layers names another): it runs
the rest of the model on the changed map. Score (higher = more ID): the energy of the model run on from its last
feature map, pruned to its largest (1 - p) activations per image and scaled by exp(sum / sum kept) as ASH-S does.
"""

from __future__ import annotations

from watermark_ood.detection.builders import changed_map, energy_of_changed
from watermark_ood.detection.registry import DetectorKind, Reads, register

KIND = DetectorKind("ash-map", Reads.MAP, "Djurisic et al., ICLR 2023 (ASH-S on the last feature map, as the "
                    "paper applies it; the rest of the model runs on the pruned map, then its energy)",
                    outlier=energy_of_changed, library="ASH", change_map=changed_map("ASH"))
register(KIND)
