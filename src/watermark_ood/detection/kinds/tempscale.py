"""Temperature scaling: Guo et al., ICML 2017 (MSP at a temperature fitted on ID labels).

Reads the logits. Score (higher = more ID): max_k softmax(z / T)_k with T fitted to the ID labels by likelihood.
"""

from __future__ import annotations

from pytorch_ood import detector as pod

from watermark_ood.core.schema import StateSchema, Value
from watermark_ood.detection.registry import DetectorKind, Reads, register

KIND = DetectorKind("tempscale", Reads.LOGITS, "Guo et al., ICML 2017 (MSP at a temperature fitted on ID labels)", True,
                    StateSchema({"t": ()}, {"_is_fitted": Value("bool")}), lambda h: pod.TemperatureScaling(None),
                    "logits", library="TemperatureScaling")
register(KIND)
