"""watermark-ood: learn an input-space watermark that makes a fixed classifier better at OOD detection.

Wang et al., "Watermarking for Out-of-distribution Detection", NeurIPS 2022.
"""

from watermark_ood.core.errors import WatermarkOODError
from watermark_ood.core.version import __version__
from watermark_ood.data.images import ImageSet, load_npz
from watermark_ood.data.preprocessing import CIFAR, IMAGENET, Normalization
from watermark_ood.data.readers import load_id_data, load_ood_data
from watermark_ood.detection.detector import Detector, Prediction
from watermark_ood.detection.logit_scores import energy_score, max_logit_score, msp_score
from watermark_ood.evaluation.metrics import aupr_in, aupr_out, auroc, fpr_at_tpr, ood_metrics
from watermark_ood.evaluation.protocol import Evaluation, evaluate
from watermark_ood.models.registry import LoadedModel, load_model
from watermark_ood.runtime.device import ExecutionConfig
from watermark_ood.runtime.inference import predict_logits
from watermark_ood.selection.auto_score import select_detector
from watermark_ood.watermark.config import PRESETS, FitConfig, Preset, get_preset
from watermark_ood.watermark.file import Watermark
from watermark_ood.watermark.learner import FitResult, WatermarkLearner, fit_watermark

__all__ = [
    "__version__", "PRESETS", "FitConfig", "Preset", "get_preset", "ImageSet", "load_npz", "WatermarkOODError",
    "Evaluation", "evaluate", "predict_logits", "FitResult", "WatermarkLearner", "fit_watermark", "aupr_in",
    "aupr_out", "auroc", "fpr_at_tpr", "ood_metrics", "LoadedModel", "load_model", "CIFAR", "IMAGENET",
    "Normalization", "ExecutionConfig", "energy_score", "max_logit_score", "msp_score", "Watermark",
    "load_id_data", "load_ood_data", "Detector", "Prediction", "select_detector",
]
