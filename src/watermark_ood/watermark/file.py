"""The watermark: one input-space tensor added to every normalized input, and its file format."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as save_safetensors_bytes

from watermark_ood.core.errors import WatermarkOODError
from watermark_ood.core.fileio import atomic_write_bytes, atomic_write_json, read_artefact
from watermark_ood.core.schema import check_float, check_mapping, check_str, check_tensor, fail

TENSOR_KEY = "watermark"
METADATA_KEY = "watermark_ood"
FORMAT_VERSION = 1


@dataclass
class Watermark:
    """A (1, C, H, W) float32 pattern in the model's normalized input space.

    ``metadata`` records how it was made (objective, hyperparameters,
    normalization, model identifier, metrics) so a file is self-describing.
    """

    tensor: torch.Tensor
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.tensor.ndim != 4 or self.tensor.shape[0] != 1:
            raise WatermarkOODError(f"a watermark has shape (1, C, H, W), got {tuple(self.tensor.shape)}")
        self.tensor = self.tensor.detach().to("cpu", torch.float32).contiguous()
        if not torch.isfinite(self.tensor).all():
            raise WatermarkOODError("the watermark contains NaN or infinite values")

    @classmethod
    def zeros(cls, image_shape: tuple[int, int, int], **metadata: Any) -> "Watermark":
        return cls(torch.zeros((1, *image_shape)), dict(metadata))

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.tensor.shape[1:])  # type: ignore[return-value]

    def apply(self, normalized: torch.Tensor) -> torch.Tensor:
        """Add the watermark to a normalized batch (the paper's f(x + w))."""
        if tuple(normalized.shape[1:]) != self.image_shape:
            raise WatermarkOODError(
                f"inputs of shape {tuple(normalized.shape[1:])} do not match the watermark's {self.image_shape}"
            )
        return normalized + self.tensor.to(normalized.device, normalized.dtype)

    def stats(self) -> dict[str, float]:
        t = self.tensor
        return {"max_abs": float(t.abs().max()), "mean_abs": float(t.abs().mean()), "l2": float(t.norm())}

    def save(self, path: str | Path, sidecar_json: bool = True) -> Path:
        """safetensors file (tensor + metadata in its header) and a readable ``.json`` beside it."""
        path = Path(path)
        header = {"format_version": FORMAT_VERSION, "shape": list(self.tensor.shape), **self.metadata}
        blob = save_safetensors_bytes({TENSOR_KEY: self.tensor}, metadata={METADATA_KEY: json.dumps(header)})
        atomic_write_bytes(path, blob)
        if sidecar_json:
            atomic_write_json(path.with_suffix(".json"), header)
        return path

    @classmethod
    def load(cls, path: str | Path, expected_shape: tuple[int, ...] | None = None) -> "Watermark":
        """Read a file written by :meth:`save`; every failure is a :class:`WatermarkOODError`."""
        path = Path(path)
        tensors, header_metadata = read_artefact(path, "watermark", " (expected a .safetensors file written by "
                                                 "watermark-ood)")
        if TENSOR_KEY not in tensors:
            raise WatermarkOODError(f"{path}: no tensor named {TENSOR_KEY!r} (found: {', '.join(tensors) or 'none'})")
        try:
            metadata = json.loads(header_metadata.get(METADATA_KEY, "{}"), parse_constant=_no_constants)
        except (json.JSONDecodeError, AttributeError, TypeError, ValueError) as error:
            raise WatermarkOODError(f"{path}: corrupted watermark metadata ({error})") from None
        if not isinstance(metadata, dict):
            raise WatermarkOODError(f"{path}: watermark metadata must be a JSON object")
        try:
            check_watermark_metadata("", metadata)
        except WatermarkOODError as error:
            raise WatermarkOODError(f"{path}: not a valid watermark file ({error})") from None
        extra = sorted(set(tensors) - {TENSOR_KEY})
        if extra:
            raise WatermarkOODError(f"{path}: not a valid watermark file (tensor {extra[0]}: expected only "
                                    f"{TENSOR_KEY!r})")
        tensor = tensors[TENSOR_KEY]
        if tensor.ndim != 4 or tensor.shape[0] != 1:
            raise WatermarkOODError(f"{path}: a watermark has shape (1, C, H, W), got {tuple(tensor.shape)}")
        if expected_shape is not None and tuple(tensor.shape[-3:]) != tuple(expected_shape[-3:]):
            raise WatermarkOODError(
                f"{path}: watermark has shape {tuple(tensor.shape)}, but the model's inputs are {tuple(expected_shape)}"
            )
        if not tensor.is_floating_point():
            raise WatermarkOODError(f"{path}: watermark tensor must be floating point, got {tensor.dtype}")
        if "shape" in metadata and metadata["shape"] != list(tensor.shape):
            raise WatermarkOODError(f"{path}: not a valid watermark file (shape: expected {list(tensor.shape)}, as "
                                    f"the tensor has, found {metadata['shape']!r})")
        try:
            check_tensor("tensor watermark", tensor, (1, "C", "H", "W"), {})
        except WatermarkOODError as error:
            raise WatermarkOODError(f"{path}: not a valid watermark file ({error})") from None
        metadata.pop("format_version", None)
        metadata.pop("shape", None)
        return cls(tensor, metadata)


def _no_constants(name: str) -> float:
    raise ValueError(f"the JSON header holds {name}, which no field may be")


def check_watermark_metadata(prefix: str, metadata: Any) -> None:
    """The watermark metadata fields the library reads (objective, preset, hyperparameters), typed; others are
    free-form records (history, metrics) that no computation reads."""
    where = f"{prefix}." if prefix else ""
    check_mapping(prefix or "watermark metadata", metadata)
    version = metadata.get("format_version", FORMAT_VERSION)
    if version != FORMAT_VERSION:
        raise fail(f"{where}format_version", f"{FORMAT_VERSION}", version)
    for key in ("objective", "preset", "model"):
        if key in metadata:
            check_str(f"{where}{key}", metadata[key])
    if "hyperparameters" in metadata:
        for key, value in check_mapping(f"{where}hyperparameters", metadata["hyperparameters"]).items():
            for item in value if isinstance(value, list) else [value]:
                if item is not None and not isinstance(item, (str, bool)):
                    check_float(f"{where}hyperparameters.{key}", item, limit=float("inf"))
