"""The finished studies' judging rules (studies/), which their committed verdicts depend on."""

import importlib
import sys
from pathlib import Path

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
