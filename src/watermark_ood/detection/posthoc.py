"""Score objects built from the registry's entries: one detector (:class:`PosthocScore`) or a z-scored mean of
several (:class:`Combination`), fitted on ID data and saved as tensors plus JSON (no pickle).

    >>> import torch
    >>> score = PosthocScore("energy")
    >>> logits = torch.tensor([[4.0, 0.0], [0.1, 0.0]])
    >>> score(logits, None).round(decimals=3)   # logsumexp of the logits: the first input is more ID
    tensor([4.0180, 0.7440])
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from watermark_ood.core.errors import WatermarkOODError, describe
from watermark_ood.core.schema import check_mapping, check_tensor, fail
from watermark_ood.detection.functional import gen_outlier, knn_kth_distance, mahalanobis_min_distance  # noqa: F401
from watermark_ood.detection.registry import (DETECTOR_KINDS, SCORE_NAMES, DetectorKind, DetectorSpec,  # noqa: F401
                                              FlatHead, Head, Reads, check_name, describe_kinds)

__all__ = ["PosthocScore", "Combination", "build_score", "check_state",  # and, for the old import path:
           "DETECTOR_KINDS", "SCORE_NAMES", "DetectorKind", "FlatHead", "Head", "check_name", "describe_kinds",
           "gen_outlier", "knn_kth_distance", "mahalanobis_min_distance"]
_FlatHead = FlatHead  # its name before the registry was one table
_ABSENT = object()  # a declared field the library object does not hold (yet): not saved


def require_fitted(score: "PosthocScore | Combination") -> None:
    if not score.fitted:
        raise WatermarkOODError(f"the {score.name} detector is not fitted; fit it on ID training data first")


class PosthocScore:
    """One pytorch-ood detector on logits or penultimate features; ``__call__`` gives higher = more ID.

    ``head`` is the classifier's last linear layer (needed by vim, she, react, ash, dice, pnml).
    """

    def __init__(self, name: str | DetectorSpec, head: nn.Linear | None = None) -> None:
        spec = DetectorSpec.parse(name)
        if spec.is_combination or spec.kind.score_images is not None:
            raise WatermarkOODError(f"{spec.name!r} is not a single logit or feature score")
        self.name, self.kind, self.head = spec.name, spec.kind, head
        self.widths: tuple[int, ...] | None = None  # channels per tapped layer (kinds that read layers)
        self.fitted = not self.kind.fitted
        self.impl = self._build()

    @property
    def reads(self) -> str:
        return self.kind.reads

    def _build(self, dim: int | None = None, count: int | None = None) -> Any:
        return None if self.kind.build is None else self.kind.build(Head(self.name, self.head, dim, count,
                                                                          self.widths))

    # ------------------------------------------------------------------ fit / score
    def fit(self, logits: torch.Tensor, features: torch.Tensor, labels: torch.Tensor) -> "PosthocScore":
        """Fit on ID training logits/features (labels used where the method needs classes)."""
        kind = self.kind
        if not kind.fitted:
            return self
        if kind.via == "logits":
            self.impl.fit_logits(logits.float(), labels)
        else:
            features = features.float()
            self.impl = self._build(features.shape[1], len(features))
            try:
                if kind.via == "feature_maps":
                    self.impl.fit_feature_maps(features[:, :, None, None], labels)
                elif hasattr(self.impl, "fit_structured"):  # combood: the logits' extremes as well
                    self.impl.fit_structured(logits.float(), features, labels)
                else:
                    self.impl.fit_features(features, labels)
                if kind.after_fit is not None:
                    kind.after_fit(self.impl, features, labels)
            except (ValueError, RuntimeError, torch.linalg.LinAlgError) as error:
                raise WatermarkOODError(f"{self.name}: fitting on the ID features failed ({describe(error)})") from None
        self.fitted = True
        return self

    def outlier(self, logits: torch.Tensor, features: torch.Tensor | None, traceable: bool = False) -> torch.Tensor:
        """pytorch-ood's outlier score (higher = more OOD); ``traceable`` uses our torch formula for export."""
        require_fitted(self)
        kind = self.kind
        if kind.reads in (Reads.PERTURBED, Reads.COVERAGE):
            raise WatermarkOODError(f"{self.name} runs the model itself; score images with Detector.scores(), not "
                                    "precomputed outputs")
        if kind.reads in (Reads.FEATURES, Reads.LAYERS, Reads.MAP):
            if features is None:
                what = {"features": "penultimate features", "layers": "the tapped layers' features",
                        "map": "the logits of the model with its feature map changed"}[kind.reads]
                raise WatermarkOODError(f"{self.name} reads {what}; none were given")
            features = features.float()
        if traceable and kind.traced is not None:
            return kind.traced(self.impl, logits, features)
        if kind.outlier is not None:
            return kind.outlier(logits, features)
        if kind.via == "logits":
            return self.impl.predict_logits(logits.float())
        if kind.via == "feature_maps":
            return self.impl.predict_feature_maps(features[:, :, None, None])
        if kind.via == "structured":  # gram: the predicted class picks the bounds
            return self.impl.predict_structured(logits.float(), features)
        return self.impl.predict_features(features)

    def __call__(self, logits: torch.Tensor, features: torch.Tensor | None, traceable: bool = False) -> torch.Tensor:
        with torch.no_grad():
            return -self.outlier(logits, features, traceable).float()

    @property
    def bank(self) -> torch.Tensor:
        """KNN's L2-normalized ID training features: scikit-learn's index is rebuilt from them on load."""
        return self.impl.bank

    # ------------------------------------------------------------------ state (no pickle)
    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Fitted state as tensors plus JSON values: exactly what the kind's schema declares, read from the library
        object by name (never its other, private fields); the head and callables are rebuilt from the model."""
        tensors: dict[str, torch.Tensor] = {}
        values: dict[str, Any] = {"fitted": self.fitted}
        if self.impl is None:
            return tensors, values
        schema = self.kind.state
        per_class = [schema.per_class_tensor[0]] if schema.per_class_tensor else []
        for key in [*(schema.tensors or {}), *(schema.optional_tensors or {}), *(schema.values or {}), *per_class]:
            value = getattr(self.impl, key, _ABSENT)
            if isinstance(value, nn.ParameterDict):
                values[key] = {"parameter_dict": list(value.keys())}
                tensors.update({f"{key}.{k}": p.detach().float().cpu().contiguous() for k, p in value.items()})
            elif isinstance(value, torch.Tensor):
                tensors[key] = value.detach().cpu().contiguous()
            elif value is None or isinstance(value, (bool, int, float, str)):
                values[key] = value
        return tensors, values

    @classmethod
    def from_state(cls, name: str, head: nn.Linear | None, tensors: dict[str, torch.Tensor],
                   values: dict[str, Any]) -> "PosthocScore":
        score = cls(name, head)
        if score.impl is not None:
            dim = tensors["bank"].shape[1] if "bank" in tensors else (head.in_features if head is not None else None)
            if "widths" in tensors:  # a detector on intermediate layers
                score.widths = tuple(int(w) for w in tensors["widths"].tolist())
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
                if "." not in key:
                    setattr(score.impl, key, tensor)
            if score.kind.after_load is not None and values.get("fitted", score.fitted):
                score.kind.after_load(score.impl)
        score.fitted = bool(values.get("fitted", score.fitted))
        return score
class Combination:
    """The mean of several scores, each z-scored by its mean and std on held-out ID data.

    Scores live on different scales (distances, energies, probabilities); z-scoring on ID data puts them on one
    without looking at any OOD data, and the mean stays a traceable function for export.
    """

    def __init__(self, name: str | DetectorSpec, head: nn.Linear | None = None) -> None:
        self.spec = DetectorSpec.parse(name)
        self.name = self.spec.name
        self.parts = [PosthocScore(part, head) for part in self.spec.parts]
        self.mean = torch.zeros(len(self.parts))
        self.std = torch.ones(len(self.parts))
        self.fitted = False

    @property
    def reads(self) -> str:
        return Reads.FEATURES if any(p.reads == Reads.FEATURES for p in self.parts) else Reads.LOGITS

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
        require_fitted(self)
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
                       for i, part in enumerate(combo.spec.parts)]
        combo.mean, combo.std = tensors["combination.mean"], tensors["combination.std"]
        combo.fitted = bool(values.get("fitted"))
        return combo


def check_state(name: str | DetectorSpec, values: Any, tensors: dict[str, torch.Tensor], head: nn.Linear | None,
                num_classes: int | None = None) -> None:
    """A saved score state against its kind's schema and this model's sizes (one line naming the field if not)."""
    sizes = {} if head is None else {"D": head.in_features, "K": head.out_features}
    if num_classes is not None:
        sizes.setdefault("K", num_classes)
    spec = DetectorSpec.parse(name)
    if not spec.is_combination:
        spec.kind.state.check("", values, tensors, sizes)
        return
    parts = spec.parts
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


def build_score(name: str | DetectorSpec, head: nn.Linear | None) -> PosthocScore | Combination | None:
    """The score object for a name; None for ODIN, which needs the model itself (see :mod:`detector`)."""
    spec = DetectorSpec.parse(name)
    if spec.is_combination:
        return Combination(spec, head)
    if spec.kind.score_images is not None:  # odin, mcd, the parameter-gradient kinds: they score the images
        return None
    return PosthocScore(spec, head)
