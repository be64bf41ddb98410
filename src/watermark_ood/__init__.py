"""watermark-ood: learn an input-space watermark that makes a fixed classifier better at OOD detection.

Wang et al., "Watermarking for Out-of-distribution Detection", NeurIPS 2022.
"""

__version__ = "0.1.0"

from .config import PRESETS, FitConfig, Preset, get_preset
from .data import ImageSet, load_npz
from .datasets import load_id_data, load_ood_data
from .detector import Detector, Prediction
from .errors import WatermarkOODError
from .evaluation import Evaluation, evaluate, predict_logits
from .learner import FitResult, WatermarkLearner, fit_watermark
from .metrics import aupr_in, aupr_out, auroc, fpr_at_tpr, ood_metrics
from .models import LoadedModel, load_model
from .preprocessing import CIFAR, IMAGENET, Normalization
from .runtime import ExecutionConfig
from .scores import energy_score, max_logit_score, msp_score
from .selection import select_detector
from .watermark import Watermark

__all__ = [
    "__version__", "PRESETS", "FitConfig", "Preset", "get_preset", "ImageSet", "load_npz", "WatermarkOODError",
    "Evaluation", "evaluate", "predict_logits", "FitResult", "WatermarkLearner", "fit_watermark", "aupr_in",
    "aupr_out", "auroc", "fpr_at_tpr", "ood_metrics", "LoadedModel", "load_model", "CIFAR", "IMAGENET",
    "Normalization", "ExecutionConfig", "energy_score", "max_logit_score", "msp_score", "Watermark",
    "load_id_data", "load_ood_data", "Detector", "Prediction", "select_detector",
]
