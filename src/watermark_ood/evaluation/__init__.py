"""Measuring: OOD metrics and the paper's protocol (ID test vs OOD sets, with and without the watermark)."""

from watermark_ood.core.compat import forwarding

# the flat module this package replaced: its names resolve here, lazily (compatibility for one release)
__getattr__ = forwarding(__name__, ("watermark_ood.evaluation.protocol", "watermark_ood.runtime.inference", "watermark_ood.evaluation.metrics"))
