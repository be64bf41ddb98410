"""Markdown tables for benchmarks/README.md from committed results (baseline vs paper preset vs auto).

    python studies/summarize.py benchmarks/results/cpu-2ep-10k benchmarks/results/cpu-2ep-10k-auto
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def runs(folder: Path) -> dict[tuple[str, str], dict]:
    out = {}
    for results in sorted(folder.glob("*/results.json")):
        for run in json.loads(results.read_text())["runs"]:
            out[(results.parent.name, run["objective"])] = run
    return out


def pct(v: float) -> str:
    return f"{100 * v:.1f}"


def rel(a: float, b: float) -> str:
    return f"{100 * (b - a) / a:+.0f}%" if a else "n/a"


def main() -> None:
    preset = runs(Path(sys.argv[1]))
    auto = runs(Path(sys.argv[2])) if len(sys.argv) > 2 and Path(sys.argv[2]).is_dir() else {}
    print("| model | objective (score) | mean FPR95: baseline / preset / auto | mean AUROC: baseline / preset / auto "
          "| accuracy: baseline / preset / auto | FPR95 change, preset / auto | fit time: preset / auto (s) |")
    print("|---|---|---|---|---|---|---|")
    for key, run in preset.items():
        b, p = run["baseline"]["mean"], run["watermarked"]["mean"]
        a_run = auto.get(key)
        a = a_run["watermarked"]["mean"] if a_run else None
        cell = lambda m: " / ".join([pct(b[m]), pct(p[m]), pct(a[m]) if a else "-"])  # noqa: E731
        acc = " / ".join([pct(run["accuracy"]["baseline"]), pct(run["accuracy"]["watermarked"]),
                          pct(a_run["accuracy"]["watermarked"]) if a_run else "-"])
        change = f"{rel(b['fpr95'], p['fpr95'])} / {rel(b['fpr95'], a['fpr95']) if a else '-'}"
        times = f"{run['timing']['fit_seconds']:.0f} / {a_run['timing']['fit_seconds']:.0f}" if a_run else \
            f"{run['timing']['fit_seconds']:.0f} / -"
        print(f"| {key[0]} | {key[1]} ({run['score']}) | {cell('fpr95')} | {cell('auroc')} | {acc} | {change} | {times} |")
    print()
    print("Per OOD set (FPR95 / AUROC, %): baseline -> preset -> auto")
    print()
    print("| model | objective | OOD set | FPR95 | AUROC |")
    print("|---|---|---|---|---|")
    for key, run in preset.items():
        a_run = auto.get(key)
        for name in run["baseline"]:
            if name == "mean":
                continue
            vals = [run["baseline"][name], run["watermarked"][name]] + ([a_run["watermarked"][name]] if a_run else [])
            print(f"| {key[0]} | {key[1]} | {name} | " + " -> ".join(pct(v["fpr95"]) for v in vals) + " | "
                  + " -> ".join(pct(v["auroc"]) for v in vals) + " |")
    for key, a_run in auto.items():
        info = a_run.get("auto", {})
        print(f"\n{key[0]} {key[1]}: auto chose "
              + ("the zero watermark" if info.get("zero_watermark_kept") else
                 ", ".join(f"{k}={v}" for k, v in (info.get("chosen") or {}).items()
                           if k in ("sigma", "rho", "beta", "t_in", "t_out", "alpha", "linf_budget", "schedule",
                                    "noise_scale")))
              + f"; search {info.get('search_seconds', 0):.0f}s + final fit {info.get('final_fit_seconds', 0):.0f}s"
              + (f"; validation FPR95 {pct(info['validation_baseline']['fpr95'])} -> "
                 f"{pct(info['validation_chosen']['fpr95'])}" if info.get("validation_chosen") else ""))


if __name__ == "__main__":
    main()
