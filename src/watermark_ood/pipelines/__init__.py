"""Every CLI command as a library call: evaluate, bench, demo, calibrate, predict, export, fit."""

from watermark_ood.core.compat import forwarding

# the flat module this package replaced: its names resolve here, lazily (compatibility for one release)
__getattr__ = forwarding(__name__, ("watermark_ood.pipelines.evaluate",))
