"""Helpers of the tests that interrupt real processes (SIGKILL, SIGTERM) and check the resumed result."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import torch
from conftest import make_images

from watermark_ood.watermark.file import Watermark


def dataset(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for split, n, seed in (("train", 480, 0), ("test", 40, 1)):
        data = make_images(n, classes=3, size=16, seed=seed)
        np.savez(root / f"{split}.npz", x=data.images.permute(0, 2, 3, 1).numpy(), y=data.labels.numpy())
    return root


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 60) -> bool:
    """Wait until this process has written (or rewritten) ``path``: it is then in the middle of fitting."""
    before = path.stat().st_mtime_ns if path.exists() else None
    end = time.time() + timeout
    while time.time() < end and proc.poll() is None:
        if path.exists() and path.stat().st_mtime_ns != before:
            return True
        time.sleep(0.02)
    return path.exists()


def run_with_sigkills(command: list[str], out: Path, kills_wanted: int = 3, seed: int = 0) -> int:
    """Run ``command`` again and again, SIGKILLing it at random points after it checkpointed, until it finishes."""
    rng, kills = random.Random(seed), 0
    for _ in range(12):
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if kills < kills_wanted and wait_for(out / "checkpoint.safetensors", proc):
            time.sleep(rng.uniform(0.0, 0.8))
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                kills += 1
        if proc.wait() == 0:
            break
    return kills


def check_sigkills_then_resume_is_bit_identical(command, tmp_path: Path) -> Path:
    """``command(out)`` run once undisturbed and once killed repeatedly: the same watermark both times."""
    reference = tmp_path / "reference"
    subprocess.run(command(reference), check=True, capture_output=True)
    expected = Watermark.load(reference / "watermark.safetensors").tensor
    out = tmp_path / "killed"
    kills = run_with_sigkills(command(out), out)
    assert kills >= 2, "the fit finished before it could be killed; make it longer"
    assert torch.equal(Watermark.load(out / "watermark.safetensors").tensor, expected)
    return out
