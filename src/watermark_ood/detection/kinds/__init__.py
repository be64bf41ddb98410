"""Every detector kind, one module each, registered where it is defined (as torchvision's models are): importing
this package registers them all, in the order below, which is the registry's order (tables, the candidate pools,
ties of the ranking). A new kind is one module here plus its line below; its module says what it reads, its paper
and its formula, and calls :func:`~watermark_ood.detection.registry.register`.
"""

# the order of these imports is the registry's order
# isort: off
from watermark_ood.detection.kinds import msp  # noqa: F401
from watermark_ood.detection.kinds import energy  # noqa: F401
from watermark_ood.detection.kinds import maxlogit  # noqa: F401
from watermark_ood.detection.kinds import entropy  # noqa: F401
from watermark_ood.detection.kinds import gen  # noqa: F401
from watermark_ood.detection.kinds import klmatching  # noqa: F401
from watermark_ood.detection.kinds import openmax  # noqa: F401
from watermark_ood.detection.kinds import odin  # noqa: F401
from watermark_ood.detection.kinds import mahalanobis  # noqa: F401
from watermark_ood.detection.kinds import rmd  # noqa: F401
from watermark_ood.detection.kinds import knn  # noqa: F401
from watermark_ood.detection.kinds import vim  # noqa: F401
from watermark_ood.detection.kinds import she  # noqa: F401
from watermark_ood.detection.kinds import react  # noqa: F401
from watermark_ood.detection.kinds import ash  # noqa: F401
from watermark_ood.detection.kinds import dice  # noqa: F401
from watermark_ood.detection.kinds import pnml  # noqa: F401
from watermark_ood.detection.kinds import tempscale  # noqa: F401
from watermark_ood.detection.kinds import gradnorm  # noqa: F401
from watermark_ood.detection.kinds import fdbd  # noqa: F401
from watermark_ood.detection.kinds import nci  # noqa: F401
from watermark_ood.detection.kinds import nnguide  # noqa: F401
from watermark_ood.detection.kinds import gmm  # noqa: F401
from watermark_ood.detection.kinds import scale  # noqa: F401
from watermark_ood.detection.kinds import lts  # noqa: F401
from watermark_ood.detection.kinds import vra  # noqa: F401
from watermark_ood.detection.kinds import weiper  # noqa: F401
from watermark_ood.detection.kinds import multimahalanobis  # noqa: F401
from watermark_ood.detection.kinds import gram  # noqa: F401
from watermark_ood.detection.kinds import combood  # noqa: F401
from watermark_ood.detection.kinds import nac  # noqa: F401
from watermark_ood.detection.kinds import graduncertainty  # noqa: F401
from watermark_ood.detection.kinds import gradnorm_all  # noqa: F401
from watermark_ood.detection.kinds import mahalanobis_odin  # noqa: F401
from watermark_ood.detection.kinds import mcd  # noqa: F401
from watermark_ood.detection.kinds import ash_map  # noqa: F401
from watermark_ood.detection.kinds import scale_map  # noqa: F401
from watermark_ood.detection.kinds import rankfeat  # noqa: F401
from watermark_ood.detection.kinds import mahalanobis_pp  # noqa: F401
from watermark_ood.detection.kinds import neco  # noqa: F401
# isort: on
