"""Judge issue 27 item 5's pre-registered change (benchmarks/README, "near-OOD ranking kinds") from the cells of
`studies/run_class_kinds.sh`: does ranking on the object-destroying kinds plus `class-blend` and `class-mosaic`
meet the adoption rule written before any run?

(a) every near-OOD cell's pick no worse than the better of energy and MSP; (b) no far cell's pick worse than the
current choice by more than 1 point of mean FPR95; (c) the mean gap to the best in hindsight over the deciding
cells shrinks. Prints a Markdown table and writes the verdict as JSON.

    python studies/class_kinds_verdict.py --results benchmarks/results/scorecard-class-kinds
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

CURRENT, CHANGED = "object-destroying kinds", "object-destroying + class kinds"


def cell(name: str, result: dict) -> dict:
    rows = [c for c in result["candidates"] + result["candidates_of_other_rules"] if c["watermark"] == "none"]
    msp = next(c["real"]["mean"]["fpr95"] for c in rows if c["score"] == "msp")
    rules = result["rules"]
    return {"cell": name, "near": name.endswith("-near"), "best": result["best_in_hindsight"]["real"]["mean"]["fpr95"],
            "best_name": result["best_in_hindsight"]["score"], "energy": result["energy_no_watermark"]["mean"]["fpr95"],
            "msp": msp, "current": rules[CURRENT]["real_mean_fpr95"], "current_pick": rules[CURRENT]["pick"],
            "current_spearman": rules[CURRENT]["spearman"], "changed": rules[CHANGED]["real_mean_fpr95"],
            "changed_pick": rules[CHANGED]["pick"], "changed_spearman": rules[CHANGED]["spearman"]}


def verdict(cells: list[dict]) -> dict:
    near_ok = all(c["changed"] <= min(c["energy"], c["msp"]) for c in cells if c["near"])
    far_ok = all(c["changed"] - c["current"] <= 0.01 for c in cells if not c["near"])
    gap_now = sum(c["current"] - c["best"] for c in cells) / len(cells)
    gap_changed = sum(c["changed"] - c["best"] for c in cells) / len(cells)
    return {"a_near_cells_no_worse_than_min_energy_msp": near_ok, "b_no_far_cell_worse_by_1_point": far_ok,
            "c_mean_gap_shrinks": gap_changed < gap_now, "mean_gap_current_points": 100 * gap_now,
            "mean_gap_changed_points": 100 * gap_changed, "adopt": near_ok and far_ok and gap_changed < gap_now}


def markdown(cells: list[dict], judged: dict) -> str:
    pct = lambda v: f"{100 * v:.1f}"  # noqa: E731
    out = ["| cell | current pick | its FPR95 | Spearman | with class kinds | its FPR95 | Spearman | energy | MSP | "
           "best in hindsight |", "|" + "---|" * 10]
    for c in cells:
        out.append(f"| {c['cell']} | {c['current_pick']} | {pct(c['current'])} | {c['current_spearman']:.2f} | "
                   f"{c['changed_pick']} | {pct(c['changed'])} | {c['changed_spearman']:.2f} | {pct(c['energy'])} | "
                   f"{pct(c['msp'])} | {c['best_name']} {pct(c['best'])} |")
    out += ["", f"(a) near cells <= min(energy, MSP): {judged['a_near_cells_no_worse_than_min_energy_msp']}; "
            f"(b) no far cell worse by > 1 point: {judged['b_no_far_cell_worse_by_1_point']}; (c) mean gap to the "
            f"best {judged['mean_gap_current_points']:.1f} -> {judged['mean_gap_changed_points']:.1f} points: "
            f"{judged['c_mean_gap_shrinks']}. **Adopt: {judged['adopt']}**"]
    return "\n".join(out) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", default="benchmarks/results/scorecard-class-kinds")
    args = p.parse_args()
    folder = Path(args.results)
    cells = [cell(f.stem, json.loads(f.read_text())) for f in sorted(folder.glob("*.json")) if f.stem != "verdict"]
    if not cells:
        raise SystemExit(f"error: no cell JSONs in {folder}")
    judged = verdict(cells)
    text = markdown(cells, judged)
    (folder / "verdict.json").write_text(json.dumps({"cells": cells, "verdict": judged}, indent=1))
    (folder / "verdict.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
