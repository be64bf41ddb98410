"""results.json (a stable interface), tables and plots."""

from watermark_ood.core.compat import forwarding

# the flat module this package replaced: its names resolve here, lazily (compatibility for one release)
__getattr__ = forwarding(__name__, ("watermark_ood.reporting.results",))
