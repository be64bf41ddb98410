"""Issue 27's scorecard: one row per (model, ID data, OOD suite) from `run_scorecard.sh`'s detector_choice JSONs.

Per row: `--score auto`'s choice and its real mean and per-set FPR95, the best candidate in hindsight, energy,
MSP, the best single pytorch-ood detector (no combination), the Spearman correlation of the synthetic and the
real rankings, the choosing time, and the issue's targets: within 5 points of the best in hindsight on every
cell; far-OOD cells at most 0.7x energy; near-OOD cells no worse than the better of energy and MSP.

    python benchmarks/scorecard.py --results benchmarks/results/scorecard
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def row(name: str, result: dict) -> dict:
    candidates = [c for c in result["candidates"] if c["watermark"] == "none"]
    real = lambda c: c["real"]["mean"]["fpr95"]  # noqa: E731
    msp = next(c for c in candidates if c["score"] == "msp")
    single = min((c for c in candidates if "+" not in c["score"]), key=real)
    chosen = result["chosen"]["real"]["mean"]["fpr95"]
    best = result["best_in_hindsight"]["real"]["mean"]["fpr95"]
    energy = result["energy_no_watermark"]["mean"]["fpr95"]
    near = name.endswith("-near")
    target = chosen <= min(energy, real(msp)) if near else chosen <= 0.7 * energy
    return {"cell": name, "suite": "near" if near else "far", "model": result["model"],
            "chosen": result["chosen"]["score"], "chosen_fpr95": chosen,
            "per_set": {k: v["fpr95"] for k, v in result["chosen"]["real"].items() if k != "mean"},
            "best": result["best_in_hindsight"]["score"], "best_fpr95": best, "energy_fpr95": energy,
            "msp_fpr95": real(msp), "best_single": single["score"], "best_single_fpr95": real(single),
            "spearman": result["spearman_synthetic_vs_real"]["rho"], "choose_seconds": result["choose_seconds"],
            "within_5_points": chosen - best <= 0.05, "suite_target": bool(target)}


def markdown(rows: list[dict]) -> str:
    head = ["cell", "chosen (auto)", "its mean FPR95", "per set", "best in hindsight", "energy", "MSP",
            "best single detector", "Spearman", "choose s", "<= best + 5", "suite target"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    pct = lambda v: f"{100 * v:.1f}"  # noqa: E731
    for r in rows:
        sets = ", ".join(f"{k} {pct(v)}" for k, v in r["per_set"].items())
        target = ("<= min(energy, MSP)" if r["suite"] == "near" else "<= 0.7x energy") + \
            (": met" if r["suite_target"] else ": missed")
        out.append("| " + " | ".join([r["cell"], r["chosen"], pct(r["chosen_fpr95"]), sets,
                                      f"{r['best']} {pct(r['best_fpr95'])}", pct(r["energy_fpr95"]),
                                      pct(r["msp_fpr95"]), f"{r['best_single']} {pct(r['best_single_fpr95'])}",
                                      f"{r['spearman']:.2f}", f"{r['choose_seconds']:.0f}",
                                      "met" if r["within_5_points"] else "missed", target]) + " |")
    return "\n".join(out) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 0.5 * len(rows) + 1.5), layout="constrained")
    names = [r["cell"] for r in rows]
    for j, (key, label) in enumerate([("chosen_fpr95", "--score auto"), ("best_fpr95", "best in hindsight"),
                                      ("energy_fpr95", "energy"), ("msp_fpr95", "MSP")]):
        ax.barh([i + 0.2 * j for i in range(len(rows))], [100 * r[key] for r in rows], height=0.2, label=label)
    ax.set_yticks([i + 0.3 for i in range(len(rows))], names)
    ax.invert_yaxis()
    ax.set_xlabel("mean FPR95 over the cell's OOD sets, % (lower is better)")
    ax.legend(fontsize=7)
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", default="benchmarks/results/scorecard")
    args = p.parse_args()
    folder = Path(args.results)
    rows = [row(f.stem, json.loads(f.read_text())) for f in sorted(folder.glob("*.json")) if f.stem != "scorecard"]
    (folder / "scorecard.json").write_text(json.dumps(rows, indent=1))
    (folder / "scorecard.md").write_text(markdown(rows))
    plot(rows, folder / "scorecard.png")
    print(markdown(rows))


if __name__ == "__main__":
    main()
