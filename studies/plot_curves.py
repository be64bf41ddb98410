"""Plot the full-schedule curves (ID accuracy and per-set FPR95 every few epochs) written by full_schedule_curves.py.

    python studies/plot_curves.py benchmarks/results/full-schedule-cpu/*.jsonl \
        --out benchmarks/results/full-schedule-cpu/curves.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("curves", nargs="+")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    runs = {Path(c).stem: [json.loads(line) for line in Path(c).read_text().splitlines() if line.strip()]
            for c in args.curves}
    sets = sorted({s for lines in runs.values() for line in lines for s in line["per_set"]})
    fig, axes = plt.subplots(1, 2 + len(sets), figsize=(4 * (2 + len(sets)), 3.4), layout="constrained")
    for name, lines in runs.items():
        lines = sorted(lines, key=lambda r: r["epoch"])
        epochs = [r["epoch"] for r in lines]
        axes[0].plot(epochs, [100 * r["accuracy"] for r in lines], marker="o", label=name)
        axes[1].plot(epochs, [100 * r["mean_fpr95"] for r in lines], marker="o", label=name)
        for ax, s in zip(axes[2:], sets):
            ax.plot(epochs, [100 * r["per_set"][s]["fpr95"] for r in lines], marker="o", label=name)
    axes[0].set_title("ID test accuracy, %")
    axes[1].set_title("mean FPR95, % (lower is better)")
    for ax, s in zip(axes[2:], sets):
        ax.set_title(f"FPR95 {s}, %")
    for ax in axes:
        ax.set_xlabel("epoch (0 = no watermark)")
    axes[0].legend(fontsize=7)
    fig.savefig(args.out, dpi=110)


if __name__ == "__main__":
    main()
