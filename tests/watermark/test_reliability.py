"""Faults not covered elsewhere; docs/reliability.md lists every fault and its test."""

from __future__ import annotations

import os

import pytest
import torch
from conftest import write_npz_dataset

from watermark_ood.cli import main
from watermark_ood.core.errors import WatermarkOODError
from watermark_ood.runtime.device import ExecutionConfig
from watermark_ood.watermark.config import FitConfig
from watermark_ood.watermark.learner import WatermarkLearner

FAST = ["--model", "small_cnn", "--random-weights", "--epochs", "1", "--batch-size", "16", "--no-progress"]


def test_damaged_fit_checkpoint_says_how_to_recover(tmp_path, capsys):
    data = write_npz_dataset(tmp_path / "toy")
    out = tmp_path / "out"
    assert main(["fit", *FAST, "--device", "cpu", "--id-data", str(data), "--out", str(out)]) == 0
    (out / "checkpoint.safetensors").write_bytes(b"\x00" * 30)
    assert main(["fit", *FAST, "--device", "cpu", "--id-data", str(data), "--out", str(out)]) == 2
    assert "delete it to start the fit afresh" in capsys.readouterr().err


def test_infinite_watermark_stops_with_the_step(toy_model, toy_train, norm3):
    cfg = FitConfig(alpha=float("inf"), epochs=1, batch_size=16, sigma=0.1)
    with pytest.raises(WatermarkOODError, match="watermark became NaN/infinite at epoch 1, step 1"):
        WatermarkLearner(toy_model, norm3, cfg, ExecutionConfig(device="cpu")).fit(toy_train, progress=False)


def test_unavailable_device_and_out_that_is_a_file(tmp_path, capsys):
    data = write_npz_dataset(tmp_path / "toy")
    if not torch.cuda.is_available():
        assert main(["fit", *FAST, "--device", "cuda", "--id-data", str(data), "--out", str(tmp_path / "o")]) == 2
        assert "no CUDA GPU" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert main(["fit", *FAST, "--device", "cpu", "--id-data", str(data), "--out", str(tmp_path / "file")]) == 2
    assert "not a folder" in capsys.readouterr().err


def test_outputs_stay_inside_out(tmp_path, monkeypatch):
    data = write_npz_dataset(tmp_path / "toy")
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    before = {p for p in tmp_path.rglob("*")}
    out = tmp_path / "bench"
    assert main(["bench", *FAST, "--device", "cpu", "--id-data", str(data), "--ood-data", "synthetic:uniform",
                 "--objective", "msp", "--out", str(out)]) == 0
    created = {p for p in tmp_path.rglob("*")} - before
    assert created and all(p == out or out in p.parents for p in created)
    assert not any(p.name.endswith(".tmp") for p in created)
    assert all(os.stat(p).st_mode & 0o044 for p in created if p.is_file())  # readable by others, like any output


def test_temporaries_left_by_a_killed_write_are_removed_on_restart(tmp_path):
    data = write_npz_dataset(tmp_path / "toy")
    out = tmp_path / "out"
    out.mkdir()
    stale = out / ".checkpoint.safetensors.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    unrelated = out / "notes.txt"
    unrelated.write_text("mine")
    assert main(["fit", *FAST, "--device", "cpu", "--id-data", str(data), "--out", str(out)]) == 0
    assert not stale.exists() and unrelated.read_text() == "mine"


def test_bf16_on_a_cpu_without_native_support_warns_once(monkeypatch):
    import warnings

    import torch

    from watermark_ood.runtime import device as runtime

    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: False)
    monkeypatch.setattr(runtime, "_BF16_WARNED", [])
    exe = runtime.ExecutionConfig(device="cpu", precision="bf16")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exe.autocast(torch.device("cpu"))
        exe.autocast(torch.device("cpu"))
    assert [str(w.message) for w in caught if "emulated" in str(w.message)].__len__() == 1
