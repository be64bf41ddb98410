"""Moved to :mod:`watermark_ood.models.taps` (the hook), :mod:`watermark_ood.runtime.inference` (logits with
features) and :mod:`watermark_ood.detection.image_scores` (ODIN); this import path works for one release and warns
once."""

from watermark_ood.core.compat import warn_moved
from watermark_ood.models.taps import PenultimateHook, last_linear, split_at_head  # noqa: F401
from watermark_ood.detection.image_scores import odin_scores  # noqa: F401
from watermark_ood.runtime.inference import WatermarkedModel, logits_and_features  # noqa: F401

warn_moved(__name__, "watermark_ood.models.taps, watermark_ood.runtime.inference and "
                     "watermark_ood.detection.image_scores")
