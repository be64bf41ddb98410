"""Randomness derived from (seed, epoch, step, tag): every random draw of a run can be remade from its position,
which is what makes resume exact and torchrun's processes agree with one process."""

from __future__ import annotations

import numpy as np
import torch


def derived_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers, so (seed, epoch, step) streams never overlap."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, dtype=np.uint64)[0] >> np.uint64(1))


def generator(device: torch.device, *parts: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(derived_seed(*parts))
