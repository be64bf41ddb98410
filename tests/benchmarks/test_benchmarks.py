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


def test_issue14_gpu_script_dry_run_on_cpu_returns_curves_weights_and_record(tmp_path):
    """The prepared one-call GPU plan (benchmarks/device/issue14_gpu.sh), on CPU with one epoch of a toy suite:
    every stage runs and what comes back fits the device tool's limits (<= 8 files of <= 16 MiB)."""
    import tarfile

    from watermark_ood.models.registry import build_model

    shared = tmp_path / "shared"
    write_npz_dataset(shared / "data" / "cifar10", n_train=32, n_test=20, classes=10, size=32)
    (shared / "data" / "ood").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("flat", "noise"):
        np.savez(shared / "data" / "ood" / f"{name}.npz", x=rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8))
    (shared / "models" / "cifar10_resnet").mkdir(parents=True)
    torch.manual_seed(0)
    for arch in ("resnet20", "resnet56"):
        # untrained weights with a small head: the paper's energy preset exponentiates logits (exp(0.7 z)), and an
        # untrained head's large logits overflow it (the learner then stops with "the loss became inf", rightly)
        state = build_model(arch, 10, 3)[0].state_dict()
        head = [k for k, v in state.items() if k.endswith("weight") and v.dim() == 2]
        state[head[-1]] *= 0.01
        torch.save(state, shared / "models" / "cifar10_resnet" / f"{arch}-toy.th")
    out = tmp_path / "out"
    env = {"PATH": "/usr/bin:/bin", "SHARED": str(shared), "OUT": str(out), "WORK": str(tmp_path / "work"),
           "DEVICE": "cpu", "PRECISION": "fp32", "EPOCHS": "1", "WRN_EPOCHS": "1", "R20_VARIANTS": "energy hinge-mixed",
           "PY": sys.executable, "BUDGET": "900"}
    done = subprocess.run(["bash", str(BENCHMARKS / "device" / "issue14_gpu.sh")], env=env, capture_output=True,
                          text=True, cwd=BENCHMARKS.parent)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    files = sorted(p.name for p in out.iterdir())
    assert files == ["issue14.tgz", "issue14_gpu.log", "wrn40_2-oe.json", "wrn40_2-oe.safetensors"]
    assert all(p.stat().st_size <= 16 << 20 for p in out.iterdir())
    record = json.loads((out / "wrn40_2-oe.json").read_text())
    assert record["sha256"] == hashlib.sha256((out / "wrn40_2-oe.safetensors").read_bytes()).hexdigest()
    with tarfile.open(out / "issue14.tgz") as archive:
        names = set(archive.getnames())
        curves = {n for n in names if n.endswith(".jsonl")}
        assert curves == {f"curves/{c}.jsonl" for c in ("resnet56-hinge", "wrn40_2-energy", "wrn40_2-msp",
                                                         "resnet20-energy", "resnet20-hinge-mixed")}
        for name in curves:
            lines = [json.loads(line) for line in archive.extractfile(name).read().decode().splitlines()]
            assert [line["epoch"] for line in lines] == [0, 1] and set(lines[1]["per_set"]) == {"flat", "noise"}
        assert sum(n.endswith("watermark.safetensors") for n in names) == 5


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


def test_pool_report_decides_by_the_pre_registered_rule():
    """Pools that miss a target on any cell are out; the lowest mean wins; within 0.5 points, the smaller pool."""
    from pool_report import decide

    def outcome(fpr, meets=True):
        return {"real_mean_fpr95": fpr, "meets": meets}

    cells = {"a": {"shipped": outcome(0.40), "all": outcome(0.30, meets=False), "all but combood": outcome(0.33),
                   "shipped + multimahalanobis": outcome(0.332)},
             "b": {"shipped": outcome(0.50), "all": outcome(0.30), "all but combood": outcome(0.35),
                   "shipped + multimahalanobis": outcome(0.352)}}
    decision, means = decide(cells)
    assert decision == "shipped + multimahalanobis" and abs(means["all but combood"] - 0.34) < 1e-12
    cells["b"]["shipped + multimahalanobis"] = outcome(0.40)  # now 2.6 points worse on the mean: no longer tied
    assert decide(cells)[0] == "all but combood"
    for pools in cells.values():
        for pool in pools:
            pools[pool]["meets"] = False
    assert decide(cells)[0].startswith("shipped (no pool")


def test_pool_report_relative_rule_compares_the_challenger_with_the_shipped_pool():
    """The second test's rule: never worse by > 0.5 points on a cell, lower on the mean, at least 3 cells."""
    from pool_report import decide_relative

    def cell(base, challenger):
        return {"shipped": {"real_mean_fpr95": base}, "shipped + multimahalanobis": {"real_mean_fpr95": challenger}}

    cells = {"a": cell(0.30, 0.20), "b": cell(0.50, 0.504), "c": cell(0.40, 0.40)}
    decision, means = decide_relative(cells)
    assert decision == "shipped + multimahalanobis" and abs(means["shipped"] - 0.40) < 1e-12
    assert decide_relative({**cells, "d": cell(0.10, 0.11)})[0].endswith("on d)")
    assert decide_relative({name: cell(0.3, 0.3) for name in "abc"})[0].endswith("not lower on the mean)")
    assert "only 2 cells" in decide_relative({"a": cell(0.3, 0.2), "b": cell(0.3, 0.2)})[0]


def test_pool_report_tables_only_the_pools_every_cell_has(tmp_path):
    """The second test runs two pools: the report must table those and decide by the relative rule."""
    def result(fpr_p3):
        pick = {"pick": "pnml (none)", "real_mean_fpr95": 0.3, "gap_to_best_points": 1.0, "ratio_to_energy": 0.5}
        return {"rules": {"object-destroying kinds": pick},
                "pools": {"shipped + multimahalanobis": {**pick, "pick": "multimahalanobis (none)",
                                                         "real_mean_fpr95": fpr_p3}},
                "best_in_hindsight": {"score": "multimahalanobis", "real": {"mean": {"fpr95": 0.2}}}}
    files = []
    for name, fpr in {"a": 0.2, "b": 0.3, "c": 0.3}.items():
        files.append(tmp_path / f"{name}.json")
        files[-1].write_text(json.dumps(result(fpr)))
    out = tmp_path / "pools.md"
    subprocess.run([sys.executable, str(BENCHMARKS / "pool_report.py"), *map(str, files), "--rule", "relative",
                    "--out", str(out)], check=True, capture_output=True)
    text = out.read_text()
    assert "| cell | best in hindsight | shipped | shipped + multimahalanobis |" in text
    assert "Decision: **shipped + multimahalanobis**" in text and "| all |" not in text


def test_pool_report_compares_a_ranking_rule_with_the_baseline_and_a_targets_run(tmp_path):
    """The seam-free test: the rule's pick per cell against the earlier test's shipped pick, then one more run
    (ResNet-56) must meet both targets or the shipped default stays."""
    def pick(name, fpr, gap=1.0, ratio=0.5):
        return {"pick": f"{name} (none)", "real_mean_fpr95": fpr, "gap_to_best_points": gap, "ratio_to_energy": ratio}
    best = {"score": "pnml", "real": {"mean": {"fpr95": 0.2}}}
    rule = "seam-free object-destroying kinds"
    (tmp_path / "base").mkdir()
    files = []
    for name, (base, new) in {"a": (0.30, 0.25), "b": (0.40, 0.40), "c": (0.50, 0.49)}.items():
        (tmp_path / "base" / f"{name}.json").write_text(json.dumps(
            {"rules": {"object-destroying kinds": pick("pnml", base)}, "pools": {}, "best_in_hindsight": best}))
        files.append(tmp_path / f"{name}.json")
        files[-1].write_text(json.dumps({"rules": {"object-destroying kinds": pick("combood", 0.6),
                                                   rule: pick("knn", new)}, "best_in_hindsight": best}))

    def report(targets_run):
        out = tmp_path / "report.md"
        subprocess.run([sys.executable, str(BENCHMARKS / "pool_report.py"), *map(str, files), "--rule", "relative",
                        "--challenger-rule", rule, "--baseline", str(tmp_path / "base"), "--targets-run",
                        str(targets_run), "--out", str(out)], check=True, capture_output=True)
        return out.read_text()

    run = tmp_path / "r56.json"
    run.write_text(json.dumps({"rules": {rule: pick("knn", 0.3, gap=2.0, ratio=0.6)}}))
    text = report(run)
    assert f"| cell | best in hindsight | shipped | {rule} |" in text and "| a | pnml 20.0 | pnml 30.0" in text
    assert "r56: seam-free object-destroying kinds chose knn" in text and f"Decision: **{rule}**" in text
    run.write_text(json.dumps({"rules": {rule: pick("knn", 0.3, gap=6.0, ratio=0.6)}}))
    text = report(run)
    assert "misses the 5-point gap:" not in text and "(+6.0, 0.60x energy): misses the 5-point gap" in text
    assert "Decision: **shipped (r56 misses the targets)**" in text


def test_pool_report_decides_cells_measured_by_their_picks_only(tmp_path):
    """A cell run with ``detector_choice.py --measure picks`` has no best in hindsight and no gaps: the report says
    so, counts the gap target as not met, and the relative rule still decides on the picks' figures."""
    def pick(name, fpr):
        return {"pick": f"{name} (none)", "real_mean_fpr95": fpr, "gap_to_best_points": None, "ratio_to_energy": 0.5}
    rule = "both-family object-destroying kinds"
    files = []
    for name, (base, new) in {"a": (0.30, 0.25), "b": (0.40, 0.41), "c": (0.50, 0.50)}.items():
        files.append(tmp_path / f"{name}.json")
        files[-1].write_text(json.dumps({"rules": {rule: pick("knn", new)}, "pools": {"shipped": pick("pnml", base)},
                                         "best_in_hindsight": None, "measured": "picks"}))
    out = tmp_path / "report.md"
    subprocess.run([sys.executable, str(BENCHMARKS / "pool_report.py"), *map(str, files), "--rule", "relative",
                    "--challenger-rule", rule, "--baseline-pool", "shipped", "--out", str(out)], check=True,
                   capture_output=True)
    text = out.read_text()
    assert "| b | not measured | pnml 40.0 (gap n/m, 0.50x) MISS | knn 41.0 (gap n/m, 0.50x) MISS |" in text
    assert "Decision: **shipped (both-family object-destroying kinds worse by more than 0.5 points on b)**" in text
    from pool_report import missed_targets

    assert missed_targets(pick("knn", 0.2)) == ["the 5-point gap (not measured)"]


def test_pool_report_takes_the_shipped_pick_from_the_same_run_and_every_targets_run(tmp_path):
    """The fourth test: the shipped pool ran beside the challenger (``pools``), and each shared model's run must
    meet both targets."""
    def pick(name, fpr, gap=1.0):
        return {"pick": f"{name} (none)", "real_mean_fpr95": fpr, "gap_to_best_points": gap, "ratio_to_energy": 0.5}
    rule = "both-family object-destroying kinds"
    best = {"score": "pnml", "real": {"mean": {"fpr95": 0.2}}}
    files = []
    for name, (base, new) in {"a": (0.30, 0.25), "b": (0.40, 0.404), "c": (0.50, 0.50)}.items():
        files.append(tmp_path / f"{name}.json")
        rules = {"object-destroying kinds": pick("combood", 0.9), rule: pick("knn", new)}
        files[-1].write_text(json.dumps({"rules": rules, "pools": {"shipped": pick("pnml", base)},
                                         "best_in_hindsight": best}))
    runs = []
    for name, gap in (("r20", 1.0), ("r56", 7.0)):
        runs.append(tmp_path / f"{name}.json")
        runs[-1].write_text(json.dumps({"rules": {rule: pick("knn", 0.3, gap=gap)}}))
    out = tmp_path / "report.md"
    command = [sys.executable, str(BENCHMARKS / "pool_report.py"), *map(str, files), "--rule", "relative",
               "--challenger-rule", rule, "--baseline-pool", "shipped", "--out", str(out)]
    subprocess.run([*command, "--targets-run", str(runs[0])], check=True, capture_output=True)
    text = out.read_text()
    assert "| a | pnml 20.0 | pnml 30.0" in text and f"Decision: **{rule}**" in text and "r20:" in text
    subprocess.run([*command, "--targets-run", str(runs[0]), "--targets-run", str(runs[1])], check=True,
                   capture_output=True)
    assert "Decision: **shipped (r56 misses the targets)**" in out.read_text()


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
