"""The finished studies' judging rules (studies/), which their committed verdicts depend on, and the one-call GPU
plan they ran."""

import hashlib
import importlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from conftest import write_npz_dataset

STUDIES = Path(__file__).resolve().parents[2] / "studies"


def study(name: str):
    """A study script imported as its own run would (its folder on sys.path: studies import each other)."""
    if str(STUDIES) not in sys.path:
        sys.path.insert(0, str(STUDIES))
    return importlib.import_module(name)


def test_auto_tolerance_summary_judges_as_pre_registered():
    judge = study("auto_tolerance_summary").judge

    ok = dict(in_bounds=True)
    assert judge({**ok, "mean_fpr95": 73.8}, {**ok, "mean_fpr95": 72.5}) == "win"
    assert judge({**ok, "mean_fpr95": 79.8}, {**ok, "mean_fpr95": 80.4}) == "loss"
    assert judge({**ok, "mean_fpr95": 66.5}, {**ok, "mean_fpr95": 66.55}) == "tie"
    assert judge({**ok, "mean_fpr95": 70.0}, {"in_bounds": False, "mean_fpr95": 60.0}) == "loss"  # out of bounds


def test_issue14_target_needs_both_shared_models_and_all_three_bounds():
    import doctest

    t = study("issue14_target")

    assert doctest.testmod(t).failed == 0
    assert t.judge(0.60, 0.59, 0.010, 0.10)["target_met"]           # bounds are inclusive
    assert not t.judge(0.60, 0.59, 0.011, 0.0)["target_met"]        # accuracy
    assert not t.judge(0.60, 0.59, 0.0, 0.101)["target_met"]        # one set much worse
    assert not t.judge(0.60, 0.60, 0.0, 0.0)["target_met"]          # not lower
    row = {"shared_model": True, "objective": "energy"}
    rows = [dict(row, model="resnet20", **t.judge(0.6, 0.5, 0, 0)),
            dict(row, model="resnet56", **t.judge(0.6, 0.7, 0, 0)),
            dict(row, model="resnet8", shared_model=False, **t.judge(0.6, 0.5, 0, 0))]
    assert not t.verdict(rows)["target_met"]
    rows[1].update(t.judge(0.6, 0.55, 0, 0))
    assert t.verdict(rows)["target_met"] and t.verdict(rows)["per_objective"]["energy"] == {"resnet20": True,
                                                                                           "resnet56": True}
    committed = t.collect()  # every source the script names exists and parses
    assert {r["model"] for r in committed} >= set(t.SHARED_MODELS)


def test_issue14_gpu_script_dry_run_on_cpu_returns_curves_weights_and_record(tmp_path):
    """The prepared one-call GPU plan (studies/issue14_gpu.sh), on CPU with one epoch of a toy suite:
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
    done = subprocess.run(["bash", str(STUDIES / "issue14_gpu.sh")], env=env, capture_output=True,
                          text=True, cwd=STUDIES.parent)
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


def test_pool_report_decides_by_the_pre_registered_rule():
    """Pools that miss a target on any cell are out; the lowest mean wins; within 0.5 points, the smaller pool."""
    decide = study("pool_report").decide

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
    decide_relative = study("pool_report").decide_relative

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
    subprocess.run([sys.executable, str(STUDIES / "pool_report.py"), *map(str, files), "--rule", "relative",
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
        subprocess.run([sys.executable, str(STUDIES / "pool_report.py"), *map(str, files), "--rule", "relative",
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
    subprocess.run([sys.executable, str(STUDIES / "pool_report.py"), *map(str, files), "--rule", "relative",
                    "--challenger-rule", rule, "--baseline-pool", "shipped", "--out", str(out)], check=True,
                   capture_output=True)
    text = out.read_text()
    assert "| b | not measured | pnml 40.0 (gap n/m, 0.50x) MISS | knn 41.0 (gap n/m, 0.50x) MISS |" in text
    assert "Decision: **shipped (both-family object-destroying kinds worse by more than 0.5 points on b)**" in text
    missed_targets = study("pool_report").missed_targets

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
    command = [sys.executable, str(STUDIES / "pool_report.py"), *map(str, files), "--rule", "relative",
               "--challenger-rule", rule, "--baseline-pool", "shipped", "--out", str(out)]
    subprocess.run([*command, "--targets-run", str(runs[0])], check=True, capture_output=True)
    text = out.read_text()
    assert "| a | pnml 20.0 | pnml 30.0" in text and f"Decision: **{rule}**" in text and "r20:" in text
    subprocess.run([*command, "--targets-run", str(runs[0]), "--targets-run", str(runs[1])], check=True,
                   capture_output=True)
    assert "Decision: **shipped (r56 misses the targets)**" in out.read_text()
