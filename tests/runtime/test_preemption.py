"""Crash safety: SIGKILL at random points then resume gives the bit-identical watermark; SIGTERM stops cleanly."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from interruptions import check_sigkills_then_resume_is_bit_identical, dataset, wait_for

from watermark_ood.watermark.file import Watermark



def fit_command(data: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "watermark_ood", "fit", "--model", "small_cnn", "--random-weights", "--id-data", str(data),
            "--epochs", "3", "--batch-size", "16", "--checkpoint-every", "1", "--threads", "1",
            "--device", "cpu", "--no-progress", "--seed", "3", "--out", str(out)]



def test_sigkill_at_random_points_then_resume_is_bit_identical(tmp_path):
    data = dataset(tmp_path / "data")
    out = check_sigkills_then_resume_is_bit_identical(lambda out: fit_command(data, out), tmp_path)
    assert not list(out.glob(".*.tmp")), "a temporary file was left behind"


def long_command(command: str, data: Path, out: Path) -> list[str]:
    """fit or bench long enough (8 epochs of 30 steps, a checkpoint every step) that a signal sent after the first
    checkpoint always lands mid-work."""
    base = [sys.executable, "-m", "watermark_ood", command, "--model", "small_cnn", "--random-weights", "--id-data", str(data),
            "--epochs", "8", "--batch-size", "16", "--checkpoint-every", "1", "--threads", "1", "--device", "cpu",
            "--no-progress", "--seed", "3", "--out", str(out)]
    return base + (["--objective", "energy", "--ood-data", "synthetic:uniform"] if command == "bench" else [])


@pytest.mark.parametrize("command, sig", [("fit", signal.SIGTERM), ("fit", signal.SIGINT),
                                          ("bench", signal.SIGINT)])
def test_a_signal_mid_work_checkpoints_exits_130_and_the_rerun_resumes(tmp_path, command, sig):
    data = dataset(tmp_path / "data")
    out = tmp_path / "run"
    checkpoint = out / ("checkpoint.safetensors" if command == "fit" else "fit-energy/checkpoint.safetensors")
    proc = subprocess.Popen(long_command(command, data, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    assert wait_for(checkpoint, proc), "no checkpoint was written before the signal"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]  # landed mid-work: 240 steps cannot have finished
    assert "Run the same command again to resume" in err and len(err.strip().splitlines()) == 1
    assert checkpoint.is_file() and not (out / "watermark.safetensors").exists()
    resumed = subprocess.run(long_command(command, data, out), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    if command == "fit":
        assert "resuming from epoch" in resumed.stdout + resumed.stderr
        reference = tmp_path / "reference"
        subprocess.run(long_command(command, data, reference), check=True, capture_output=True, timeout=600)
        assert torch.equal(Watermark.load(out / "watermark.safetensors").tensor,
                           Watermark.load(reference / "watermark.safetensors").tensor)
    else:
        assert (out / "results.json").is_file()
