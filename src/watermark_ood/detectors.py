"""Moved to :mod:`watermark_ood.detection.posthoc`; this import path works for one release and warns once."""

from watermark_ood.core.compat import moved

moved(__name__, "watermark_ood.detection.posthoc")
