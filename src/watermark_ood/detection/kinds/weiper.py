"""WeiPer+KLD: Granz et al., NeurIPS 2024 (WeiPer+KLD: weight perturbations of the class projections;
detection/weiper.py).

Reads the penultimate features (the input of the last linear layer) and the logits. Score (higher = more ID): -(KL
divergences of the ID histogram of r perturbed class projections to this input's, plus lambda-weighted terms for the
plain projections and the MSP): weight perturbations of the last layer's rows.
"""

from __future__ import annotations

from watermark_ood.core.schema import StateSchema, Value
from watermark_ood.detection.registry import DetectorKind, Reads, register
from watermark_ood.detection.weiper import WeiPer

KIND = DetectorKind("weiper", Reads.FEATURES, "Granz et al., NeurIPS 2024 (WeiPer+KLD: weight perturbations "
                    "of the class "
                    "projections; detection/weiper.py)", True, StateSchema(
                        {"perturbed_weight": ("M", "D"), "train_histogram": ("B",), "train_histogram_perturbed": ("B",),
                         "ranges": (4,)},
                        {"repeats": Value("int", 1), "delta": Value("float", 0.0, low_open=True),
                         "bins": Value("int", 2),
                         "smoothing": Value("int", 1), "smoothing_perturbed": Value("int", 1),
                         "eps": Value("float", 0.0, low_open=True), "eps_perturbed": Value("float", 0.0, low_open=True),
                         "lambda_1": Value("float"), "lambda_2": Value("float"), "seed": Value("int", 0)}),
                    lambda h: WeiPer(h.need()), after_load=WeiPer.check_loaded)
register(KIND)
