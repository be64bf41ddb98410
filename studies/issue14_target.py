"""Issue 14's target, checked against every committed watermark result (nothing is re-run, no figure typed in).

The target: for one objective, on both shared models, the matching score's mean FPR95 lower with the watermark
than without, accuracy lost <= 1 point, no OOD set worse by more than 10 points (aim: 30% lower). The moonshot:
watermark + the best detector beats that detector alone. Each row reads a bench ``results.json`` run or the first
and last point of a full-schedule curve (``*.jsonl``); rows on other models than the shared ResNet-20/56 are
shown for context and do not count.

    python studies/issue14_target.py            # writes results/issue14-target.{json,md}
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Iterator, Mapping

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
SHARED_MODELS = ("resnet20", "resnet56")
MAX_ACCURACY_DROP, MAX_SET_RISE = 0.01, 0.10  # the target's bounds, as fractions
# (result folder or curve file, what the row is): the runs the sections report, in the order they were made
SOURCES = [
    ("cpu-2ep-10k/resnet20", "paper preset, 2 epochs x 10k"),
    ("cpu-2ep-10k/resnet56", "paper preset, 2 epochs x 10k"),
    ("gpu-h200-50ep/resnet56", "paper preset, full schedule (H200)"),
    ("feature-watermark/resnet20", "bounded objective, 2 epochs x 10k"),
    ("mixed-surrogate/resnet20", "flat and grey surrogates, 2 epochs x 10k"),
    ("anchored-mixed/resnet20", "no outlier may rise, mixed surrogates, 2 epochs x 10k"),
    ("cpu-2ep-10k-auto-kinds/resnet20", "--preset auto (5 kinds, per-kind rule)"),
    ("auto-tolerance/resnet56-t0", "--preset auto (5 kinds, per-kind rule)"),
    ("full-schedule-cpu/resnet20-hinge.jsonl", "hinge, full schedule (CPU)"),
    ("detectors/resnet8-bench", "paper preset, 2 epochs x 10k"),
    ("auto-tolerance/resnet8-seed2-t1", "--preset auto --auto-tolerance 1"),
    ("full-schedule-cpu/resnet8-energy.jsonl", "paper preset, full schedule (CPU)"),
]


def worst_rise(base: Mapping[str, Any], marked: Mapping[str, Any]) -> float:
    """The largest rise of one OOD set's FPR95 (per-set ``{"fpr95": ...}`` records; a "mean" entry is skipped)."""
    return max(marked[k]["fpr95"] - base[k]["fpr95"] for k in base if k != "mean")


def within_bounds(accuracy_drop: float, set_rise: float) -> bool:
    """Accuracy lost at most 1 point and no set worse by more than 10 (fractions; rounding-safe at the edge)."""
    return accuracy_drop <= MAX_ACCURACY_DROP + 1e-9 and set_rise <= MAX_SET_RISE + 1e-9


def judge(base_mean: float, mark_mean: float, acc_drop: float, worst_rise: float) -> dict[str, Any]:
    """The target's three conditions and the aim, for one model and objective (FPR95 and accuracy as fractions).

    >>> judge(0.60, 0.40, 0.005, -0.01)["aim_met"]
    True
    >>> judge(0.60, 0.59, 0.02, 0.0)["target_met"]
    False
    """
    lower = mark_mean < base_mean
    target = lower and within_bounds(acc_drop, worst_rise)
    return {"lower": lower, "target_met": target, "aim_met": target and mark_mean <= 0.7 * base_mean,
            "relative_change": mark_mean / base_mean - 1.0}


def model_of(text: str) -> str:
    return text.split("@")[0].split(":")[-1]


def rows_from_results(path: Path, what: str) -> Iterator[dict[str, Any]]:
    for run in json.loads(path.read_text())["runs"]:
        base, mark = run["baseline"], run["watermarked"]
        acc = run["accuracy"]
        row = {"source": str(path.parent.relative_to(RESULTS)), "what": what, "model": model_of(run["model"]),
               "objective": run["objective"], "score": run["score"],
               "surrogate": run["hyperparameters"].get("surrogate") or "gaussian",
               "epochs": run["hyperparameters"].get("epochs"),
               "zero_kept": (run.get("auto") or {}).get("zero_watermark_kept"),
               "fpr95": [base["mean"]["fpr95"], mark["mean"]["fpr95"]],
               "accuracy": [acc["baseline"], acc["watermarked"]],
               "worst_set_rise": worst_rise(base, mark)}
        row.update(judge(*row["fpr95"], acc["baseline"] - acc["watermarked"], row["worst_set_rise"]))
        if run.get("scores"):  # the moonshot: the best detector alone vs the same detector with this watermark
            best = min(run["scores"], key=lambda s: run["scores"][s]["baseline"]["mean"]["fpr95"])
            b = run["scores"][best]
            row["best_detector"] = {"name": best, "fpr95": [b["baseline"]["mean"]["fpr95"],
                                                            b["watermarked"]["mean"]["fpr95"]]}
        yield row


def row_from_curve(path: Path, what: str) -> dict[str, Any]:
    points = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    first, last = points[0], max(points, key=lambda p: p["epoch"])
    rise = worst_rise(first["per_set"], last["per_set"])
    row = {"source": str(path.relative_to(RESULTS)), "what": what, "model": path.stem.split("-")[0],
           "objective": first["config"]["objective"], "score": first["score"],
           "surrogate": first["config"].get("surrogate") or "gaussian",
           "epochs": f"{last['epoch']} of {first['config']['epochs']}", "zero_kept": None,
           "fpr95": [first["mean_fpr95"], last["mean_fpr95"]], "accuracy": [first["accuracy"], last["accuracy"]],
           "worst_set_rise": rise}
    row.update(judge(first["mean_fpr95"], last["mean_fpr95"], first["accuracy"] - last["accuracy"], rise))
    return row


def collect(sources=SOURCES) -> list[dict[str, Any]]:
    rows = []
    for name, what in sources:
        path = RESULTS / name
        if path.suffix == ".jsonl":
            rows.append(row_from_curve(path, what))
        else:
            rows.extend(rows_from_results(path / "results.json", what))
    for row in rows:
        row["shared_model"] = row["model"] in SHARED_MODELS
    return rows


def verdict(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per objective: met on both shared models (by any of its runs on each)? And the moonshot."""
    objectives = sorted({r["objective"] for r in rows if r["shared_model"]})
    per_objective = {}
    for objective in objectives:
        per_objective[objective] = {m: any(r["target_met"] for r in rows if r["shared_model"] and r["model"] == m
                                           and r["objective"] == objective) for m in SHARED_MODELS}
    moonshot = [r for r in rows if "best_detector" in r and r["shared_model"]]
    return {"target_met": any(all(v.values()) for v in per_objective.values()), "per_objective": per_objective,
            "moonshot_met": any(r["best_detector"]["fpr95"][1] < r["best_detector"]["fpr95"][0] for r in moonshot)}


def markdown(rows: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    out = ["| model | run (results/...) | objective (score) | epochs | mean FPR95 without -> with | change | "
           "accuracy | worst set | target | best detector alone -> with w |", "|" + "---|" * 10]
    for r in rows:
        change = "zero kept" if r["zero_kept"] else f"{100 * r['relative_change']:+.1f}%"
        run = f"{r['what']} (`{r['source']}`)"
        det = r.get("best_detector")
        best = "" if det is None else f"{det['name']} {100 * det['fpr95'][0]:.1f} -> {100 * det['fpr95'][1]:.1f}"
        out.append(f"| {r['model']}{'' if r['shared_model'] else ' (context)'} | {run} | {r['objective']} "
                   f"({r['score']}) | {r['epochs'] or '-'} | {100 * r['fpr95'][0]:.1f} -> {100 * r['fpr95'][1]:.1f} | "
                   f"{change} | {100 * r['accuracy'][0]:.1f} -> {100 * r['accuracy'][1]:.1f} | "
                   f"{100 * r['worst_set_rise']:+.1f} | {'met' if r['target_met'] else 'missed'} | {best} |")
    met = [o for o, v in summary["per_objective"].items() if all(v.values())]
    target = "met by " + ", ".join(met) if met else "missed by every objective"
    out += ["", f"Target on both shared models: {target}; "
                f"moonshot (shared models): {'met' if summary['moonshot_met'] else 'missed'}."]
    return "\n".join(out) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(RESULTS / "issue14-target"))
    args = p.parse_args()
    rows = collect()
    summary = verdict(rows)
    Path(args.out + ".json").write_text(json.dumps({"rows": rows, **summary}, indent=1))
    text = markdown(rows, summary)
    Path(args.out + ".md").write_text(text)
    print(text, end="")


if __name__ == "__main__":
    main()
