"""Taps on named intermediate layers of any ``nn.Module`` (forward hooks; the model is not changed): what the
detectors on intermediate layers read (Lee et al.'s multi-layer Mahalanobis reads each stage's spatial mean).

A layer is named as in ``model.named_modules()`` (``layer2``, ``block3``, ``features.6``). The registered
architectures have defaults, the output of each stage; other models name theirs (``--layers NAME ...``).

    >>> from watermark_ood.models.architectures import cifar_resnet
    >>> model = cifar_resnet(20).eval()
    >>> default_layers(model)
    ('layer1', 'layer2', 'layer3')
    >>> taps = LayerTaps(model, default_layers(model))
    >>> _ = model(torch.zeros(2, 3, 32, 32))
    >>> taps.close().shape, taps.widths   # per image: the spatial means of the three stages, side by side
    (torch.Size([2, 112]), (16, 32, 64))
    >>> check_layers(model, ["layer9"])
    Traceback (most recent call last):
    ...
    watermark_ood.core.errors.WatermarkOODError: CifarResNet has no layer 'layer9'; it has e.g. conv1, bn1, layer1, layer1.0, layer1.0.conv1, layer1.0.bn1, ... (names as in model.named_modules())
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from watermark_ood.core.errors import WatermarkOODError

# The output of each stage, by architecture class (registry and torchvision models); data, not code.
DEFAULT_LAYERS: dict[str, tuple[str, ...]] = {
    "CifarResNet": ("layer1", "layer2", "layer3"),
    "WideResNet": ("block1", "block2", "block3"),
    "SmallCNN": ("bn1", "bn2", "bn3"),
    "ResNet": ("layer1", "layer2", "layer3", "layer4"),  # torchvision
}


def default_layers(model: nn.Module) -> tuple[str, ...]:
    """The stage outputs of a registered architecture; other models must name their layers."""
    inner = getattr(model, "model", model)  # a WatermarkedModel wraps the classifier
    names = DEFAULT_LAYERS.get(type(inner).__name__)
    if names is None:
        raise WatermarkOODError(f"{type(inner).__name__} has no default layers to tap; name them with --layers "
                                f"(it has e.g. {_some_names(inner)})")
    return names


def _some_names(model: nn.Module, count: int = 6) -> str:
    names = [name for name, _ in model.named_modules() if name]
    return ", ".join(names[:count]) + (", ..." if len(names) > count else "")


def check_layers(model: nn.Module, names: Sequence[str]) -> tuple[str, ...]:
    """``names`` if ``model`` has each of them (and they are distinct); one line listing some it has if not."""
    names = tuple(names)
    if not names:
        raise WatermarkOODError("no layers named; give at least one (--layers NAME ...)")
    if len(set(names)) != len(names):
        raise WatermarkOODError(f"layers named twice: {', '.join(sorted({n for n in names if names.count(n) > 1}))}")
    known = dict(model.named_modules())
    for name in names:
        if not name or name not in known:
            raise WatermarkOODError(f"{type(model).__name__} has no layer {name!r}; it has e.g. {_some_names(model)} "
                                    "(names as in model.named_modules())")
    return names


def resolve_layers(score: str, one_map: bool, model: nn.Module, layers: Sequence[str] | None) -> tuple[str, ...]:
    """The layers a detector taps: as named (checked), else the architecture's defaults; ``one_map``: a detector
    that changes one feature map (its last, by default)."""
    if not one_map:
        return check_layers(model, layers) if layers is not None else default_layers(model)
    if layers is not None and len(layers) != 1:
        raise WatermarkOODError(f"{score} changes one feature map; name one layer, not {len(layers)}")
    return check_layers(model, layers) if layers is not None else (default_map_layer(model),)


def spatial_mean(output: torch.Tensor) -> torch.Tensor:
    """(N, C, ...) -> (N, C): the mean over every axis after the channels (a vector layer is kept as it is)."""
    return output.flatten(2).mean(dim=2) if output.ndim > 2 else output


class LayerTaps:
    """Records the spatial mean (or another ``reduce``) of each named layer's output during forward passes.

    Same interface as :class:`watermark_ood.models.taps.PenultimateHook`: after each forward pass ``features``
    holds one (N, sum of channels) tensor more; ``widths`` are the channels per layer, in the order named.
    """

    def __init__(self, model: nn.Module, names: Sequence[str],
                 reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        self.names = check_layers(model, names)
        self.reduce = reduce or spatial_mean
        self.features: list[torch.Tensor] = []
        self.widths: tuple[int, ...] = ()
        self._pending: dict[str, torch.Tensor] = {}
        modules = dict(model.named_modules())
        self.handles = [modules[name].register_forward_hook(self._keeper(name)) for name in self.names]
        self.handles.append(model.register_forward_hook(self._collect))

    def _keeper(self, name: str):
        def keep(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            if not isinstance(output, torch.Tensor):
                raise WatermarkOODError(f"layer {name!r} does not return one tensor ({type(output).__name__}); "
                                        "tap a layer that does")
            self._pending[name] = self.reduce(output.detach().float()).cpu()
        return keep

    def _collect(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        missing = [name for name in self.names if name not in self._pending]
        if missing:
            raise WatermarkOODError(f"layer {missing[0]!r} was not run by the model's forward pass; tap another")
        parts = [self._pending.pop(name) for name in self.names]
        self.widths = tuple(part.shape[1] for part in parts)
        self.features.append(torch.cat(parts, dim=1))

    def close(self) -> torch.Tensor:
        for handle in self.handles:
            handle.remove()
        return torch.cat(self.features) if self.features else torch.zeros(0)


# The last feature map of a registered architecture: the map the feature-map forms of ASH, SCALE and RankFeat
# change before the rest of the model runs on it (in WRN and SmallCNN the output of the last BatchNorm, before the
# ReLU and pooling that follow it in their forward pass).
LAST_MAP: dict[str, str] = {"CifarResNet": "layer3", "WideResNet": "bn1", "SmallCNN": "bn3", "ResNet": "layer4"}


def default_map_layer(model: nn.Module) -> str:
    name = LAST_MAP.get(type(getattr(model, "model", model)).__name__)
    if name is None:
        raise WatermarkOODError(f"{type(model).__name__} has no default feature map to change; name it with "
                                f"--layers (it has e.g. {_some_names(model)})")
    return name


class LayerRewrite:
    """Replaces one named layer's output by ``change(output)`` during forward passes (a forward hook that returns
    a value), so the rest of the model runs on the changed map, whatever its forward pass does after it."""

    def __init__(self, model: nn.Module, name: str, change) -> None:
        (self.name,) = check_layers(model, [name])
        self.change = change
        self.handle = dict(model.named_modules())[name].register_forward_hook(self._rewrite)

    def _rewrite(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
        if not isinstance(output, torch.Tensor) or output.ndim != 4:
            raise WatermarkOODError(f"layer {self.name!r} gives {getattr(output, 'shape', type(output).__name__)}, "
                                    "not an N x C x H x W feature map; name a convolutional layer")
        return self.change(output)

    def close(self) -> None:
        self.handle.remove()


def layer_widths(model: nn.Module, names: Sequence[str], image_shape: Sequence[int],
                 reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> tuple[int, ...]:
    """The width each named layer is reduced to (its channels, for the spatial mean), from one forward pass of a
    blank image (checks a file's taps on load)."""
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    taps = LayerTaps(model, names, reduce)
    try:
        with torch.no_grad():
            was_training = model.training
            model.eval()(torch.zeros((1, *image_shape), device=device))
            model.train(was_training)
    finally:
        taps.close()
    return taps.widths


def has_dropout(model: nn.Module) -> bool:
    """Whether test-time dropout changes anything: a dropout module with p > 0, or a block with a positive
    ``drop_rate`` (the WideResNets' and torchvision's convention for functional dropout)."""
    return any((isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0) or float(getattr(m, "drop_rate", 0) or 0) > 0
               for m in model.modules())


def joint_reducer(reducers: Sequence[Callable[[torch.Tensor], torch.Tensor]]) -> Callable[[torch.Tensor], torch.Tensor]:
    """Several detectors' statistics of one map side by side, so one forward pass serves all of them."""
    return lambda output: torch.cat([reduce(output) for reduce in reducers], dim=1)


def split_joint(features: torch.Tensor, widths: Sequence[Sequence[int]]) -> list[torch.Tensor]:
    """Undo :func:`joint_reducer` over the tapped layers: ``widths[j][l]`` is what detector j keeps of layer l;
    returns each detector's features as its own taps would have given them (its layers side by side).

    >>> joint = torch.arange(10.0)[None]     # two layers; detector 0 keeps 2 + 1 values, detector 1 keeps 3 + 4
    >>> [part.tolist() for part in split_joint(joint, [(2, 1), (3, 4)])]
    [[[0.0, 1.0, 5.0]], [[2.0, 3.0, 4.0, 6.0, 7.0, 8.0, 9.0]]]
    """
    layers = features.split([sum(w[layer] for w in widths) for layer in range(len(widths[0]))], dim=1)
    parts = []
    for j in range(len(widths)):
        pieces = []
        for layer, block in enumerate(layers):
            start = sum(widths[i][layer] for i in range(j))
            pieces.append(block[:, start:start + widths[j][layer]])
        parts.append(torch.cat(pieces, dim=1))
    return parts


class JoinedTaps:
    """Several taps in one forward pass (the penultimate vector and tapped layers): after each pass ``features``
    pops their outputs side by side, in the order given (the hook protocol of :class:`LayerTaps`)."""

    def __init__(self, taps: Sequence) -> None:
        self.taps = list(taps)
        self.features = self

    def pop(self) -> torch.Tensor:
        return torch.cat([tap.features.pop() for tap in self.taps], dim=1)

    def close(self) -> torch.Tensor:
        return torch.cat([tap.close() for tap in self.taps], dim=1)
