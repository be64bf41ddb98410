"""Model registry: a name gives an architecture plus the input normalization it was trained with.

Names: ``wrn40_2``, ``wrn16_2``, ``wrn16_4``, ``densenet_bc100``, ``resnet8/14/20/32/44/56/110`` (CIFAR; 8 and 14 train on a CPU in minutes),
``small_cnn``, ``torchvision:NAME`` (any torchvision classifier), ``package.module:callable``.
Checkpoints load with ``weights_only=True`` and never unpickle code.
"""

from __future__ import annotations

import importlib
import importlib.util
import pickle
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torchvision
from safetensors.torch import load_file
from torch import nn

from watermark_ood.core.errors import WatermarkOODError, describe
from watermark_ood.core.fileio import what_file_is
from watermark_ood.data.preprocessing import CIFAR, IMAGENET, Normalization
from watermark_ood.models.architectures import DenseNetBC, SmallCNN, WideResNet, cifar_resnet

Builder = Callable[[int, int], nn.Module]  # (num_classes, in_channels) -> module


@dataclass(frozen=True)
class ModelSpec:
    name: str
    builder: Builder
    normalization: Normalization
    description: str


CIFAR_RESNET_NORMALIZATION = IMAGENET  # the shared resnet20/56 checkpoints were trained with ImageNet statistics

REGISTRY: dict[str, ModelSpec] = {
    "wrn40_2": ModelSpec("wrn40_2", lambda k, c: WideResNet(40, k, 2, 0.3, c), CIFAR,
                         "WRN-40-2 of the paper (Outlier Exposure / energy-OOD checkpoints), CIFAR normalization"),
    "wrn16_2": ModelSpec("wrn16_2", lambda k, c: WideResNet(16, k, 2, 0.3, c), CIFAR,
                         "WRN-16-2, CIFAR normalization (small enough to train on a CPU: benchmarks/train_classifier.py)"),
    "wrn16_4": ModelSpec("wrn16_4", lambda k, c: WideResNet(16, k, 4, 0.3, c), CIFAR,
                         "WRN-16-4 (256-d features), CIFAR normalization (trains on a CPU in a few hours in bf16)"),
    "densenet_bc100": ModelSpec("densenet_bc100", lambda k, c: DenseNetBC(100, k, c), CIFAR,
                                "DenseNet-BC-100 (k = 12) of ODIN and the Mahalanobis paper, CIFAR normalization"),
    "small_cnn": ModelSpec("small_cnn", lambda k, c: SmallCNN(k, c), Normalization((0.5,), (0.5,)),
                           "3-layer CNN of the offline demo"),
}
for _depth in (8, 14, 20, 32, 44, 56, 110):
    REGISTRY[f"resnet{_depth}"] = ModelSpec(
        f"resnet{_depth}", (lambda d: lambda k, c: cifar_resnet(d, k, c))(_depth), CIFAR_RESNET_NORMALIZATION,
        f"CIFAR ResNet-{_depth} (option-A shortcuts), ImageNet mean/std as in the shared checkpoints",
    )


@dataclass
class LoadedModel:
    """A ready classifier with the normalization its inputs need and a stable identifier."""

    module: nn.Module
    normalization: Normalization
    model_id: str


def _torchvision_model(name: str, num_classes: int) -> nn.Module:

    try:
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    except ValueError:
        known = ", ".join(sorted(torchvision.models.list_models())[:12])
        raise WatermarkOODError(f"unknown torchvision model {name!r} (e.g. {known}, ...)") from None


def _import_factory(module_name: str) -> Any:
    """The module holding a user's model factory: a ``.py`` file by its path, else an importable module name
    (the working directory is searched too, as ``python -m`` does: a model defined beside the user's script)."""
    if module_name.endswith(".py"):
        path = Path(module_name)
        if not path.is_file():
            raise WatermarkOODError(f"--model {module_name}: no such Python file")
        spec = importlib.util.spec_from_file_location(f"watermark_ood_user_model.{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses and typing resolve a class's module by name
        spec.loader.exec_module(module)
        return module
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.append(str(Path.cwd()))
    return importlib.import_module(module_name)


def _callable_model(target: str) -> nn.Module:
    """``module:callable`` or ``path/to/file.py:callable``; the callable is called with no arguments and returns the
    classifier (its weights come from ``--checkpoint``)."""
    module_name, _, attr = target.rpartition(":")
    try:
        factory = getattr(_import_factory(module_name), attr)
    except (ImportError, AttributeError) as error:
        raise WatermarkOODError(f"cannot import model factory {target!r}: {describe(error)} (give "
                                "path/to/file.py:callable or module:callable; the callable is called with no "
                                "arguments)") from None
    model = factory()
    if not isinstance(model, nn.Module):
        raise WatermarkOODError(f"{target} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def is_user_model(name: str) -> bool:
    """A model the user defines (``module:callable`` or ``file.py:callable``), not a registry or torchvision one."""
    return ":" in name and not name.startswith("torchvision:")


def build_model(name: str, num_classes: int = 10, in_channels: int = 3) -> tuple[nn.Module, Normalization | None]:
    """An untrained architecture and its default normalization (None for a user's model without a
    ``normalization`` attribute: only its author knows the statistics it was trained with)."""
    if name.startswith("torchvision:"):
        return _torchvision_model(name.split(":", 1)[1], num_classes), IMAGENET
    if is_user_model(name):  # no default: its normalization is whatever it was trained with
        model = _callable_model(name)
        return model, getattr(model, "normalization", None)
    if name not in REGISTRY:
        raise WatermarkOODError(
            f"unknown model {name!r}; known: {', '.join(sorted(REGISTRY))}, torchvision:NAME, package.module:callable"
        )
    spec = REGISTRY[name]
    normalization = spec.normalization
    if normalization.channels == 1 and in_channels > 1:  # a grey-level default serves every channel
        normalization = Normalization(normalization.mean * in_channels, normalization.std * in_channels)
    return spec.builder(num_classes, in_channels), normalization


STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "net", "state")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint, found under a usual key, with any ``module.`` prefix removed."""
    path = Path(path)
    if not path.is_file():
        raise WatermarkOODError(f"{path}: checkpoint not found")
    if path.suffix == ".safetensors":

        try:
            state: Any = load_file(str(path))
        except Exception as error:  # noqa: BLE001 - safetensors raises several types
            raise WatermarkOODError(f"{path}: not a readable safetensors checkpoint ({describe(error)})") from None
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            # PyTorch's own message advises weights_only=False, i.e. running the file's code: never pass that on.
            kind = what_file_is(path)
            if kind.startswith("a pickle file") or kind.startswith("a zip archive"):
                raise WatermarkOODError(f"{path}: refused to load: the checkpoint holds Python objects other than "
                                        "tensors, and checkpoints are never unpickled; save model.state_dict() "
                                        "(or a .safetensors file) instead") from None
            raise WatermarkOODError(f"{path}: not a readable checkpoint: {kind}") from None
        except Exception:  # noqa: BLE001 - a damaged file can fail in many ways inside torch.load
            raise WatermarkOODError(f"{path}: not a readable checkpoint: {what_file_is(path)}") from None
    if isinstance(state, dict):
        for key in STATE_DICT_KEYS:
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WatermarkOODError(f"{path}: expected a state dict of tensors (optionally under 'state_dict')")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Strict load that says which keys are missing, unexpected, or of the wrong shape."""
    own = model.state_dict()
    # Checkpoints from before PyTorch 0.4.1 lack BatchNorm's step counter; it does not affect eval outputs.
    state = {**{k: v for k, v in own.items() if k.endswith("num_batches_tracked")}, **state}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        def show(keys):
            return ", ".join(keys[:6]) + (f" (+{len(keys) - 6} more)" if len(keys) > 6 else "")

        parts = []
        if missing:
            parts.append(f"missing keys: {show(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {show(unexpected)}")
        if wrong:
            parts.append("wrong shapes: " + show([f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in wrong]))
        raise WatermarkOODError(f"{source} does not fit the architecture; " + "; ".join(parts))
    model.load_state_dict(state, strict=True)


HEAD_KEYS = ("linear.weight", "fc.weight", "head.weight", "classifier.weight", "heads.head.weight")


def infer_num_classes(state: dict[str, torch.Tensor]) -> int | None:
    """Rows of the classification head, found by its usual name, else the last 2-D weight."""
    for key in HEAD_KEYS:
        if key in state and state[key].ndim == 2:
            return int(state[key].shape[0])
    matrices = [v for k, v in state.items() if k.endswith("weight") and v.ndim == 2]
    return int(matrices[-1].shape[0]) if matrices else None


def load_model(
    name: str,
    checkpoint: str | Path | None = None,
    num_classes: int | None = None,
    in_channels: int = 3,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    fallback_classes: int | None = None,
) -> LoadedModel:
    """Architecture + weights + normalization (overridable with ``mean``/``std``), in eval mode.

    ``num_classes`` defaults to the checkpoint's head size, else ``fallback_classes``
    (callers pass the number of classes in their ID data).
    """
    state = read_state_dict(checkpoint) if checkpoint is not None else None
    if num_classes is None:
        num_classes = (infer_num_classes(state) if state else None) or fallback_classes or 10
    if fallback_classes is not None and num_classes < fallback_classes:
        raise WatermarkOODError(
            f"the model predicts {num_classes} classes but the ID data has {fallback_classes}; "
            "check --model/--checkpoint against --id-data"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # without a checkpoint the random weights are at least reproducible
        model, normalization = build_model(name, num_classes, in_channels)
    if state is not None:
        load_weights(model, state, str(checkpoint))
    if (mean is None) != (std is None):
        raise WatermarkOODError("give both --mean and --std, or neither")
    if mean is not None:
        normalization = Normalization(tuple(mean), tuple(std))
    if normalization is None:
        raise WatermarkOODError(f"--model {name}: give the input normalization it was trained with, --mean M1,M2,M3 "
                                "--std S1,S2,S3 (per channel, on [0, 1] pixels), or give the model a "
                                "`normalization` attribute (watermark_ood.Normalization)")
    model_id = name if checkpoint is None else f"{name}@{Path(checkpoint).name}"
    return LoadedModel(model.eval(), normalization, model_id)
