"""Image sets and their readers (npz, CIFAR batches, idx, image folders, streamed), preprocessing, and every synthetic image set."""

from watermark_ood.core.compat import forwarding

# the flat module this package replaced: its names resolve here, lazily (compatibility for one release)
__getattr__ = forwarding(__name__, ("watermark_ood.data.images", "watermark_ood.data.synthetic"))
