"""Judge issue 14's pre-registered test of ``--auto-tolerance`` (benchmarks/README) from the bench results.

Reads ``results/auto-tolerance/NAME-t0`` and ``NAME-t1`` for each model, applies the rule written before the runs
(per model x objective: rule T wins when its shipped watermark's mean FPR95 is lower than the exact rule's by at
least 0.1 point within the bounds: accuracy within 1 point of no watermark, no set more than 10 points worse than
no watermark; loses when higher by at least 0.1 or out of bounds where the exact rule was not; else a tie), prints
the table and writes ``results/auto-tolerance/summary.json``.

    python studies/auto_tolerance_summary.py resnet8-seed2 resnet14-seed1
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from issue14_target import within_bounds, worst_rise

ROOT = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "auto-tolerance"


def shipped(run: dict[str, Any]) -> dict[str, Any]:
    """What one run shipped, on the real sets, in points."""
    rise = worst_rise(run["baseline"], run["watermarked"])
    drop = run["accuracy"]["baseline"] - run["accuracy"]["watermarked"]
    return {"zero_kept": run["auto"]["zero_watermark_kept"], "mean_fpr95": 100 * run["watermarked"]["mean"]["fpr95"],
            "no_watermark_fpr95": 100 * run["baseline"]["mean"]["fpr95"], "accuracy_drop": 100 * drop,
            "worst_set_change": 100 * rise, "in_bounds": within_bounds(drop, rise)}


def judge(exact: dict[str, Any], loose: dict[str, Any]) -> str:
    """'win', 'loss' or 'tie' for rule T (``loose``) against the exact rule, as pre-registered."""
    if exact["in_bounds"] and not loose["in_bounds"]:
        return "loss"
    diff = loose["mean_fpr95"] - exact["mean_fpr95"]
    if diff <= -0.1 and loose["in_bounds"]:
        return "win"
    return "loss" if diff >= 0.1 else "tie"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+", help="names under results/auto-tolerance (without -t0/-t1)")
    p.add_argument("--root", type=Path, default=ROOT)
    args = p.parse_args()
    cases = []
    for name in args.models:
        runs = {t: {r["objective"]: r for r in json.loads((args.root / f"{name}-t{t}" / "results.json").read_text())
                    ["runs"]} for t in (0, 1)}
        for objective in runs[0]:
            exact, loose = shipped(runs[0][objective]), shipped(runs[1][objective])
            cases.append({"model": name, "objective": objective, "exact": exact, "tolerance_1": loose,
                          "outcome": judge(exact, loose)})
    print("| model | objective | no watermark | exact rule (0) | rule T (1) | outcome |\n|---|---|---|---|---|---|")
    for c in cases:
        cell = lambda s: ("zero kept" if s["zero_kept"] else  # noqa: E731
                          f"{s['mean_fpr95']:.1f} (accuracy {-s['accuracy_drop']:+.1f}, worst set {s['worst_set_change']:+.1f})")
        print(f"| {c['model']} | {c['objective']} | {c['exact']['no_watermark_fpr95']:.1f} | {cell(c['exact'])} | "
              f"{cell(c['tolerance_1'])} | {c['outcome']} |")
    tally = {k: sum(c["outcome"] == k for c in cases) for k in ("win", "loss", "tie")}
    adopted = tally["win"] > tally["loss"]
    print(f"rule T: {tally['win']} wins, {tally['loss']} losses, {tally['tie']} ties -> "
          f"{'adopted' if adopted else 'not adopted'} (adopted only if wins > losses)")
    (args.root / "summary.json").write_text(json.dumps({"cases": cases, "tally": tally, "adopted": adopted}, indent=1))


if __name__ == "__main__":
    main()
