"""How work runs (device, precision, memory layout, compilation), separate from what it computes."""

from __future__ import annotations

import contextlib
import os
import platform
import warnings
from dataclasses import dataclass

import torch
from torch.fx.experimental.optimization import fuse

from watermark_ood.core.errors import WatermarkOODError

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class ExecutionConfig:
    """Execution settings.

    ``precision`` changes numerics (measured in benchmarks/speed.py); ``fuse_bn``
    folds eval-mode BatchNorm into the preceding convolution, which is exact in
    real arithmetic and differs only by float rounding. ``cuda_graphs`` records
    one sharpness-aware step (two forward/backward passes, about a thousand
    kernel launches for a ResNet-56) as a CUDA graph and replays it, which
    removes the launch overhead that dominates small CIFAR models on a GPU;
    it is ignored on other devices, under torchrun and with ``compile``, and falls
    back to eager steps (with a warning) when a model cannot be captured. It is
    on by default: benchmarks/speed.py measured identical watermarks and metrics
    with and without it, and 1.8-3.3x the steps per second of eager steps on an H200.
    """

    device: str = "auto"
    precision: str = "fp32"
    channels_last: bool = True
    fuse_bn: bool = True
    compile: bool = False
    cuda_graphs: bool = True
    eval_batch_size: int = 1000
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise WatermarkOODError(f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}")
        if self.eval_batch_size < 1:
            raise WatermarkOODError("eval_batch_size must be >= 1")

    def describe(self) -> dict[str, object]:
        """The settings as plain data, for results files."""
        return dict(self.__dict__)

    def torch_device(self) -> torch.device:
        return resolve_device(self.device)

    def autocast(self, device: torch.device, cache_enabled: bool = True):
        """Autocast context for ``precision``; CUDA graph capture needs ``cache_enabled=False``."""
        dtype = PRECISIONS[self.precision]
        if dtype is None:
            return contextlib.nullcontext()
        if device.type == "cpu" and dtype is torch.bfloat16:
            warn_if_bf16_is_emulated()
        return torch.autocast(device_type=device.type, dtype=dtype, cache_enabled=cache_enabled)

    def apply_threads(self) -> None:
        if self.threads:
            torch.set_num_threads(self.threads)


def cpu_has_native_bf16() -> bool | None:
    """Whether this CPU computes bf16 natively (AVX-512 BF16 or AMX); None where /proc/cpuinfo is unreadable."""
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return None
    return any(flag in flags for flag in ("avx512_bf16", "amx_bf16"))


_BF16_WARNED: list[bool] = []


def warn_if_bf16_is_emulated() -> None:
    """bf16 without native support is emulated: on an AVX2-only EPYC a ResNet-20 step was ~18x slower than fp32."""

    if not _BF16_WARNED and cpu_has_native_bf16() is False:
        _BF16_WARNED.append(True)
        warnings.warn("--precision bf16 on a CPU without AVX-512 BF16 or AMX is emulated and much slower than fp32 "
                      "(measured ~18x on a ResNet-20 fit); use --precision fp32 here", RuntimeWarning, stacklevel=3)


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present, else CPU; an unavailable device is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise WatermarkOODError(f"unknown device {name!r}; use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise WatermarkOODError("--device cuda was asked for but no CUDA GPU is available; use --device cpu or auto")
    return device


def device_name(device: torch.device) -> str:
    """Human-readable name of the hardware behind ``device`` (the GPU model, or the CPU and its core count)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)

    return f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores"


def prepare_model(model: torch.nn.Module, execution: ExecutionConfig, device: torch.device) -> torch.nn.Module:
    """A frozen, eval-mode module for input-gradient work, leaving the caller's model untouched when possible.

    With ``fuse_bn`` the model is traced and copied (torch.fx), BatchNorm is
    folded into convolutions, and the copy's parameters are frozen. Models that
    cannot be traced are used as they are.
    """
    model.eval()
    module = model
    if execution.fuse_bn:
        try:

            module = fuse(model, inplace=False)
        except Exception:  # noqa: BLE001 - untraceable models simply skip the optimisation
            module = model
    module = module.to(device)
    if execution.channels_last:
        module = module.to(memory_format=torch.channels_last)
    if module is not model:
        for p in module.parameters():
            p.requires_grad_(False)
    return module
