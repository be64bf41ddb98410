"""The watermark: its fit configuration and presets, objectives, the learner, its checkpoint and its file."""

from watermark_ood.core.compat import forwarding

# the flat module this package replaced: its names resolve here, lazily (compatibility for one release)
__getattr__ = forwarding(__name__, ("watermark_ood.watermark.file",))
