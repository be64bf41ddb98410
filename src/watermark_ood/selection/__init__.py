"""Choosing without OOD data: ID-only validation with synthetic outliers, --score auto and --preset auto."""

from watermark_ood.core.compat import forwarding

# the flat module this package replaced: its names resolve here, lazily (compatibility for one release)
__getattr__ = forwarding(__name__, ("watermark_ood.selection.auto_score",))
