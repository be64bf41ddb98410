"""Streaming image folders: same batches whatever the workers, same watermark as in memory, exact resume after
SIGKILL, torchrun shards, and unreadable files that stop with their path or are skipped and counted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_images
from PIL import Image
from interruptions import check_sigkills_then_resume_is_bit_identical

from watermark_ood.cli import main
from watermark_ood.core.errors import WatermarkOODError
from watermark_ood.data.readers import DataOptions, load_id_data, load_ood_data
from watermark_ood.data.streaming import FileImageSet, ImageTransform, step_batches
from watermark_ood.runtime.device import ExecutionConfig
from watermark_ood.watermark.config import FitConfig
from watermark_ood.watermark.file import Watermark
from watermark_ood.watermark.learner import WatermarkLearner

CPU = ExecutionConfig(device="cpu", channels_last=False)


def image_folder(root: Path, n_train: int = 96, n_test: int = 30, size: int = 12, split: str = "test") -> Path:
    """An ImageFolder tree of PNGs (train/<class>/, test|val/<class>/) holding the toy classes."""
    for name, n, seed in (("train", n_train, 0), (split, n_test, 1)):
        data = make_images(n, classes=3, size=size, seed=seed)
        for i, (image, label) in enumerate(zip(data.images, data.labels)):
            folder = root / name / f"class{int(label)}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{i:04d}.png")
    return root


def streamed(root: Path, workers: int = 2, **kwargs) -> tuple:
    return load_id_data(root, 12, options=DataOptions(stream=True, workers=workers, **kwargs))


def test_auto_streams_only_above_the_size_threshold(tmp_path):
    root = image_folder(tmp_path / "toy")
    small, _ = load_id_data(root, 12, options=DataOptions())
    large, _ = load_id_data(root, 12, options=DataOptions(stream_above_bytes=1000))
    assert not small.is_streaming and large.is_streaming
    assert torch.equal(large.materialize().images, small.images) and torch.equal(large.labels, small.labels)


def test_batches_are_identical_with_0_and_2_workers_including_random_crops(tmp_path):
    root = image_folder(tmp_path / "toy")
    order = torch.randperm(96, generator=torch.Generator().manual_seed(0))
    outs = []
    for workers in (0, 2):
        train, _ = streamed(root, workers, random_resized_crop=True)
        outs.append(list(step_batches(train, order, 1, 6, 16, seed=3, epoch=2, part=lambda i: slice(0, len(i)))))
    assert len(outs[0]) == 5
    for (k0, p0), (k1, p1) in zip(*outs):
        assert torch.equal(k0, k1) and torch.equal(p0, p1)
    other_epoch = list(step_batches(streamed(root, 0, random_resized_crop=True)[0], order, 1, 6, 16, seed=3,
                                    epoch=3, part=lambda i: slice(0, len(i))))
    assert not torch.equal(other_epoch[0][1], outs[0][0][1])  # crops are drawn anew each epoch


def test_streamed_fit_equals_in_memory_fit(tmp_path, toy_model, norm3):
    root = image_folder(tmp_path / "toy", size=8)
    options = DataOptions(stream=True, workers=2)
    train_stream, _ = load_id_data(root, 8, options=options)
    train_memory, _ = load_id_data(root, 8, options=DataOptions(stream=False))
    config = FitConfig(epochs=2, batch_size=16, sigma=0.5, rho=0.5, beta=1.0)
    a = WatermarkLearner(toy_model, norm3, config, CPU).fit(train_stream, progress=False)
    b = WatermarkLearner(toy_model, norm3, config, CPU).fit(train_memory, progress=False)
    assert torch.count_nonzero(a.watermark.tensor) > 0
    assert torch.equal(a.watermark.tensor, b.watermark.tensor)


def fit_command(data: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "watermark_ood", "fit", "--model", "small_cnn", "--random-weights", "--id-data", str(data),
            "--image-size", "12", "--stream", "--workers", "2", "--epochs", "3", "--batch-size", "16",
            "--checkpoint-every", "1", "--threads", "1", "--device", "cpu", "--no-progress", "--seed", "3",
            "--out", str(out), *extra]


def test_sigkill_while_streaming_then_resume_is_bit_identical(tmp_path):
    data = image_folder(tmp_path / "data", n_train=240)
    check_sigkills_then_resume_is_bit_identical(lambda out: fit_command(data, out), tmp_path)


def test_two_torchrun_processes_streaming_equal_one(tmp_path):
    data = image_folder(tmp_path / "data", n_train=60, size=8)
    args = ["fit", "--model", "small_cnn", "--random-weights", "--id-data", str(data), "--image-size", "8", "--stream", "--workers", "1",
            "--epochs", "2", "--batch-size", "15", "--device", "cpu", "--threads", "1", "--no-progress"]
    one = subprocess.run([sys.executable, "-m", "watermark_ood", *args, "--out", str(tmp_path / "one")],
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                          "-m", "watermark_ood", *args, "--out", str(tmp_path / "two")],
                         capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    a = Watermark.load(tmp_path / "one" / "watermark.safetensors").tensor
    b = Watermark.load(tmp_path / "two" / "watermark.safetensors").tensor
    assert torch.count_nonzero(a) > 0
    assert (a - b).abs().gt(1e-6).float().mean() < 0.01  # identical gradients, up to reduction-order rounding


def test_each_rank_decodes_only_its_shard(tmp_path):
    train, _ = streamed(image_folder(tmp_path / "toy"), 0)
    order = torch.arange(96)
    halves = [lambda i: slice(0, 8), lambda i: slice(8, 16)]
    first, second = (next(iter(step_batches(train, order, 0, 6, 16, 0, 0, part))) for part in halves)
    whole = next(iter(step_batches(train, order, 0, 6, 16, 0, 0, lambda i: slice(0, 16))))
    assert len(first[1]) == len(second[1]) == 8
    assert torch.equal(torch.cat([first[1], second[1]]), whole[1])


def corrupt(root: Path) -> Path:
    bad = sorted((root / "train" / "class1").iterdir())[2]
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    return bad


def assert_said_skipped(err: str, path) -> None:
    """A skipped file is said in one plain line on stderr: no Python warning with its source line."""
    said = [line for line in err.splitlines() if line.startswith("skipped ")]
    assert said and said[0].startswith(f"skipped {path}: not a readable image (")
    assert "Warning" not in err and "yield from" not in err


def test_unreadable_training_image_stops_with_its_path_then_skips_and_counts(tmp_path, capsys):
    data = image_folder(tmp_path / "data")
    bad = corrupt(data)
    out = tmp_path / "run"
    common = ["--model", "small_cnn", "--random-weights", "--id-data", str(data), "--image-size", "12", "--stream", "--workers", "2",
              "--epochs", "1", "--batch-size", "16", "--device", "cpu", "--no-progress"]
    assert main(["fit", *common, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert str(bad) in err and "--skip-bad-images" in err and len(err.splitlines()) == 1
    assert "resume" in err and (out / "checkpoint.safetensors").exists() and not (out / "watermark.safetensors").exists()
    assert main(["fit", *common, "--skip-bad-images", "--out", str(out)]) == 0
    assert_said_skipped(capsys.readouterr().err, bad)
    meta = json.loads((out / "watermark.json").read_text())
    assert meta["skipped_images"] == [str(bad)]


def test_evaluate_and_predict_stream_and_count_unreadable_files(tmp_path, capsys):
    data = image_folder(tmp_path / "data")
    ood = tmp_path / "Textures"
    ood.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (20, 16, 3), dtype=np.uint8)).save(ood / f"{i}.png")
    (ood / "5.png").write_bytes(b"broken")
    Watermark(torch.randn(1, 3, 12, 12) * 0.05, {"objective": "energy"}).save(tmp_path / "w.safetensors")
    common = ["--model", "small_cnn", "--random-weights", "--device", "cpu", "--no-progress"]
    args = ["evaluate", *common, "--watermark", str(tmp_path / "w.safetensors"), "--id-data", str(data),
            "--image-size", "12", "--ood-data", str(ood), "--all-ood", "--stream"]
    assert main([*args, "--out", str(tmp_path / "e1")]) == 2
    assert str(ood / "5.png") in capsys.readouterr().err
    assert main([*args, "--skip-bad-images", "--out", str(tmp_path / "e2")]) == 0
    assert_said_skipped(capsys.readouterr().err, ood / "5.png")
    run = json.loads((tmp_path / "e2" / "results.json").read_text())["runs"][0]
    assert run["skipped_images"] == {"count": 1, "files": [str(ood / "5.png")]}
    assert run["num_ood"]["Textures"] == 12  # files listed; the unreadable one is left out of the metrics

    assert main(["calibrate", *common, "--tpr", "0.8", "--score", "energy", "--id-data", str(data), "--image-size", "12",
                 "--out", str(tmp_path / "d.safetensors")]) == 0
    capsys.readouterr()
    assert main(["predict", *common, "--detector", str(tmp_path / "d.safetensors"), "--input", str(ood),
                 "--skip-bad-images", "--out", str(tmp_path / "p.csv")]) == 0
    rows = (tmp_path / "p.csv").read_text().splitlines()
    assert len(rows) == 13 and "5.png,,,unreadable,,," in rows  # no score, no decision: its own status
    # the ImageFolder's class names travel
    assert rows[0] == "input,score,is_ood,status,predicted_class,class_name,p_value"
    for row in (r.split(",") for r in rows[1:] if "unreadable" not in r):  # small_cnn has 10 outputs, 3 named
        assert row[3] == "ok" and row[2] in ("True", "False") and row[5] == (f"class{row[4]}" if int(row[4]) < 3
                                                                              else "")
    out, err = capsys.readouterr()
    assert "1 unreadable files skipped" in out
    assert_said_skipped(err, ood / "5.png")
    # the 16x20 files were resized to the detector's 12x12: said in one line with the count, never silently
    assert "adapted 11 of 12 input files to the detector's 3x12x12 (shorter side resized, then center crop): " \
           "11 resized from 16x20\n" in err


@pytest.mark.parametrize("score", ["energy", "vim", "knn", "odin", "knn+energy"])  # logits, features, bank,
def test_predict_survives_a_skipped_image_with_every_kind_of_detector(tmp_path, capsys, score):  # gradient, combo
    data = image_folder(tmp_path / "data")
    folder = tmp_path / "inputs"
    folder.mkdir()
    for f in sorted((data / "test" / "class0").iterdir())[:5]:
        (folder / f.name).write_bytes(f.read_bytes())
    (folder / "zz-broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    common = ["--model", "small_cnn", "--random-weights", "--device", "cpu", "--no-progress"]
    assert main(["calibrate", *common, "--tpr", "0.8", "--score", score, "--id-data", str(data), "--image-size", "12",
                 "--out", str(tmp_path / "d.safetensors")]) == 0
    capsys.readouterr()
    assert main(["predict", *common, "--detector", str(tmp_path / "d.safetensors"), "--input", str(folder),
                 "--skip-bad-images", "--out", str(tmp_path / "p.csv")]) == 0
    assert_said_skipped(capsys.readouterr().err, folder / "zz-broken.png")
    rows = [r.split(",") for r in (tmp_path / "p.csv").read_text().splitlines()[1:]]
    assert len(rows) == 6 and rows[-1][:4] == ["zz-broken.png", "", "", "unreadable"]
    assert all(np.isfinite(float(r[1])) and r[2] in ("True", "False") and r[3] == "ok" and r[4].isdigit()
               for r in rows[:5])


def test_transform_needs_a_size_for_random_crops_and_valid_channels():
    with pytest.raises(WatermarkOODError, match="image size"):
        ImageTransform(None, random_resized_crop=True)
    with pytest.raises(WatermarkOODError, match="channels"):
        ImageTransform(8, channels=2)
    with pytest.raises(WatermarkOODError, match="empty"):
        FileImageSet([], torch.zeros(0), "none")


def test_imagenet_val_layout_and_streamed_ood_subsampling_on_file_lists(tmp_path):
    root = image_folder(tmp_path / "imagenet", split="val")
    train, val = streamed(root)
    assert val.name == "imagenet-val" and len(val) == 30 and val.is_streaming
    ood = load_ood_data(root / "train", (3, 12, 12), options=DataOptions(stream=True))
    picked = ood.sample(10, 0)
    assert picked.is_streaming and len(picked) == 10 and len(set(picked.files)) == 10


def test_calibrate_on_a_streamed_folder_leaves_unreadable_training_images_out(tmp_path, capsys):
    data = image_folder(tmp_path / "data")
    corrupt(data)
    out = tmp_path / "knn.safetensors"
    assert main(["calibrate", "--model", "small_cnn", "--random-weights", "--device", "cpu", "--no-progress",
                 "--score", "knn", "--tpr", "0.8",  # 10 hold-out images: a conformal threshold at 0.8 needs 4
                 "--id-data", str(data), "--image-size", "12", "--stream", "--skip-bad-images",
                 "--out", str(out)]) == 0
    assert "skipped " in capsys.readouterr().err
    meta = json.loads(out.with_suffix(".json").read_text())
    assert np.isfinite(meta["threshold"])
