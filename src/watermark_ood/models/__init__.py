"""The model registry (names, checkpoints, preprocessing), the architectures, and the feature tap on a model's head."""

from watermark_ood.core.compat import forwarding

# the flat module this package replaced: its names resolve here, lazily (compatibility for one release)
__getattr__ = forwarding(__name__, ("watermark_ood.models.registry",))
