"""torchrun with 2 gloo processes on CPU gives the single-process watermark and metrics."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import write_npz_dataset
from PIL import Image

from watermark_ood.watermark.file import Watermark


def bench_args(data, noise, out, extra=()):
    return ["bench", "--model", "small_cnn", "--random-weights", "--id-data", str(data), "--ood-data", str(noise), "synthetic:uniform",
            "--objective", "msp", "energy", "--epochs", "2", "--batch-size", "15", "--device", "cpu", "--threads", "1",
            "--no-progress", "--out", str(out), *extra]


def torchrun(nproc: int, args: list[str]) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "watermark_ood", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def test_two_gloo_processes_match_one_process(tmp_path):
    data = write_npz_dataset(tmp_path / "toy", n_train=70, n_test=31)
    np.savez(tmp_path / "noise.npz", x=np.random.default_rng(0).integers(0, 256, (40, 8, 8, 3), dtype=np.uint8))
    single = subprocess.run([sys.executable, "-m", "watermark_ood", *bench_args(data, tmp_path / "noise.npz",
                                                                             tmp_path / "one")],
                            capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr
    double = torchrun(2, bench_args(data, tmp_path / "noise.npz", tmp_path / "two", ["--scores", "knn"]))
    assert double.returncode == 0, double.stderr[-3000:]
    for objective in ("msp", "energy"):
        a = Watermark.load(tmp_path / "one" / f"watermark-{objective}.safetensors").tensor
        b = Watermark.load(tmp_path / "two" / f"watermark-{objective}.safetensors").tensor
        # Sign updates of identical gradients: equal unless a reduction-order rounding flips a sign.
        assert (a - b).abs().gt(1e-6).float().mean() < 0.01
    one = json.loads((tmp_path / "one" / "results.json").read_text())["runs"]
    two = json.loads((tmp_path / "two" / "results.json").read_text())["runs"]
    for r1, r2 in zip(one, two):
        assert r1["accuracy"] == pytest.approx(r2["accuracy"], abs=1e-6)
        for condition in ("baseline", "watermarked"):
            for name, metrics in r1[condition].items():
                assert metrics == pytest.approx(r2[condition][name], abs=0.02)
    assert two[0]["scores"]["knn"]["cost"]["baseline"]["file_bytes"] > 0  # every detector scored under torchrun too
    # Only rank 0 wrote: no stray temporary files, one results file.
    assert not list((tmp_path / "two").rglob("*.tmp"))


def test_imagenet_style_imagefolder_at_224(tmp_path):
    rng = np.random.default_rng(0)
    for split, per_class in (("train", 4), ("test", 2)):
        for cls in ("n01440764", "n01443537"):
            folder = tmp_path / "imagenet" / split / cls
            folder.mkdir(parents=True)
            for i in range(per_class):
                size = (260 + 10 * i, 240)
                Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / f"{i}.JPEG")
    ood = tmp_path / "iNaturalist" / "images"
    ood.mkdir(parents=True)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (300, 330, 3), dtype=np.uint8)).save(ood / f"{i}.jpg")
    from watermark_ood.cli import main

    out = tmp_path / "out"
    code = main(["bench", "--model", "torchvision:resnet18", "--random-weights", "--id-data", str(tmp_path / "imagenet"),
                 "--image-size", "224", "--ood-data", str(tmp_path / "iNaturalist"), "--objective", "msp",
                 "--epochs", "1", "--batch-size", "4", "--all-ood", "--device", "cpu", "--no-progress",
                 "--out", str(out)])
    assert code == 0
    w = Watermark.load(out / "watermark-msp.safetensors")
    assert w.tensor.shape == (1, 3, 224, 224) and torch.count_nonzero(w.tensor) > 0
    run = json.loads((out / "results.json").read_text())["runs"][0]
    assert set(run["baseline"]) == {"iNaturalist", "mean"}


def test_ctrl_c_under_torchrun_stops_every_rank_with_a_checkpoint_and_resumes(tmp_path):
    """SIGINT to the whole process group (Ctrl-C in a terminal), after the first checkpoint: every rank finishes its
    step, says it stopped; the rerun resumes to the watermark of an uninterrupted two-process run. (The launcher's
    own exit status is torchrun's: 1, with its SignalException.)"""
    import os
    import signal

    from interruptions import dataset, wait_for

    data = dataset(tmp_path / "data")

    def command(out):
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m",
                "watermark_ood", "fit", "--model", "small_cnn", "--random-weights", "--id-data", str(data), "--epochs", "8",
                "--batch-size", "16", "--checkpoint-every", "1", "--threads", "1", "--device", "cpu",
                "--no-progress", "--seed", "3", "--out", str(out)]

    out = tmp_path / "run"
    proc = subprocess.Popen(command(out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    assert wait_for(out / "checkpoint.safetensors", proc, 180)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=180)
    assert err.count("watermark-ood: stopped; checkpoint written") == 2  # both ranks, together
    assert (out / "checkpoint.safetensors").is_file() and not (out / "watermark.safetensors").exists()
    resumed = subprocess.run(command(out), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0 and "resuming from epoch" in resumed.stderr
    reference = subprocess.run(command(tmp_path / "reference"), capture_output=True, text=True, timeout=600)
    assert reference.returncode == 0
    assert torch.equal(Watermark.load(out / "watermark.safetensors").tensor,
                       Watermark.load(tmp_path / "reference" / "watermark.safetensors").tensor)


INFER_UNDER_TORCHRUN = """
import sys, torch
from safetensors.torch import save_file
from watermark_ood.core import distributed
from watermark_ood.data.images import ImageSet
from watermark_ood.data.preprocessing import CIFAR
from watermark_ood.models.registry import build_model
from watermark_ood.runtime.device import ExecutionConfig
from watermark_ood.runtime.inference import infer

distributed.init_from_environment("cpu")
torch.manual_seed(0)
model, _ = build_model("small_cnn", num_classes=4)
images = ImageSet(torch.randint(0, 256, (37, 3, 8, 8), generator=torch.Generator().manual_seed(1),
                                dtype=torch.uint8), torch.full((37,), -1), "toy")
logits, features = infer(model, images, CIFAR, None, ExecutionConfig(device="cpu", threads=1, eval_batch_size=8),
                         features=True)
if distributed.is_main_process():
    save_file({"logits": logits, "features": features}, sys.argv[1])
distributed.shutdown()
"""


def test_features_are_sharded_and_gathered_in_order_under_torchrun(tmp_path):
    """infer(features=True) under 2 processes: each rank scores a shard; rank 0 holds every row, in order, equal to
    one process's (37 rows: the shards are unequal, and the batch of 8 does not divide either)."""
    from safetensors.torch import load_file

    script = tmp_path / "infer.py"
    script.write_text(INFER_UNDER_TORCHRUN)
    one = subprocess.run([sys.executable, str(script), str(tmp_path / "one.safetensors")], capture_output=True,
                         text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                          str(script), str(tmp_path / "two.safetensors")], capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = load_file(tmp_path / "one.safetensors"), load_file(tmp_path / "two.safetensors")
    assert a["features"].shape[0] == 37 and a["features"].shape[1] > 1
    for key in ("logits", "features"):
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-5)
