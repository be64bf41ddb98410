"""Smoke tests of benchmark scripts whose output other runs depend on (trained weights)."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from conftest import write_npz_dataset

from watermark_ood.models.registry import load_model

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))


def test_augment_crops_padded_images_and_flips():
    from train_classifier import augment

    pixels = torch.arange(1, 2 * 3 * 8 * 8 + 1).reshape(2, 3, 8, 8).to(torch.uint8)
    out = augment(pixels.repeat(50, 1, 1, 1), torch.Generator().manual_seed(0))
    assert out.shape == (100, 3, 8, 8) and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(pixels, (4, 4, 4, 4))
    windows = {tuple(padded[i % 2, :, y:y + 8, x:x + 8].flatten().tolist())
               for i in range(2) for y in range(9) for x in range(9)}
    flipped = {tuple(torch.tensor(w).view(3, 8, 8).flip(2).flatten().tolist()) for w in windows}
    assert all(tuple(o.flatten().tolist()) in windows | flipped for o in out)
    assert len({tuple(o.flatten().tolist()) for o in out}) > 20  # offsets and flips vary per image


def test_train_classifier_writes_loadable_weights_and_their_sha256(tmp_path):
    data = write_npz_dataset(tmp_path / "toy", n_train=64, n_test=16, size=32)
    out = tmp_path / "run" / "w.safetensors"
    subprocess.run([sys.executable, str(BENCHMARKS / "train_classifier.py"), "--model", "small_cnn", "--id-data",
                    str(data), "--epochs", "1", "--batch-size", "32", "--out", str(out)], check=True,
                   capture_output=True)
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert 0.0 <= record["test_accuracy"] <= 1.0 and record["epochs"] == 1
    from watermark_ood.data.readers import load_id_data
    from watermark_ood.evaluation.metrics import accuracy
    from watermark_ood.runtime.inference import predict_logits

    loaded = load_model("small_cnn", out)  # the weights written are the ones whose accuracy was recorded
    _, test = load_id_data(data)
    assert abs(accuracy(predict_logits(loaded.module, test, loaded.normalization), test.labels)
               - record["test_accuracy"]) < 1e-6


def test_train_classifier_resumes_to_the_same_weights_as_an_unbroken_run(tmp_path):
    data = write_npz_dataset(tmp_path / "toy", n_train=64, n_test=16, size=32)

    def train(out, *extra):
        subprocess.run([sys.executable, str(BENCHMARKS / "train_classifier.py"), "--model", "small_cnn", "--id-data",
                        str(data), "--epochs", "3", "--batch-size", "32", "--out", str(out), *extra], check=True,
                       capture_output=True)

    whole, split = tmp_path / "whole" / "w.safetensors", tmp_path / "split" / "w.safetensors"
    train(whole)
    train(split, "--stop-after", "1")
    assert not split.exists() and split.with_suffix(".resume.safetensors").exists()
    train(split)
    assert json.loads(split.with_suffix(".json").read_text())["sha256"] == \
        json.loads(whole.with_suffix(".json").read_text())["sha256"]


def test_detector_choice_measures_both_ranking_rules(tmp_path):
    """Issue 13's benchmark: the shipped rule's pick and the other rule's, each measured on the real (here toy) sets."""
    data = write_npz_dataset(tmp_path / "toy", n_train=340, n_test=40, size=16)  # >= 19 calibration images
    ood = tmp_path / "ood.npz"  # ID-like images from a second draw: no detector separates them perfectly
    np.savez_compressed(ood, x=np.load(write_npz_dataset(tmp_path / "other", n_test=40, size=16, seed=7)
                                       / "test.npz")["x"])
    weights = tmp_path / "w.safetensors"
    subprocess.run([sys.executable, str(BENCHMARKS / "train_classifier.py"), "--model", "small_cnn", "--id-data",
                    str(data), "--epochs", "1", "--batch-size", "32", "--out", str(weights)], check=True,
                   capture_output=True)
    out = tmp_path / "choice.json"
    subprocess.run([sys.executable, str(BENCHMARKS / "detector_choice.py"), "--model", "small_cnn", "--checkpoint",
                    str(weights), "--id-data", str(data), "--ood-data", str(ood), "--pools", "all but combood",
                    "--out", str(out)], check=True, capture_output=True)
    result = json.loads(out.read_text())
    from detector_choice import RULES, candidates_for

    from watermark_ood.models.architectures import cifar_resnet

    every, but = candidates_for("all", cifar_resnet(8)), candidates_for("all but combood", cifar_resnet(8))
    assert "combood" in every and set(every) - set(but) == {"combood"}
    shipped = candidates_for("shipped", cifar_resnet(8))
    plus = candidates_for("shipped + multimahalanobis", cifar_resnet(8))  # the default holds it since issue 26
    assert plus[:len(shipped)] == shipped and set(plus) == set(shipped) | {"multimahalanobis"}

    from watermark_ood.selection.auto_score import SelectionSettings

    assert set(result["rules"]) == set(RULES) and result["ranking_kinds"] == list(SelectionSettings().ranking_kinds)
    shipped = next(r for r in result["rules"].values() if r["ranking_kinds"] == result["ranking_kinds"])
    assert shipped["real_mean_fpr95"] == result["chosen"]["real"]["mean"]["fpr95"]
    measured = {f"{r['score']} ({r['watermark']})": r["real"]["mean"]["fpr95"]
                for r in result["candidates"] + result["candidates_of_other_rules"]}
    best = min(measured.values())
    assert set(result["pools"]) == {"all but combood"} and not result["pools"]["all but combood"]["pick"].startswith(
        "combood ")
    for rule in [*result["rules"].values(), *result["pools"].values()]:
        assert rule["pick"] in measured and rule["gap_to_best_points"] >= -1e-9
        assert abs(rule["gap_to_best_points"] - 100 * (rule["real_mean_fpr95"] - best)) < 1e-9
    # --measure picks: the same selections, and only the picks (and energy) measured, to the same figures
    picks = tmp_path / "picks.json"
    subprocess.run([sys.executable, str(BENCHMARKS / "detector_choice.py"), "--model", "small_cnn", "--checkpoint",
                    str(weights), "--id-data", str(data), "--ood-data", str(ood), "--pools", "all but combood",
                    "--measure", "picks", "--out", str(picks)], check=True, capture_output=True)
    cheap = json.loads(picks.read_text())
    assert cheap["measured"] == "picks" and result["measured"] == "all"
    assert cheap["best_in_hindsight"] is None and cheap["spearman_synthetic_vs_real"] is None
    every_pick = {r["pick"] for r in [*result["rules"].values(), *result["pools"].values()]} | {"energy (none)"}
    assert {f"{r['score']} ({r['watermark']})" for r in cheap["candidates"] + cheap["candidates_of_other_rules"]} \
        == every_pick and len(every_pick) < len(measured)
    for group in ("rules", "pools"):
        for label, outcome in cheap[group].items():
            assert outcome["pick"] == result[group][label]["pick"] and outcome["gap_to_best_points"] is None
            assert abs(outcome["real_mean_fpr95"] - result[group][label]["real_mean_fpr95"]) < 1e-12
            assert abs(outcome["ratio_to_energy"] - result[group][label]["ratio_to_energy"]) < 1e-12
    cost = tmp_path / "cost.json"
    subprocess.run([sys.executable, str(BENCHMARKS / "detector_choice.py"), "--model", "small_cnn", "--checkpoint",
                    str(weights), "--id-data", str(data), "--cost-only", "--out", str(cost)], check=True,
                   capture_output=True)
    timed = json.loads(cost.read_text())
    assert timed["choose_seconds"] > 0 and timed["reference_fit_seconds"] > 0
    assert timed["choose_over_fit"] == timed["choose_seconds"] / timed["reference_fit_seconds"]


SIDE_BY_SIDE = ["energy", "knn", "openmax", "multimahalanobis", "rankfeat", "nac", "mahalanobis-odin"]


def test_library_side_by_side_equals_the_library_where_settings_agree(tmp_path):
    """Issue 26's reference: where our settings are the library's defaults, the two mean FPR95s are equal."""
    data = write_npz_dataset(tmp_path / "toy", n_train=120, n_test=40, size=32, classes=10)
    ood = tmp_path / "ood.npz"
    np.savez_compressed(ood, x=np.load(write_npz_dataset(tmp_path / "other", n_test=40, size=16, seed=7)
                                       / "test.npz")["x"])
    weights = tmp_path / "w.safetensors"
    subprocess.run([sys.executable, str(BENCHMARKS / "train_classifier.py"), "--model", "resnet8", "--id-data",
                    str(data), "--epochs", "1", "--batch-size", "32", "--out", str(weights)], check=True,
                   capture_output=True)
    out = tmp_path / "side.json"
    subprocess.run([sys.executable, str(BENCHMARKS / "library_side_by_side.py"), "--model", "resnet8", "--checkpoint",
                    str(weights), "--id-data", str(data), "--ood-data", str(ood), "--scores", *SIDE_BY_SIDE,
                    "--out", str(out)], check=True, capture_output=True)
    result = json.loads(out.read_text())
    assert [r["detector"] for r in result["detectors"]] == SIDE_BY_SIDE
    for row in result["detectors"]:
        assert abs(row["gap_points"]) < 1e-6 and row["within_2_points"], row["detector"]
        assert 0 <= row["ours"]["mean"]["fpr95"] <= 1 and row["library"]["ood"]["auroc"] > 0


def test_gradient_kinds_speed_writes_both_rates_and_the_scores_agreement(tmp_path):
    """The script scores the same images with the library's class and with ours and records both rates and how far
    the scores are apart (not a timed test: the rates are recorded, never asserted)."""
    data = write_npz_dataset(tmp_path / "toy", n_train=40, n_test=20, size=16)
    ood = tmp_path / "ood.npz"
    np.savez_compressed(ood, x=np.zeros((5, 16, 16, 3), dtype=np.uint8))
    out = tmp_path / "speed.json"
    subprocess.run([sys.executable, str(BENCHMARKS / "gradient_kinds_speed.py"), "--id-data", str(data),
                    "--ood-data", str(ood), "--images", "8", "--batch", "4", "--skip-leaderboard", "--out", str(out)],
                   check=True, capture_output=True)
    result = json.loads(out.read_text())
    rows = {row["detector"]: row for row in result["side_by_side"]}
    assert set(rows) == {"graduncertainty", "gradnorm-all"} and "leaderboard" not in result
    for row in rows.values():
        assert row["images"] == 8 and row["library_images_per_second"] > 0 and row["ours_images_per_second"] > 0
        assert 0 <= row["max_relative_difference"] < 1e-5


def test_same_choice_compare_reports_every_difference(tmp_path):
    """Two records of --score auto (before / after a change): the choice, rows that moved, and score agreement."""
    base = {"commit": "a", "chosen": "knn", "threshold": 0.5, "seconds": 1.0, "probe_images": 3,
            "ranking": {"knn (none)": {"ok": True, "fpr95": 0.2, "auroc": 0.9},
                        "energy (none)": {"ok": True, "fpr95": 0.4, "auroc": 0.8}}, "scores": [1.0, 2.0, 4.0]}
    moved = {**base, "commit": "b", "scores": [1.0, 2.0, 4.000004],
             "ranking": {**base["ranking"], "energy (none)": {"ok": True, "fpr95": 0.4, "auroc": 0.81}}}
    paths = [tmp_path / "before.json", tmp_path / "after.json", tmp_path / "same.json"]
    for path, record in zip(paths, (base, moved)):
        path.write_text(json.dumps(record))
    subprocess.run([sys.executable, str(BENCHMARKS / "same_choice.py"), "compare", *map(str, paths[:2]), "--out",
                    str(paths[2])], check=True, capture_output=True)
    result = json.loads(paths[2].read_text())
    assert result["same_choice"] and result["threshold_identical"] and not result["scores_bit_identical"]
    assert abs(result["scores_max_relative_difference"] - 1e-6) < 1e-9
    assert (result["ranking_rows"], result["ranking_rows_identical"]) == (2, 1)
    assert result["ranking_differences"]["energy (none)"]["after"]["auroc"] == 0.81


def test_fdr_control_resplits_measure_both_rules():
    """One re-split of the FDR benchmark on synthetic scores: a batch of the asked size and OOD share, and each
    rule's false-discovery proportion and power computed from what it rejected (not a guarantee test: the
    simulation in tests/detection/test_conformal.py is)."""
    from fdr_control import resplit, summarise

    rng = np.random.default_rng(0)
    ids, oods = rng.normal(size=3000), rng.normal(-6.0, 1.0, size=500)
    runs = [resplit(ids, oods, 0.2, 0.1, 1000, 500, np.random.default_rng(i)) for i in range(20)]
    summary = summarise(runs)
    assert set(runs[0]) == {"bh_fdp", "bh_power", "per_input_fdp", "per_input_power"}
    assert summary["bh_power_mean"] > 0.99 and summary["per_input_power_mean"] > 0.99  # far OOD: all found
    assert 0 < summary["bh_fdp_mean"] <= 0.1 and summary["per_input_fdp_mean"] > summary["bh_fdp_mean"]
    none = resplit(ids, oods, 0.0, 0.1, 1000, 500, np.random.default_rng(1))
    assert none["bh_fdp"] in (0.0, 1.0) and np.isnan(none["bh_power"])  # no OOD input: any rejection is false


def test_stream_monitor_counts_false_alarms_and_delays():
    """The monitor benchmark's two kinds of streams on synthetic scores: ID streams are counted against 1/C, changed
    streams give the delay after the change (not a guarantee test: tests/detection/test_monitor.py has it)."""
    import argparse

    from stream_monitor import CHANGE_AT, changed_streams, id_streams

    rng = np.random.default_rng(0)
    ids, oods = rng.normal(size=3000), rng.normal(-4.0, 1.0, size=500)
    args = argparse.Namespace(streams=5, length=CHANGE_AT + 1000, calibration=500, alarm=100.0)
    quiet = id_streams(ids, args)
    assert quiet["false_alarms"] <= 1 and quiet["bound"] == 0.01 and quiet["microseconds_per_update"] > 0
    changed = changed_streams(ids, oods, 0.2, args)
    assert changed["never"] == 0 and changed["alarm_before_change"] == 0 and 0 < changed["median_delay"] < 200
