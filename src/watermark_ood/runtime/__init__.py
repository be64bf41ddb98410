"""Where and how models run: device and precision, the one inference path (sharded under torchrun), the stop request."""

from watermark_ood.core.compat import forwarding

# the flat module this package replaced: its names resolve here, lazily (compatibility for one release)
__getattr__ = forwarding(__name__, ("watermark_ood.runtime.device", "watermark_ood.core.randomness"))
