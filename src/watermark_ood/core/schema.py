"""What a detector, watermark or checkpoint file may hold: every field's type, range and, for tensors, shape.

Files travel (shipped, copied, edited by hand), so nothing read from one is trusted before it is checked here:
a wrong field stops with one line naming the field, what was expected and what was found, instead of a
traceback deep inside a detector or a silently wrong decision. Tensor shapes are written with symbols that the
model fixes: ``D`` (penultimate features, the head's input), ``K`` (classes, the head's output), ``N`` (fit
images, any size but the same in every tensor of a score), ``C`` (the ID data's classes, at most ``K``: a model may
have more outputs than the data has classes, and per-class state has one row per class of the data), ``d`` (ViM's
principal dimensions, from its ``d``) and ``D-d`` (the dimensions of ViM's residual space, which it stores).

>>> check_float("threshold", 0.5)
0.5
>>> check_float("tpr", 1.5, low=0.0, high=1.0)
Traceback (most recent call last):
watermark_ood.core.errors.WatermarkOODError: tpr: expected a number in [0.0, 1.0], found 1.5
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from watermark_ood.core.errors import WatermarkOODError

FLOAT32_MAX = 3.4028234663852886e38  # scores are float32: a larger threshold cannot be compared honestly


def found(value: Any) -> str:
    """A short description of a bad value for a one-line message."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def fail(field: str, expected: str, value: Any) -> WatermarkOODError:
    return WatermarkOODError(f"{field}: expected {expected}, found {found(value)}")


def check_float(field: str, value: Any, low: float | None = None, high: float | None = None,
                low_open: bool = False, high_open: bool = False, limit: float = FLOAT32_MAX) -> float:
    """A finite real number (bools are not numbers here) in the given range, within float32's range."""
    lo, hi = ("(" if low_open else "[") if low is not None else "", (")" if high_open else "]") if high is not None else ""
    expected = (f"a number in {lo}{low}, {high}{hi}" if low is not None and high is not None else
                f"a number {'>' if low_open else '>='} {low}" if low is not None else
                f"a number {'<' if high_open else '<='} {high}" if high is not None else "a finite number")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise fail(field, expected, value)
    number = float(value)
    if not math.isfinite(number) or abs(number) > limit:
        raise fail(field, expected, value)
    if low is not None and (number < low or (low_open and number == low)):
        raise fail(field, expected, value)
    if high is not None and (number > high or (high_open and number == high)):
        raise fail(field, expected, value)
    return number


def check_int(field: str, value: Any, low: int | None = None, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise fail(field, "an integer" + (f" in [{low}, {high}]" if low is not None and high is not None else ""), value)
    if (low is not None and value < low) or (high is not None and value > high):
        raise fail(field, f"an integer in [{low}, {'any' if high is None else high}]", value)
    return value


def check_bool(field: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise fail(field, "true or false", value)
    return value


def check_str(field: str, value: Any, pattern: str | None = None) -> str:
    if not isinstance(value, str) or (pattern is not None and not re.fullmatch(pattern, value)):
        raise fail(field, "a string" + (f" matching {pattern}" if pattern else ""), value)
    return value


def check_mapping(field: str, value: Any) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise fail(field, "a JSON object", value)
    return value


def check_list(field: str, value: Any, length: int | None = None) -> Sequence[Any]:
    if not isinstance(value, list) or (length is not None and len(value) != length):
        raise fail(field, "a list" + (f" of {length} items" if length is not None else ""), value)
    return value


def check_tensor(field: str, tensor: torch.Tensor, shape: Sequence[int | str], sizes: dict[str, int]) -> None:
    """A finite floating tensor of ``shape``; symbols in ``shape`` take their size from ``sizes`` (an unset one,
    such as N, is fixed by its first use and must then agree everywhere)."""
    if not tensor.is_floating_point():
        raise fail(field, "a floating-point tensor", f"dtype {tensor.dtype}")
    if tensor.ndim != len(shape):
        raise fail(field, f"a tensor of shape ({', '.join(map(str, shape))})", f"shape {tuple(tensor.shape)}")
    for axis, (want, have) in enumerate(zip(shape, tensor.shape)):
        if isinstance(want, str):
            want = sizes.setdefault(want, int(have))
        if want != have:
            expected = ", ".join(f"{s}={sizes[s]}" if isinstance(s, str) and s in sizes else str(s) for s in shape)
            raise fail(field, f"shape ({expected}) for this model", f"shape {tuple(tensor.shape)}")
    if not all_finite(tensor):
        raise fail(field, "finite values", "NaN or infinite values")


def all_finite(tensor: torch.Tensor) -> bool:
    """numpy's check on CPU float32/64 (torch.isfinite took 25 ms on a 5,000 x 64 bank, numpy well under 1 ms)."""
    if tensor.device.type == "cpu" and tensor.dtype in (torch.float32, torch.float64):

        values = tensor.detach().numpy()
        return bool(np.isfinite(values.sum())) or bool(np.isfinite(values).all())
    return bool(torch.isfinite(tensor).all())


# ---------------------------------------------------------------- a score's fitted state
@dataclass(frozen=True)
class Value:
    """One JSON value of a score's state: its type and range; ``high`` may name a size (N, D)."""

    kind: str  # "float" | "int" | "bool" | "float-or-null"
    low: float | None = None
    high: float | str | None = None
    low_open: bool = False
    required: bool = True

    def check(self, field: str, value: Any, sizes: dict[str, int]) -> None:
        high = sizes.get(self.high, None) if isinstance(self.high, str) else self.high
        if self.kind == "bool":
            check_bool(field, value)
        elif self.kind == "int":
            check_int(field, value, None if self.low is None else int(self.low), None if high is None else int(high))
        elif self.kind == "float-or-null" and value is None:
            return
        else:
            check_float(field, value, self.low, high, self.low_open)


@dataclass(frozen=True)
class StateSchema:
    """The tensors (name -> shape) and JSON values of one detector kind's fitted state."""

    tensors: Mapping[str, tuple[int | str, ...]] = None  # type: ignore[assignment]
    values: Mapping[str, Value] = None  # type: ignore[assignment]
    per_class_tensor: tuple[str, tuple[int | str, ...]] | None = None  # klmatching: dists.<class> of shape (K,)
    optional_tensors: Mapping[str, tuple[int | str, ...]] = None  # type: ignore[assignment]  # caches

    def check(self, prefix: str, values: Any, tensors: Mapping[str, torch.Tensor], sizes: dict[str, int]) -> None:
        values = check_mapping(f"{prefix}score_state", values)
        if values.get("fitted") is not True:
            raise fail(f"{prefix}score_state.fitted", "true (a saved detector is fitted)", values.get("fitted"))
        expected_tensors = dict(self.tensors or {})
        allowed_values = dict(self.values or {})
        if self.per_class_tensor is not None:
            name, shape = self.per_class_tensor
            keys = check_list(f"{prefix}score_state.{name}.parameter_dict",
                              check_mapping(f"{prefix}score_state.{name}", values.get(name)).get("parameter_dict"))
            for key in keys:
                if not isinstance(key, str) or not key.isdigit() or ("K" in sizes and int(key) >= sizes["K"]):
                    raise fail(f"{prefix}score_state.{name}.parameter_dict", "class indices below K", key)
                expected_tensors[f"{name}.{key}"] = shape
        unknown = sorted(set(values) - set(allowed_values) - {"fitted"} - ({self.per_class_tensor[0]}
                                                                             if self.per_class_tensor else set()))
        if unknown:
            raise fail(f"{prefix}score_state.{unknown[0]}", "no such field for this score", values[unknown[0]])
        optional = dict(self.optional_tensors or {})
        extra = sorted(set(tensors) - set(expected_tensors) - set(optional))
        if extra:
            raise fail(f"{prefix}tensor {extra[0]}", "no such tensor for this score", "a tensor")
        for name, shape in expected_tensors.items():
            if name not in tensors:
                raise fail(f"{prefix}tensor {name}", f"a tensor of shape ({', '.join(map(str, shape))})", "none")
            if ("d" in shape or "D-d" in shape) and "d" not in sizes:
                d = values.get("d")
                Value("int", 1, "D").check(f"{prefix}score_state.d", d, sizes)
                sizes["d"] = d
                if "D" in sizes:
                    sizes["D-d"] = sizes["D"] - d
            check_tensor(f"{prefix}tensor {name}", tensors[name], shape, sizes)
        for name, shape in optional.items():
            if name in tensors:
                check_tensor(f"{prefix}tensor {name}", tensors[name], shape, sizes)
        if "C" in sizes and "K" in sizes and sizes["C"] > sizes["K"]:
            raise fail(f"{prefix}per-class tensors", f"at most K={sizes['K']} classes (the model's outputs)",
                       f"{sizes['C']} classes")
        for name, rule in allowed_values.items():
            if name not in values and not rule.required:
                continue
            if name not in values:
                raise fail(f"{prefix}score_state.{name}", rule.kind, "nothing (the field is missing)")
            rule.check(f"{prefix}score_state.{name}", values[name], sizes)
