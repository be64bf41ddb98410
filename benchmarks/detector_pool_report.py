"""Issue 26's tables from the JSON the benchmarks wrote: `--score auto` with the shipped pool vs the full pool
(`detector_choice.py`, the shipped pool's figures from the scorecard cell of the same model), every candidate's
real mean FPR95 without a watermark (the leaderboard), and the side-by-side with pytorch-ood
(`library_side_by_side.py`). Prints Markdown and writes it beside the results; measures nothing itself.

    python benchmarks/detector_pool_report.py --models resnet20 resnet56 \
        --out benchmarks/results/detectors/full-pool.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def pct(value: float) -> str:
    return f"{100 * value:.1f}"


def choice_rows(models: list[str]) -> list[str]:
    out = ["| model | pool | choice | its mean FPR95 | best in hindsight | gap (points) | x energy | Spearman | "
           "choosing (s) |", "|---|---|---|---|---|---|---|---|---|"]
    for model in models:
        for pool, path in (("shipped (16)", RESULTS / "scorecard" / f"cifar10-{model}-far.json"),
                           ("full", RESULTS / "detectors" / f"{model}-full-pool.json")):
            if not path.is_file():
                out.append(f"| {model} | {pool} | not measured | | | | | | |")
                continue
            d = json.loads(path.read_text())
            best = d["best_in_hindsight"]
            out.append(f"| {model} | {pool} | {d['chosen']['score']} ({d['chosen']['watermark']}) | "
                       f"{pct(d['chosen']['real']['mean']['fpr95'])} | {best['score']} "
                       f"{pct(best['real']['mean']['fpr95'])} | {d['targets']['gap_to_best_points']:.1f} | "
                       f"{d['targets']['ratio_to_energy']:.2f} | {d['spearman_synthetic_vs_real']['rho']:.2f} | "
                       f"{d['choose_seconds']:.0f} |")
    return out


def leaderboard_rows(models: list[str]) -> list[str]:
    tables = {}
    for model in models:
        path = RESULTS / "detectors" / f"{model}-full-pool.json"
        if path.is_file():
            rows = json.loads(path.read_text())["candidates"]
            tables[model] = {r["score"]: r["real"]["mean"]["fpr95"] for r in rows if r["watermark"] == "none"}
    if not tables:
        return ["(no full-pool run yet)"]
    names = sorted({n for t in tables.values() for n in t}, key=lambda n: min(t.get(n, 9) for t in tables.values()))
    out = ["| detector | " + " | ".join(f"{m} mean FPR95" for m in tables) + " |",
           "|---|" + "---|" * len(tables)]
    out += [f"| {n} | " + " | ".join(pct(t[n]) if n in t else "" for t in tables.values()) + " |" for n in names]
    return out


def library_rows(models: list[str]) -> list[str]:
    out = ["| model | detector | ours | pytorch-ood | gap (points) | settings |", "|---|---|---|---|---|---|"]
    for model in models:
        path = RESULTS / "detectors" / f"{model}-library.json"
        if not path.is_file():
            out.append(f"| {model} | not measured | | | | |")
            continue
        for r in json.loads(path.read_text())["detectors"]:
            out.append(f"| {model} | {r['detector']} | {pct(r['ours']['mean']['fpr95'])} | "
                       f"{pct(r['library']['mean']['fpr95'])} | {r['gap_points']:+.2f} | {r['settings']} |")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["resnet20", "resnet56"])
    p.add_argument("--out", default=str(RESULTS / "detectors" / "full-pool.md"))
    args = p.parse_args()
    text = "\n".join(["### `--score auto`: shipped pool vs full pool", "", *choice_rows(args.models), "",
                      "### Every candidate without a watermark, real mean FPR95 (%)", "",
                      *leaderboard_rows(args.models), "", "### Ours vs pytorch-ood with library defaults", "",
                      *library_rows(args.models), ""])
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
