"""The registry of every OOD score by name: what a kind is (:class:`DetectorKind`: what it reads, whether it is
fitted, its paper, its saved state, how pytorch-ood's class is built and called, whether it exports), how one is
registered (:func:`register`, called by the kind's own module in :mod:`watermark_ood.detection.kinds`), and a
name checked once (:class:`DetectorSpec`). Convention everywhere: higher = more ID.

The score objects that use a kind (fit, score, save) are in :mod:`.posthoc`; the paper's protocol scores
(:mod:`.logit_scores`) are a view of the kinds that carry a ``protocol`` function.

    >>> str(DETECTOR_KINDS["knn"].reads), DETECTOR_KINDS["knn"].fitted, DETECTOR_KINDS["odin"].export_refusal[:29]
    ('features', True, 'odin cannot be exported: its ')
    >>> check_name("knn+vim+energy")   # combinations join names with '+'
    >>> check_name("nope")
    Traceback (most recent call last):
    ...
    watermark_ood.core.errors.WatermarkOODError: unknown score 'nope'; known scores: msp, energy, maxlogit, ...
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, Callable, Sequence

import torch

from watermark_ood.core.errors import WatermarkOODError
from watermark_ood.core.schema import StateSchema
from watermark_ood.detection.builders import FlatHead, Head  # noqa: F401 - where they were found before


class Reads(str, Enum):
    """What a kind reads, so a feed knows what to compute for it (a ``str`` too: files and reports show the value)."""

    LOGITS = "logits"
    FEATURES = "features"  # the penultimate features (the input of the last linear layer)
    LAYERS = "layers"  # tapped layers' statistics (by default each stage's spatial mean)
    MAP = "map"  # the logits of the model with one feature map changed
    GRADIENT = "gradient"  # the images: runs the model itself with gradients
    SAMPLING = "sampling"  # the images: runs the model itself with dropout on
    PERTURBED = "perturbed"  # fitted on the penultimate features, scored on perturbed inputs
    COVERAGE = "coverage"  # the images: gradients on tapped layers, to fit and to score (nac)

    __str__ = str.__str__
    __format__ = str.__format__


@dataclass(frozen=True)
class DetectorKind:
    """One detector known by name.

    ``via`` says how the library object from ``build`` is fitted and called: ``"logits"`` (``fit_logits`` /
    ``predict_logits``), ``"features"`` (``fit_features`` / ``predict_features`` on the penultimate vector),
    ``"feature_maps"`` (the same vector as an N x D x 1 x 1 map), ``"structured"`` (``predict_structured(logits,
    features)``: gram, whose bounds are those of the predicted class). Pure logit scores have no object and give
    ``outlier`` (the library's static ``score``) instead. ``traced`` is our torch formula used at export where the
    library's code cannot be traced; ``protocol`` is the higher-is-ID logit function of the paper's tables.
    """

    name: str
    reads: Reads
    paper: str
    fitted: bool = False
    state: StateSchema = StateSchema()  # what its saved state holds (checked when a file is loaded)
    build: Callable[[Head], Any] | None = None
    via: str = "features"
    outlier: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor] | None = None  # (logits, features)
    traced: Callable[[Any, torch.Tensor, torch.Tensor | None], torch.Tensor] | None = None
    protocol: Callable[[torch.Tensor], torch.Tensor] | None = None
    export_refusal: str = ""  # why it cannot be exported; empty when it can
    after_fit: Callable[[Any, torch.Tensor, torch.Tensor], None] | None = None  # keep what saving needs
    after_load: Callable[[Any], None] | None = None  # rebuild what was not saved from what was
    library: str = ""  # the pytorch_ood.detector class it is (or, for our closed forms, equals)
    in_auto: bool = True  # in --score auto's default pool (selection/pools.py; the fourth pre-registered pool test)
    change_map: Callable[[], Callable[[torch.Tensor], torch.Tensor]] | None = None  # reads "map": the change made
    score_images: Callable[..., Any] | None = None  # reads "gradient" / "sampling": scores the images themselves
    reduce_layers: Callable[[int], Callable[[torch.Tensor], torch.Tensor]] | None = None  # reads "layers": what the
    # taps keep of each map, given the number of layers (None: the spatial mean)

    @property
    def exports(self) -> bool:
        return not self.export_refusal

    def describe(self) -> str:
        fitted = ", fitted on ID data" if self.fitted else ""
        return f"{self.name}: reads {self.reads}{fitted}; {'exports' if self.exports else 'no export'} ({self.paper})"


GRADIENT_REFUSAL = ("detectors with input or parameter gradients cannot be exported: neither TorchScript traces "
                    "nor ONNX carry a backward pass; use `watermark-ood predict`, or calibrate another score")
DETECTOR_KINDS: dict[str, DetectorKind] = {}  # filled by the kinds' modules (watermark_ood.detection.kinds)


def register(kind: DetectorKind) -> DetectorKind:
    """Add a kind to the registry (called by its own module); a name is registered once."""
    if kind.name in DETECTOR_KINDS:
        raise ValueError(f"detector kind {kind.name!r} is registered twice")
    if not isinstance(kind.reads, Reads):
        raise TypeError(f"detector kind {kind.name!r}: reads must be a Reads value, not {kind.reads!r}")
    DETECTOR_KINDS[kind.name] = kind
    return kind


def score_names() -> tuple[str, ...]:
    """Every registered name, in the registry's order."""
    return tuple(DETECTOR_KINDS)


_LAYER_READS = (Reads.LAYERS, Reads.MAP, Reads.COVERAGE)  # read or change intermediate layers (--layers)


def layer_scores() -> tuple[str, ...]:
    """The kinds that read or change intermediate layers (``--layers`` is for them)."""
    return tuple(n for n, k in DETECTOR_KINDS.items() if k.reads in _LAYER_READS)


def auto_candidates() -> tuple[str, ...]:
    """The default pool of ``--score auto`` (selection/pools.py)."""
    return tuple(n for n, k in DETECTOR_KINDS.items() if k.in_auto)


_VIEWS = {"SCORE_NAMES": score_names, "LAYER_SCORES": layer_scores, "AUTO_CANDIDATES": auto_candidates}


def __getattr__(name: str) -> Any:
    """``SCORE_NAMES``, ``LAYER_SCORES``, ``AUTO_CANDIDATES``: views computed when asked, since the kinds register
    after this module is loaded (by :mod:`watermark_ood.detection.kinds`, which the package imports first)."""
    if name in _VIEWS:
        return _VIEWS[name]()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# pytorch-ood detector classes not wired, each with why (tests/detection/test_registry.py enumerates the library)
NOT_WIRED = {
    "WeightedEBO": "its class weights come from VOS training (pytorch_ood.loss.VOSRegLoss); a fixed classifier has "
                   "none, and with equal weights it is the energy score",
    "MCM": "needs a CLIP text encoder (zero-shot vision-language models), not a fixed classifier",
}
_OWN_INPUTS = {Reads.GRADIENT: "needs gradients", Reads.COVERAGE: "needs gradients",
               Reads.PERTURBED: "needs input gradients", Reads.SAMPLING: "samples dropout masks"}


@dataclass(frozen=True)
class DetectorSpec:
    """A detector name checked once: one registered kind, or several joined by '+' (their z-scored mean). Made by
    :meth:`parse` where a name comes in (CLI, pipelines, :class:`Detector`, a detector file) and passed along, so no
    other code splits or re-checks the string.

    >>> spec = DetectorSpec.parse("knn+vim+energy")
    >>> spec.parts, spec.is_combination, spec.reads_features, spec.fitted
    (('knn', 'vim', 'energy'), True, True, True)
    >>> DetectorSpec.parse("gram").reads_layers, DetectorSpec.parse("mcd").needs_dropout
    (True, True)
    """

    name: str
    parts: tuple[str, ...]

    @classmethod
    def parse(cls, name: "str | DetectorSpec") -> "DetectorSpec":
        """The spec of a name (a spec passes through); an unknown name or an impossible combination is a user
        error in one line that lists what is known."""
        if isinstance(name, DetectorSpec):
            return name
        parts = tuple(str(name).split("+"))
        unknown = [part for part in parts if part not in DETECTOR_KINDS]
        if unknown or not name:
            raise WatermarkOODError(f"unknown score {unknown[0] if unknown else name!r}; known scores: "
                                    f"{', '.join(score_names())} (combine several with '+', e.g. knn+vim+energy)")
        if len(parts) > 1:
            own = next((p for p in parts if DETECTOR_KINDS[p].reads in _OWN_INPUTS), None)
            if own is not None:
                why = _OWN_INPUTS[DETECTOR_KINDS[own].reads]
                raise WatermarkOODError(f"{own} {why} and cannot be part of a combination")
            layered = next((p for p in parts if DETECTOR_KINDS[p].reads in _LAYER_READS), None)
            if layered is not None:
                raise WatermarkOODError(f"{layered} reads intermediate layers and cannot be part of a combination yet")
        return cls(str(name), parts)

    def __str__(self) -> str:
        return self.name

    @property
    def kinds(self) -> tuple[DetectorKind, ...]:
        return tuple(DETECTOR_KINDS[part] for part in self.parts)

    @property
    def is_combination(self) -> bool:
        return len(self.parts) > 1

    @property
    def kind(self) -> DetectorKind:
        """The one kind of a single detector (a combination has none)."""
        if self.is_combination:
            raise WatermarkOODError(f"{self.name} is a combination of {len(self.parts)} scores, not one kind")
        return DETECTOR_KINDS[self.name]

    @property
    def fitted(self) -> bool:
        """Whether it is fitted on ID data (a combination always is: its z-scores)."""
        return self.is_combination or self.kind.fitted

    @property
    def reads_features(self) -> bool:
        """Whether it (or any part) reads the penultimate features."""
        return any(kind.reads is Reads.FEATURES for kind in self.kinds)

    @property
    def reads_layers(self) -> bool:
        """Whether it reads or changes intermediate layers (then it is never part of a combination)."""
        return any(kind.reads in _LAYER_READS for kind in self.kinds)

    @property
    def needs_dropout(self) -> bool:
        """Whether it samples with dropout on (runs only on models that have dropout)."""
        return not self.is_combination and self.kind.reads is Reads.SAMPLING

    @property
    def export_refusal(self) -> str:
        """Why it cannot be exported, in one line; empty when it can."""
        return next((kind.export_refusal for kind in self.kinds if kind.export_refusal), "")

    def layers_for(self, layers: Sequence[str] | None) -> tuple[str, ...] | None:
        """The layers a leaderboard's ``--layers`` gives it: those that read several layers take them all; the
        feature-map kinds change one map, the one named when one is (else their default, the last map); others
        none.

        >>> DetectorSpec.parse("gram").layers_for(["a", "b"]), DetectorSpec.parse("ash-map").layers_for(["a", "b"])
        (('a', 'b'), None)
        >>> DetectorSpec.parse("ash-map").layers_for(["b"]), DetectorSpec.parse("knn").layers_for(["b"])
        (('b',), None)
        """
        if layers is None or not self.reads_layers:
            return None
        if self.kind.reads is Reads.MAP:
            return tuple(layers) if len(layers) == 1 else None
        return tuple(layers)


# The same questions asked of a name (the spec parses it each time): for callers that hold only a string.
def check_name(name: str) -> None:
    """Unknown names are user errors that list the known ones (combinations join names with '+')."""
    DetectorSpec.parse(name)


def reads_features(name: str) -> bool:
    return DetectorSpec.parse(name).reads_features


def needs_dropout(name: str) -> bool:
    return DetectorSpec.parse(name).needs_dropout


def reads_layers(name: str) -> bool:
    return DetectorSpec.parse(name).reads_layers


def layers_for(name: str, layers: Sequence[str] | None) -> tuple[str, ...] | None:
    return DetectorSpec.parse(name).layers_for(layers)


def export_refusal(name: str) -> str:
    return DetectorSpec.parse(name).export_refusal


def describe_kinds(names: Sequence[str] | None = None) -> list[str]:
    return [DETECTOR_KINDS[n].describe() for n in (score_names() if names is None else names)]
