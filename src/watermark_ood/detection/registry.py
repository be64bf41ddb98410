"""The one registry of every OOD score by name: what it reads, whether it is fitted, its paper, its saved state,
how pytorch-ood's class is built and called, and whether it exports. Convention everywhere: higher = more ID.

A detector is one :class:`DetectorKind` entry plus, where needed, its functions in :mod:`.functional`; nothing
else keys on names. The score objects that use an entry (fit, score, save) are in :mod:`.posthoc`; the paper's
protocol scores (:mod:`.logit_scores`) are a view of the entries that carry a ``protocol`` function.

    >>> DETECTOR_KINDS["knn"].reads, DETECTOR_KINDS["knn"].fitted, DETECTOR_KINDS["odin"].export_refusal[:29]
    ('features', True, 'odin cannot be exported: its ')
    >>> check_name("knn+vim+energy")   # combinations join names with '+'
    >>> check_name("nope")
    Traceback (most recent call last):
    ...
    watermark_ood.core.errors.WatermarkOODError: unknown score 'nope'; known scores: msp, energy, maxlogit, ...
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from pytorch_ood import detector as pod

from watermark_ood.core.errors import WatermarkOODError
from watermark_ood.core.schema import StateSchema, Value
from watermark_ood.detection import functional as F
from watermark_ood.detection.builders import (FlatHead, Head, build_knn, build_vim, changed_map,  # noqa: F401
                                              energy_of_changed, expose_gaussian, keep_bank, pattern_for_every_output,
                                              restore_gaussian, static_score)
from watermark_ood.detection.combood import CombOOD, combood_reducer
from watermark_ood.detection.image_gradients import GRADNORM_ALL, UNCERTAINTY
from watermark_ood.detection.image_scores import mcd_scores, odin_scores, parameter_gradient_scores
from watermark_ood.detection.layer_gram import LayerGram, gram_reducer
from watermark_ood.detection.layer_mahalanobis import LayerMahalanobis
from watermark_ood.detection.nac import PackedNAC
from watermark_ood.detection.openmax import PackedOpenMax
from watermark_ood.detection.weiper import WeiPer


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
    reads: str  # "logits" | "features" | "layers" (tapped layers' spatial means) | "map" | "gradient" | "sampling"
    #             | "perturbed" (fitted on features, scored on perturbed inputs) | "coverage" (nac: runs the model)
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
    in_auto: bool = True  # in --score auto's default pool (selection/pools.py; issue 26's fourth pool test)
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


_GAUSSIAN = {"mu": ("C", "D"), "cov": ("D", "D"), "precision": ("D", "D")}  # ID class means, shared covariance
_ODIN_REFUSAL = ("odin cannot be exported: its input perturbation needs a gradient pass at inference, which neither "
                 "TorchScript traces nor ONNX carry; use `watermark-ood predict`, or calibrate another score (see "
                 "`calibrate --score auto`)")
_OPENMAX_REFUSAL = ("openmax cannot be exported yet: its Weibull CDF is scipy code (numpy), which neither "
                    "TorchScript nor ONNX trace; use `watermark-ood predict`, or calibrate another score")
_GRADIENT_REFUSAL = ("detectors with input or parameter gradients cannot be exported: neither TorchScript traces "
                     "nor ONNX carry a backward pass; use `watermark-ood predict`, or calibrate another score")


_MCD_REFUSAL = ("mcd cannot be exported: its 30 passes with random dropout masks are not one traced function; use "
                "`watermark-ood predict`, or calibrate another score")
_RANKFEAT_REFUSAL = "rankfeat cannot be exported: ONNX has no operator for its SVD; use `watermark-ood predict`"
DETECTOR_KINDS: dict[str, DetectorKind] = {k.name: k for k in (
    DetectorKind("msp", "logits", "Hendrycks & Gimpel, ICLR 2017", outlier=static_score("MaxSoftmax"),
                 protocol=F.msp_score, library="MaxSoftmax"),
    DetectorKind("energy", "logits", "Liu et al., NeurIPS 2020", outlier=static_score("EnergyBased"),
                 protocol=F.energy_score, library="EnergyBased"),
    DetectorKind("maxlogit", "logits", "Hendrycks et al., ICML 2022", outlier=static_score("MaxLogit"),
                 protocol=F.max_logit_score, library="MaxLogit"),
    DetectorKind("entropy", "logits", "Chan et al., ICCV 2021 (softmax entropy)", outlier=static_score("Entropy"),
                 library="Entropy"),
    DetectorKind("gen", "logits", "Liu et al., CVPR 2023", outlier=static_score("GEN"),
                 traced=lambda impl, logits, features: F.gen_outlier(logits), library="GEN"),
    DetectorKind("klmatching", "logits", "Hendrycks et al., ICML 2022", True,
                 StateSchema(per_class_tensor=("dists", ("K",))), lambda h: pod.KLMatching(None), "logits",
                 library="KLMatching"),
    DetectorKind("openmax", "logits", "Bendale & Boult, CVPR 2016 (OpenMax: Weibull-revised logits, the unknown "
                 "class's probability; detection/openmax.py)", True,
                 StateSchema({"centers": ("C", "K"), "weibull": ("C", 3)},
                             {"tailsize": Value("int", 1), "alpha": Value("int", 1)}),
                 lambda h: PackedOpenMax(), "logits", after_load=PackedOpenMax.rebuild, export_refusal=_OPENMAX_REFUSAL,
                 library="OpenMax"),
    DetectorKind("odin", "gradient", "Liang et al., ICLR 2018", export_refusal=_ODIN_REFUSAL, library="ODIN",
                 score_images=odin_scores),
    DetectorKind("mahalanobis", "features", "Lee et al., NeurIPS 2018", True, StateSchema(_GAUSSIAN),
                 lambda h: pod.Mahalanobis(None),  # the library reads ``features.data``, which a trace freezes
                 traced=lambda impl, logits, features: F.mahalanobis_min_distance(features, impl.mu, impl.precision),
                 library="Mahalanobis"),
    DetectorKind("rmd", "features", "Ren et al., 2021 (relative Mahalanobis)", True, StateSchema(
        {**_GAUSSIAN, "background_mu": ("D",), "background_cov": ("D", "D"), "background_precision": ("D", "D")}),
        lambda h: pod.RMD(None), library="RMD"),
    DetectorKind("knn", "features", "Sun et al., ICML 2022", True, StateSchema(
        {"bank": ("N", "D")}, {"k": Value("int", 1, "N"), "normalize": Value("bool"), "_is_fitted": Value("bool")}),
        build_knn, traced=lambda impl, logits, features: F.knn_kth_distance(features, impl.bank, impl.k),
        after_fit=keep_bank,
        after_load=lambda impl: impl.knn.fit(impl.bank.numpy()), library="KNN"),
    DetectorKind("vim", "features", "Wang et al., CVPR 2022", True, StateSchema(
        {"w": ("K", "D"), "b": ("K",), "u": ("D",), "principal_subspace": ("D", "D-d")},  # the residual space
        {"d": Value("int", 1, "D"), "alpha": Value("float", 0.0, low_open=True)}), build_vim, library="ViM"),
    DetectorKind("she", "features", "Zhang et al., ICLR 2023", True, StateSchema({"patterns": ("K", "D")}),
                 lambda h: pod.SHE(None, head=h.flat), after_fit=pattern_for_every_output, library="SHE"),
    DetectorKind("react", "features", "Sun et al., NeurIPS 2021 (on the penultimate activations)", True, StateSchema(
        {}, {"percentile": Value("float", 0.0, 1.0), "threshold": Value("float"), "_is_fitted": Value("bool")}),
        lambda h: pod.ReAct(None, head=h.flat), "feature_maps", library="ReAct"),
    DetectorKind("ash", "features", "Djurisic et al., ICLR 2023 (ASH-S on the pooled penultimate activations, not "
                 "the last feature map)", False, StateSchema({}, {"percentile": Value("float", 0.0, 1.0)}),
                 lambda h: pod.ASH(None, head=h.flat), "feature_maps", library="ASH"),
    DetectorKind("dice", "features", "Sun & Li, ECCV 2022", True, StateSchema(
        {"weight": ("K", "D"), "bias": ("K",), "masked_w": ("K", "D"), "mean_activation": ("D",)},
        {"p": Value("float", 0.0, 1.0), "_is_fitted": Value("bool"), "threshold": Value("float")}),
        lambda h: pod.DICE(None, w=h.weight, b=h.bias, p=0.7), library="DICE"),
    DetectorKind("pnml", "features", "Bibas et al., NeurIPS 2021", True, StateSchema(
        {"_feature_projector": ("D", "D")}, {"eps": Value("float", 0.0, 1.0, low_open=True),
                                             "_log_num_classes": Value("float-or-null", required=False)},
        optional_tensors={"_log_num_classes": ()}),  # log K, cached by the library after its first score
        lambda h: pod.PNML(None, head=h.flat), library="PNML"),
    # Issue 26: the rest of pytorch-ood's detectors on logits or pooled features, then layers, gradients, maps.
    DetectorKind("tempscale", "logits", "Guo et al., ICML 2017 (MSP at a temperature fitted on ID labels)", True,
                 StateSchema({"t": ()}, {"_is_fitted": Value("bool")}), lambda h: pod.TemperatureScaling(None),
                 "logits", library="TemperatureScaling"),
    DetectorKind("gradnorm", "features", "Huang et al., NeurIPS 2021 (of the last layer's weights, in closed "
                 "form: the L1 norm of softmax - 1/K times the L1 norm of the features)",
                 outlier=lambda logits, features: F.gradnorm_outlier(logits, features), library="GradNorm"),
    DetectorKind("fdbd", "features", "Liu & Qin, ICML 2024 (feature distance to the decision boundaries)", True,
                 StateSchema({"train_mean": ("D",), "_denom_matrix": ("K", "K")}),
                 lambda h: pod.fDBD(None, head=h.need()), library="fDBD"),
    DetectorKind("nci", "features", "Liu et al., CVPR 2025 (neural collapse inspired)", True,
                 StateSchema({"global_mean": ("D",)}, {"alpha": Value("float", 0.0)}),
                 lambda h: pod.NCI(None, head=h.need()), library="NCI",  # attribute writes in
                 traced=lambda impl, logits, features: F.nci_outlier(  # its forward pass: exported in torch
                     features, impl.head, impl.global_mean, impl.alpha)),
    DetectorKind("nnguide", "features", "Park et al., ICCV 2023 (nearest-neighbour guidance)", True,
                 StateSchema({"_scaled_features": ("N", "D")}, {"k": Value("int", 1, "N")}),
                 lambda h: pod.NNGuide(None, head=h.flat, k=min(10, h.count or 10)), library="NNGuide"),
    DetectorKind("gmm", "features", "one Gaussian per class with its own covariance, on the penultimate features "
                 "(pytorch-ood)", True,
                 StateSchema({"_mu": ("C", "D"), "_precision": ("C", "D", "D"), "_log_det": ("C",),
                              "_log_weights": ("C",)}, {"reg": Value("float", 0.0)}),
                 lambda h: pod.GMM(None), library="GMM"),
    DetectorKind("scale", "features", "Xu et al., ICLR 2024 (SCALE on the pooled penultimate activations, not the "
                 "last feature map)", False, StateSchema({}, {"percentile": Value("float", 0.0, 1.0)}),
                 lambda h: pod.SCALE(None, head=h.flat), "feature_maps", library="SCALE"),
    DetectorKind("lts", "features", "Djurisic et al., Machine Vision and Applications 2025 (logit scaling)", False,
                 StateSchema({}, {"p": Value("float", 0.0, 1.0)}), lambda h: pod.LTS(None, head=h.flat),
                 traced=lambda impl, logits, features: F.lts_outlier(features, impl.head,
                                                                     impl.head.head.in_features, impl.p),
                 library="LTS"),
    DetectorKind("vra", "features", "Xu et al., NeurIPS 2023 (variational rectified activation, on the pooled "
                 "penultimate activations)", True, StateSchema(
                     {"_lower_threshold": ("D", 1, 1), "_upper_threshold": ("D", 1, 1)},
                     {"lower_percentile": Value("float", 0.0, 1.0), "upper_percentile": Value("float", 0.0, 1.0)}),
                 lambda h: pod.VRA(None, head=h.flat), "feature_maps", library="VRA"),
    # Published post-hoc detectors in neither library, written here from their papers and authors' code.
    DetectorKind("weiper", "features", "Granz et al., NeurIPS 2024 (WeiPer+KLD: weight perturbations of the class "
                 "projections; detection/weiper.py)", True, StateSchema(
                     {"perturbed_weight": ("M", "D"), "train_histogram": ("B",), "train_histogram_perturbed": ("B",),
                      "ranges": (4,)},
                     {"repeats": Value("int", 1), "delta": Value("float", 0.0, low_open=True),
                      "bins": Value("int", 2),
                      "smoothing": Value("int", 1), "smoothing_perturbed": Value("int", 1),
                      "eps": Value("float", 0.0, low_open=True), "eps_perturbed": Value("float", 0.0, low_open=True),
                      "lambda_1": Value("float"), "lambda_2": Value("float"), "seed": Value("int", 0)}),
                 lambda h: WeiPer(h.need()), after_load=WeiPer.check_loaded),
    # Issue 26 item 2: detectors on intermediate layers (models/layers.py taps them; --layers names them).
    DetectorKind("multimahalanobis", "layers", "Lee et al., NeurIPS 2018 (Mahalanobis summed over layers: reads "
                 "the spatial mean of each tapped layer, by default each stage's output)", True,
                 StateSchema({"mu": ("C", "S"), "precision": ("S", "S"), "widths": ("L",)}),
                 lambda h: LayerMahalanobis(h.widths), after_load=LayerMahalanobis.rebuild,
                 traced=lambda impl, logits, features: impl.traced_outlier(features), library="MultiMahalanobis"),
    DetectorKind("gram", "layers", "Sastry & Oore, ICML 2020 (Gram-matrix deviations: reads row-summed Gram "
                 "vectors of poles 1..L of each tapped layer, by default each stage's output; detection/layer_gram.py)",
                 True, StateSchema({"feature_min": ("C", "S"), "feature_max": ("C", "S"), "layer_norm": ("L",),
                                    "widths": ("L",)}, {"seed": Value("int", 0)}),
                 lambda h: LayerGram(h.widths), "structured", library="Gram", reduce_layers=gram_reducer),
    DetectorKind("combood", "layers", "Rajasekaran et al., SDM 2024 (CombOOD: -sqrt(D) log r_k^2 - d_M^2, the "
                 "k-th neighbour distance of the last tapped layer's pooled features fused with the Mahalanobis "
                 "distance of the extremes of each tapped layer and of the logits, by default each stage's output; "
                 "detection/combood.py)", True,
                 StateSchema({"widths": ("L",), "keep": ("X",), "scaler_mean": ("E",), "scaler_scale": ("E",),
                              "lambdas": ("E",), "power_mean": ("E",), "power_scale": ("E",),
                              "precision": ("E", "E"), "bank": ("N", "B")}, {"k": Value("int", 1, "N")}),
                 lambda h: CombOOD(h.widths), "structured", after_load=CombOOD.check_loaded,
                 traced=lambda impl, logits, features: impl.predict_structured(logits, features, chunk=None),
                 in_auto=False, reduce_layers=combood_reducer),  # not in the default pool: benchmarks/README
    DetectorKind("nac", "coverage", "Liu et al., ICLR 2024 (NAC-UE, neuron activation coverage: the gradient of "
                 "the softmax's KL to uniform times each neuron's activation, binned; reads each tapped layer, by "
                 "default each stage's output; detection/nac.py)", True,
                 StateSchema({"counts": ("S", 50), "widths": ("L",)},
                             {"m": Value("int", 50, 50), "alpha": Value("float", 0.0, low_open=True),
                              "o_star": Value("int", 1)}),
                 lambda h: PackedNAC(h.widths), after_load=PackedNAC.rebuild, export_refusal=_GRADIENT_REFUSAL,
                 library="NACUE"),
    DetectorKind("graduncertainty", "gradient", "Igoe et al., 2022 (gradients as a measure of uncertainty: every "
                 "parameter's gradient to an all-ones label, per image)", export_refusal=_GRADIENT_REFUSAL,
                 library="GradUncertainty",
                 score_images=parameter_gradient_scores("GradUncertainty", UNCERTAINTY)),
    DetectorKind("gradnorm-all", "gradient", "Huang et al., NeurIPS 2021 (as pytorch-ood's default computes it: "
                 "the L1 norm of every parameter's per-image gradient of the cross-entropy to uniform; gradnorm is "
                 "the paper's last-layer form)", export_refusal=_GRADIENT_REFUSAL, library="GradNorm",
                 score_images=parameter_gradient_scores("GradNorm", GRADNORM_ALL)),
    DetectorKind("mahalanobis-odin", "perturbed", "Lee et al., NeurIPS 2018 (Mahalanobis on inputs perturbed "
                 "against the distance, ODIN-style; fitted on the penultimate features)", True,
                 StateSchema(_GAUSSIAN, {"eps": Value("float", 0.0, 1.0, low_open=True)}),
                 lambda h: pod.MahalanobisODIN(None), after_fit=expose_gaussian, after_load=restore_gaussian,
                 export_refusal=_GRADIENT_REFUSAL, library="MahalanobisODIN"),
    DetectorKind("mcd", "sampling", "Gal & Ghahramani, ICML 2016 (Monte-Carlo dropout: the softmax's variance "
                 "over 30 passes with dropout on; models with dropout only)", export_refusal=_MCD_REFUSAL,
                 library="MCD", in_auto=False, score_images=mcd_scores),  # --candidates all, with dropout
    *(DetectorKind(name, "map", paper, outlier=energy_of_changed, library=cls,
                   change_map=changed_map(cls), export_refusal=refusal) for name, cls, paper, refusal in (
        ("ash-map", "ASH", "Djurisic et al., ICLR 2023 (ASH-S on the last feature map, as the paper applies it; the "
                           "rest of the model runs on the pruned map, then its energy)", ""),
        ("scale-map", "SCALE", "Xu et al., ICLR 2024 (SCALE on the last feature map, then the energy)", ""),
        ("rankfeat", "RankFeat", "Song et al., NeurIPS 2022 (the last feature map without its rank-1 part, then the "
                                 "energy)", _RANKFEAT_REFUSAL))),
)}
SCORE_NAMES = tuple(DETECTOR_KINDS)
LAYER_SCORES = tuple(name for name, kind in DETECTOR_KINDS.items() if kind.reads in ("layers", "map", "coverage"))
AUTO_CANDIDATES = tuple(name for name, kind in DETECTOR_KINDS.items() if kind.in_auto)
# pytorch-ood detector classes not wired, each with why (tests/detection/test_registry.py enumerates the library)
NOT_WIRED = {
    "WeightedEBO": "its class weights come from VOS training (pytorch_ood.loss.VOSRegLoss); a fixed classifier has "
                   "none, and with equal weights it is the energy score",
    "MCM": "needs a CLIP text encoder (zero-shot vision-language models), not a fixed classifier",
}
_OWN_INPUTS = {"gradient": "needs gradients", "coverage": "needs gradients", "perturbed": "needs input gradients",
               "sampling": "samples dropout masks"}


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
                                    f"{', '.join(SCORE_NAMES)} (combine several with '+', e.g. knn+vim+energy)")
        if len(parts) > 1:
            own = next((p for p in parts if DETECTOR_KINDS[p].reads in _OWN_INPUTS), None)
            if own is not None:
                why = _OWN_INPUTS[DETECTOR_KINDS[own].reads]
                raise WatermarkOODError(f"{own} {why} and cannot be part of a combination")
            layered = next((p for p in parts if p in LAYER_SCORES), None)
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
        return any(kind.reads == "features" for kind in self.kinds)

    @property
    def reads_layers(self) -> bool:
        """Whether it reads or changes intermediate layers (then it is never part of a combination)."""
        return any(part in LAYER_SCORES for part in self.parts)

    @property
    def needs_dropout(self) -> bool:
        """Whether it samples with dropout on (runs only on models that have dropout)."""
        return not self.is_combination and self.kind.reads == "sampling"

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
        if self.kind.reads == "map":
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


def describe_kinds(names: Sequence[str] = SCORE_NAMES) -> list[str]:
    return [DETECTOR_KINDS[n].describe() for n in names]
