"""Energy score: Liu et al., NeurIPS 2020.

Reads the logits. Score (higher = more ID): log sum_k exp(z_k) (the negative free energy at T = 1).
"""

from __future__ import annotations

from watermark_ood.detection import functional as F
from watermark_ood.detection.builders import static_score
from watermark_ood.detection.registry import DetectorKind, Reads, register

KIND = DetectorKind("energy", Reads.LOGITS, "Liu et al., NeurIPS 2020", outlier=static_score("EnergyBased"),
                    protocol=F.energy_score, library="EnergyBased")
register(KIND)
