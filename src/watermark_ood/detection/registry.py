"""Every post-hoc OOD score of a fixed classifier, by name, from pytorch-ood; one convention: higher = more ID.

Each score reads the logits, the penultimate features (the input of the last ``nn.Linear``) or, for ODIN,
input gradients. The detectors themselves are pytorch-ood's (Apache-2.0); this module only

- builds each one for a model's head (``DETECTOR_KINDS``: name, what it reads, its paper),
- turns its fitted state into tensors plus JSON and back (no pickle: :meth:`PosthocScore.state`), and
- combines several into one (:class:`Combination`, z-scored mean), which no single peer detector has.

We compute a score ourselves only at export time, where pytorch-ood's code cannot be traced: KNN searches
neighbours with scikit-learn (:func:`knn_kth_distance` does the same in torch) and Mahalanobis reads
``tensor.data``, which a trace freezes (:func:`mahalanobis_min_distance`). Tests check both against the library.

    >>> import torch
    >>> score = PosthocScore("energy")
    >>> logits = torch.tensor([[4.0, 0.0], [0.1, 0.0]])
    >>> score(logits, None).round(decimals=3)   # logsumexp of the logits: the first input is more ID
    tensor([4.0180, 0.7440])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from watermark_ood.core.errors import WatermarkOODError, describe
from watermark_ood.core.schema import StateSchema, Value, check_mapping, check_tensor, fail


@dataclass(frozen=True)
class DetectorKind:
    """A detector known by name: what it reads, whether it is fitted on ID data, and where it comes from."""

    name: str
    reads: str  # "logits" | "features" | "gradient"
    fitted: bool
    paper: str
    state: StateSchema = StateSchema()  # what its saved state holds (checked when a file is loaded)


_GAUSSIAN = {"mu": ("K", "D"), "cov": ("D", "D"), "precision": ("D", "D")}  # class means, shared covariance
DETECTOR_KINDS: dict[str, DetectorKind] = {k.name: k for k in (
    DetectorKind("msp", "logits", False, "Hendrycks & Gimpel, ICLR 2017"),
    DetectorKind("energy", "logits", False, "Liu et al., NeurIPS 2020"),
    DetectorKind("maxlogit", "logits", False, "Hendrycks et al., ICML 2022"),
    DetectorKind("entropy", "logits", False, "Chan et al., ICCV 2021 (softmax entropy)"),
    DetectorKind("gen", "logits", False, "Liu et al., CVPR 2023"),
    DetectorKind("klmatching", "logits", True, "Hendrycks et al., ICML 2022",
                 StateSchema(per_class_tensor=("dists", ("K",)))),
    DetectorKind("odin", "gradient", False, "Liang et al., ICLR 2018"),
    DetectorKind("mahalanobis", "features", True, "Lee et al., NeurIPS 2018", StateSchema(_GAUSSIAN)),
    DetectorKind("rmd", "features", True, "Ren et al., 2021 (relative Mahalanobis)", StateSchema(
        {**_GAUSSIAN, "background_mu": ("D",), "background_cov": ("D", "D"), "background_precision": ("D", "D")})),
    DetectorKind("knn", "features", True, "Sun et al., ICML 2022", StateSchema(
        {"bank": ("N", "D")}, {"k": Value("int", 1, "N"), "normalize": Value("bool"), "_is_fitted": Value("bool")})),
    DetectorKind("vim", "features", True, "Wang et al., CVPR 2022", StateSchema(
        {"w": ("K", "D"), "b": ("K",), "u": ("D",), "principal_subspace": ("D", "d")},
        {"d": Value("int", 1, "D"), "alpha": Value("float", 0.0, low_open=True)})),
    DetectorKind("she", "features", True, "Zhang et al., ICLR 2023", StateSchema({"patterns": ("K", "D")})),
    DetectorKind("react", "features", True, "Sun et al., NeurIPS 2021 (on the penultimate activations)", StateSchema(
        {}, {"percentile": Value("float", 0.0, 1.0), "threshold": Value("float"), "_is_fitted": Value("bool")})),
    DetectorKind("ash", "features", False, "Djurisic et al., ICLR 2023 (ASH-S on the pooled penultimate "
                                           "activations, not the last feature map)",
                 StateSchema({}, {"percentile": Value("float", 0.0, 1.0)})),
    DetectorKind("dice", "features", True, "Sun & Li, ECCV 2022", StateSchema(
        {"weight": ("K", "D"), "bias": ("K",), "masked_w": ("K", "D"), "mean_activation": ("D",)},
        {"p": Value("float", 0.0, 1.0), "_is_fitted": Value("bool"), "threshold": Value("float")})),
    DetectorKind("pnml", "features", True, "Bibas et al., NeurIPS 2021", StateSchema(
        {"_feature_projector": ("D", "D")}, {"eps": Value("float", 0.0, 1.0, low_open=True),
                                             "_log_num_classes": Value("float-or-null", required=False)},
        optional_tensors={"_log_num_classes": ()})),  # log K, cached by the library after its first score
)}
SCORE_NAMES = tuple(DETECTOR_KINDS)
# Stateful pytorch-ood attributes that are rebuilt from the model, never saved.
_REBUILT = {"encoder", "model", "head", "backbone", "detector", "ash", "knn", "criterion", "_device"}


def check_name(name: str) -> None:
    """Unknown names are user errors that list the known ones (combinations join names with '+')."""
    unknown = [part for part in name.split("+") if part not in DETECTOR_KINDS]
    if unknown or not name:
        raise WatermarkOODError(f"unknown score {unknown[0] if unknown else name!r}; known scores: "
                                f"{', '.join(SCORE_NAMES)} (combine several with '+', e.g. knn+vim+energy)")
    if "+" in name and any(DETECTOR_KINDS[p].reads == "gradient" for p in name.split("+")):
        raise WatermarkOODError("odin needs input gradients and cannot be part of a combination")


def knn_kth_distance(features: torch.Tensor, bank: torch.Tensor, k: int, spare: int = 8) -> torch.Tensor:
    """Distance of each L2-normalized feature to its k-th nearest neighbour in ``bank`` (already normalized).

    The same quantity as pytorch-ood's KNN (scikit-learn's exact search), written in torch so that it traces:
    candidates come from one matrix product, then the ``k + spare`` nearest are measured exactly, since
    ``|z|^2 - 2 z.b + |b|^2`` loses precision for near neighbours.
    """
    z = features / features.norm(dim=1, keepdim=True).clamp(min=1e-12)
    squared = (z * z).sum(1, keepdim=True) - 2 * z @ bank.T + (bank * bank).sum(1)[None, :]
    candidates = squared.topk(min(k + spare, bank.shape[0]), dim=1, largest=False).indices
    exact = (z[:, None, :] - bank[candidates]).norm(dim=2)
    return exact.topk(k, dim=1, largest=False).values[:, -1]


def gen_outlier(logits: torch.Tensor, gamma: float = 0.1, eps: float = 1e-7) -> torch.Tensor:
    """pytorch-ood's GEN outlier score (all classes) in float64, written so that it exports exactly.

    The library clamps p to [1e-7, 1 - 1e-7]; ONNX exporters store that upper bound as float32, where it is
    1 - 1.19e-7, and for confident images ((1 - p)^0.1 at the bound) the exported score moved by ~5e-4 of its
    range. Here the bound is applied to 1 - p instead (1e-7 survives float32), which equals the library's
    clamp to ~1e-8 relative.
    """
    p = logits.double().softmax(dim=1)
    return (p.clamp(min=eps).pow(gamma) * (1 - p).clamp(min=eps).pow(gamma)).mean(dim=1)


def mahalanobis_min_distance(features: torch.Tensor, mu: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    """Half the squared Mahalanobis distance to the closest class mean: pytorch-ood's Mahalanobis score."""
    centered = features[:, None, :] - mu[None, :, :]  # N x K x D
    return 0.5 * ((centered @ precision) * centered).sum(dim=2).min(dim=1).values


class PosthocScore:
    """One pytorch-ood detector on logits or penultimate features; ``__call__`` gives higher = more ID.

    ``head`` is the classifier's last linear layer (needed by vim, she, react, ash, dice, pnml).
    """

    def __init__(self, name: str, head: nn.Linear | None = None) -> None:
        check_name(name)
        if "+" in name or DETECTOR_KINDS[name].reads == "gradient":
            raise WatermarkOODError(f"{name!r} is not a single logit or feature score")
        self.name, self.kind, self.head = name, DETECTOR_KINDS[name], head
        self.fitted = not self.kind.fitted
        self.impl = self._build(features_dim=None)

    @property
    def reads(self) -> str:
        return self.kind.reads

    def _need_head(self) -> nn.Linear:
        if self.head is None:
            raise WatermarkOODError(f"{self.name} needs the classifier's last linear layer")
        return self.head

    def _build(self, features_dim: int | None) -> Any:
        from pytorch_ood import detector as pod

        name = self.name
        if name in ("msp", "energy", "maxlogit", "entropy", "gen"):
            return None  # pure functions of the logits: see __call__
        if name == "klmatching":
            return pod.KLMatching(None)
        if name == "mahalanobis":
            return pod.Mahalanobis(None)
        if name == "rmd":
            return pod.RMD(None)
        if name == "knn":
            return pod.KNN(None, k=50)
        head = self._need_head()
        w, b = head.weight.detach().float().cpu(), head.bias.detach().float().cpu()
        flat = _FlatHead(head)
        if name == "vim":
            d = 64 if features_dim is None or features_dim > 128 else max(1, features_dim // 2)
            return pod.ViM(None, d=d, w=w, b=b)
        if name == "she":
            return pod.SHE(None, head=flat)
        if name == "react":
            return pod.ReAct(None, head=flat)
        if name == "ash":
            return pod.ASH(None, head=flat)
        if name == "dice":
            return pod.DICE(None, w=w, b=b, p=0.7)
        if name == "pnml":
            return pod.PNML(None, head=flat)
        raise AssertionError(name)  # every kind is handled above

    # ------------------------------------------------------------------ fit / score
    def fit(self, logits: torch.Tensor, features: torch.Tensor, labels: torch.Tensor) -> "PosthocScore":
        """Fit on ID training logits/features (labels used where the method needs classes)."""
        if not self.kind.fitted:
            return self
        if self.name == "klmatching":
            self.impl.fit_logits(logits.float(), labels)
        else:
            features = features.float()
            self.impl = self._build(features.shape[1])
            if self.name == "knn" and len(features) <= self.impl.k:
                self.impl.k = max(1, len(features) - 1)
            try:
                if self.name == "react":
                    self.impl.fit_feature_maps(features[:, :, None, None], labels)
                else:
                    self.impl.fit_features(features, labels)
                if self.name == "knn":
                    self._bank = self.impl._prepare(features[labels >= 0]).contiguous()
            except (ValueError, RuntimeError, torch.linalg.LinAlgError) as error:
                raise WatermarkOODError(f"{self.name}: fitting on the ID features failed ({describe(error)})") from None
        self.fitted = True
        return self

    def outlier(self, logits: torch.Tensor, features: torch.Tensor | None, traceable: bool = False) -> torch.Tensor:
        """pytorch-ood's outlier score (higher = more OOD); ``traceable`` uses the torch KNN for export."""
        from pytorch_ood import detector as pod

        if not self.fitted:
            raise WatermarkOODError(f"the {self.name} detector is not fitted; fit it on ID training data first")
        name = self.name
        if name == "gen" and traceable:
            return gen_outlier(logits)
        if name in ("msp", "energy", "maxlogit", "entropy", "gen"):
            fn = {"msp": pod.MaxSoftmax.score, "energy": pod.EnergyBased.score, "maxlogit": pod.MaxLogit.score,
                  "entropy": pod.Entropy.score, "gen": pod.GEN.score}[name]
            # float64: GEN's p^0.1 (1 - p)^0.1 terms lose ~1e-3 of the score's range in float32, which would make
            # any two float32 implementations (library, onnxruntime) disagree at that level; the cost is N x C.
            return fn(logits.double())
        if name == "klmatching":
            return self.impl.predict_logits(logits.float())
        if features is None:
            raise WatermarkOODError(f"{name} reads penultimate features; none were given")
        features = features.float()
        if name == "knn" and traceable:
            return knn_kth_distance(features, self.bank, self.impl.k)
        if name == "mahalanobis" and traceable:  # pytorch-ood reads ``features.data``, which a trace freezes
            return mahalanobis_min_distance(features, self.impl.mu, self.impl.precision)
        if name in ("react", "ash"):
            return self.impl.predict_feature_maps(features[:, :, None, None])
        return self.impl.predict_features(features)

    def __call__(self, logits: torch.Tensor, features: torch.Tensor | None, traceable: bool = False) -> torch.Tensor:
        with torch.no_grad():
            return -self.outlier(logits, features, traceable).float()

    @property
    def bank(self) -> torch.Tensor:
        """KNN's L2-normalized ID training features: scikit-learn's index is rebuilt from them on load."""
        return self._bank

    # ------------------------------------------------------------------ state (no pickle)
    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Fitted state as tensors plus JSON values; the head and callables are rebuilt from the model."""
        tensors: dict[str, torch.Tensor] = {}
        values: dict[str, Any] = {"fitted": self.fitted}
        if self.impl is None:
            return tensors, values
        for key, value in vars(self.impl).items():
            if key in _REBUILT:
                continue
            if isinstance(value, nn.ParameterDict):
                values[key] = {"parameter_dict": list(value.keys())}
                tensors.update({f"{key}.{k}": p.detach().float().cpu().contiguous() for k, p in value.items()})
            elif isinstance(value, torch.Tensor):
                tensors[key] = value.detach().cpu().contiguous()
            elif value is None or isinstance(value, (bool, int, float, str)):
                values[key] = value
        if self.name == "knn" and self.fitted:
            tensors["bank"] = self.bank.contiguous()
        return tensors, values

    @classmethod
    def from_state(cls, name: str, head: nn.Linear | None, tensors: dict[str, torch.Tensor],
                   values: dict[str, Any]) -> "PosthocScore":
        score = cls(name, head)
        if score.impl is not None:
            dim = tensors["bank"].shape[1] if "bank" in tensors else (head.in_features if head is not None else None)
            score.impl = score._build(dim)
            for key, value in values.items():
                if key == "fitted":
                    continue
                if isinstance(value, dict) and "parameter_dict" in value:
                    setattr(score.impl, key, nn.ParameterDict(
                        {k: nn.Parameter(tensors[f"{key}.{k}"], requires_grad=False) for k in value["parameter_dict"]}))
                else:
                    setattr(score.impl, key, value)
            for key, tensor in tensors.items():
                if "." not in key and key != "bank":
                    setattr(score.impl, key, tensor)
            if name == "knn" and "bank" in tensors:
                score._bank = tensors["bank"]
                score.impl.knn.fit(score._bank.numpy())
        score.fitted = bool(values.get("fitted", score.fitted))
        return score


class _FlatHead(nn.Module):
    """The last linear layer applied to (N, D) or (N, D, 1, 1) activations (ReAct and ASH pass feature maps)."""

    def __init__(self, head: nn.Linear) -> None:
        super().__init__()
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.flatten(1).to(self.head.weight.dtype))


class Combination:
    """The mean of several scores, each z-scored by its mean and std on held-out ID data.

    Scores live on different scales (distances, energies, probabilities); z-scoring on ID data puts them on one
    without looking at any OOD data, and the mean stays a traceable function for export.
    """

    def __init__(self, name: str, head: nn.Linear | None = None) -> None:
        check_name(name)
        self.name = name
        self.parts = [PosthocScore(part, head) for part in name.split("+")]
        self.mean = torch.zeros(len(self.parts))
        self.std = torch.ones(len(self.parts))
        self.fitted = False

    @property
    def reads(self) -> str:
        return "features" if any(p.reads == "features" for p in self.parts) else "logits"

    def fit(self, logits: torch.Tensor, features: torch.Tensor, labels: torch.Tensor,
            held_logits: torch.Tensor, held_features: torch.Tensor) -> "Combination":
        """Parts fit on one ID split; their z-scores come from another (a KNN scored on its own bank is biased)."""
        for part in self.parts:
            part.fit(logits, features, labels)
        raw = torch.stack([part(held_logits, held_features) for part in self.parts])
        self.mean, self.std = raw.mean(dim=1), raw.std(dim=1).clamp(min=1e-12)
        self.fitted = True
        return self

    def __call__(self, logits: torch.Tensor, features: torch.Tensor | None, traceable: bool = False) -> torch.Tensor:
        if not self.fitted:
            raise WatermarkOODError(f"the {self.name} detector is not fitted; fit it on ID training data first")
        raw = torch.stack([part(logits, features, traceable) for part in self.parts])
        return ((raw - self.mean[:, None]) / self.std[:, None]).mean(dim=0)

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors = {"combination.mean": self.mean.contiguous(), "combination.std": self.std.contiguous()}
        values: dict[str, Any] = {"fitted": self.fitted, "parts": {}}
        for i, part in enumerate(self.parts):
            t, v = part.state()
            tensors.update({f"part{i}/{k}": x for k, x in t.items()})
            values["parts"][str(i)] = v
        return tensors, values

    @classmethod
    def from_state(cls, name: str, head: nn.Linear | None, tensors: dict[str, torch.Tensor],
                   values: dict[str, Any]) -> "Combination":
        combo = cls(name, head)
        combo.parts = [PosthocScore.from_state(part, head, {k.split("/", 1)[1]: x for k, x in tensors.items()
                                                            if k.startswith(f"part{i}/")}, values["parts"][str(i)])
                       for i, part in enumerate(name.split("+"))]
        combo.mean, combo.std = tensors["combination.mean"], tensors["combination.std"]
        combo.fitted = bool(values.get("fitted"))
        return combo


def check_state(name: str, values: Any, tensors: dict[str, torch.Tensor], head: nn.Linear | None,
                num_classes: int | None = None) -> None:
    """A saved score state against its kind's schema and this model's sizes (one line naming the field if not)."""
    sizes = {} if head is None else {"D": head.in_features, "K": head.out_features}
    if num_classes is not None:
        sizes.setdefault("K", num_classes)
    if "+" not in name:
        DETECTOR_KINDS[name].state.check("", values, tensors, sizes)
        return
    parts = name.split("+")
    values = check_mapping("score_state", values)
    if values.get("fitted") is not True:
        raise fail("score_state.fitted", "true (a saved detector is fitted)", values.get("fitted"))
    states = check_mapping("score_state.parts", values.get("parts"))
    if sorted(states) != [str(i) for i in range(len(parts))] or set(values) - {"fitted", "parts"}:
        raise fail("score_state.parts", f"one state per part {list(range(len(parts)))}", sorted(states))
    for key in ("combination.mean", "combination.std"):
        if key not in tensors:
            raise fail(f"tensor {key}", f"a tensor of shape ({len(parts)},)", "none")
        check_tensor(f"tensor {key}", tensors[key], (len(parts),), {})
    if bool((tensors["combination.std"] <= 0).any()):
        raise fail("tensor combination.std", "positive values", tensors["combination.std"].tolist())
    known = {"combination.mean", "combination.std"} | {k for k in tensors if k.split("/", 1)[0] in
                                                        {f"part{i}" for i in range(len(parts))}}
    if set(tensors) - known:
        raise fail(f"tensor {sorted(set(tensors) - known)[0]}", "no such tensor for this combination", "a tensor")
    for i, part in enumerate(parts):
        part_tensors = {k.split("/", 1)[1]: v for k, v in tensors.items() if k.startswith(f"part{i}/")}
        DETECTOR_KINDS[part].state.check(f"part {i} ({part}) ", states[str(i)], part_tensors, dict(sizes))


def build_score(name: str, head: nn.Linear | None) -> PosthocScore | Combination | None:
    """The score object for a name; None for ODIN, which needs the model itself (see :mod:`detector`)."""
    check_name(name)
    if "+" in name:
        return Combination(name, head)
    if DETECTOR_KINDS[name].reads == "gradient":
        return None
    return PosthocScore(name, head)


def describe_kinds(names: Sequence[str] = SCORE_NAMES) -> list[str]:
    return [f"{n}: reads {DETECTOR_KINDS[n].reads}{', fitted on ID data' if DETECTOR_KINDS[n].fitted else ''} "
            f"({DETECTOR_KINDS[n].paper})" for n in names]
