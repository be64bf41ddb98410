"""Issue 26's pre-registered pool tests (benchmarks/README, 2026-12-03): each candidate pool's choice per cell,
measured on the cell's real OOD sets, against the targets (within 5 points of the best in hindsight, at most
0.7x energy), and the decision the pre-registered rule makes from them.

    python studies/pool_report.py benchmarks/results/pools/*.json --out benchmarks/results/pools/pools.md
    python studies/pool_report.py benchmarks/results/pools-retest/*.json --rule relative \
        --out benchmarks/results/pools-retest/pools.md
    python studies/pool_report.py benchmarks/results/seam-free/*.json --rule relative \
        --challenger-rule "seam-free object-destroying kinds" --baseline benchmarks/results/pools-retest \
        --targets-run benchmarks/results/detectors/resnet56-full-pool-seam-free.json \
        --out benchmarks/results/seam-free/seam-free.md
    python studies/pool_report.py benchmarks/results/both-family/*.json --rule relative \
        --challenger-rule "both-family object-destroying kinds" --baseline-pool shipped \
        --targets-run benchmarks/results/detectors/resnet20-both-family.json \
        --targets-run benchmarks/results/detectors/resnet56-both-family.json \
        --out benchmarks/results/both-family/report.md

The first test's rule (``targets``) asked each pool to meet both targets on every cell; it could not separate
pools that pick alike. The second (``relative``) compares one challenger pool with the shipped pool directly. The
third compares a ranking rule on the full pool (``--challenger-rule``, read from each cell's ``rules``) with the
shipped default's pick on the same cell in an earlier test (``--baseline``), and asks one more run
(``--targets-run``) to meet both targets.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

POOL_ORDER = ("shipped", "all", "all but combood", "shipped + multimahalanobis")  # smallest to largest: P0, P3 first
SIZE_ORDER = ("shipped", "shipped + multimahalanobis", "all but combood", "all")


def pool_outcomes(result: dict) -> dict[str, dict]:
    """{pool: {pick, real_mean_fpr95, gap_to_best_points, ratio_to_energy, meets}} of one cell's JSON."""
    shipped = next(iter(result["rules"].values()))
    out = {"shipped": shipped, **result["pools"]}
    return {pool: with_meets(o) for pool, o in out.items()}


def missed_targets(outcome: dict) -> list[str]:
    """Issue 26's targets the pick misses: within 5 points of the best in hindsight, at most 0.7x energy's FPR95
    (a gap not measured, ``detector_choice.py --measure picks``, counts as missed: nothing shows it is met)."""
    gap = outcome["gap_to_best_points"]
    return [t for t, hit in (("the 5-point gap" if gap is not None else "the 5-point gap (not measured)",
                              gap is not None and gap <= 5.0),
                             ("0.7x energy", outcome["ratio_to_energy"] <= 0.7)) if not hit]


def meets(outcome: dict) -> bool:
    return not missed_targets(outcome)


def with_meets(outcome: dict) -> dict:
    return {**outcome, "meets": meets(outcome)}


def rule_outcomes(result: dict, baseline: dict | None, rule: str, base_pool: str | None = None) -> dict[str, dict]:
    """{"shipped": the shipped default's pick, rule: ``rule``'s pick in ``result``} of one cell. The shipped pick is
    ``baseline``'s (an earlier test's JSON of the cell) or, with ``base_pool``, that pool's in ``result`` itself."""
    base = with_meets(result["pools"][base_pool]) if base_pool else pool_outcomes(baseline)["shipped"]
    return {"shipped": base, rule: with_meets(result["rules"][rule])}


def decide(cells: dict[str, dict[str, dict]]) -> tuple[str, dict[str, float]]:
    """The pre-registered decision: of the pools meeting both targets on every cell, the lowest mean real FPR95
    over the cells (a tie within 0.5 points: the smaller pool); none: the shipped pool stays."""
    means = {p: sum(c[p]["real_mean_fpr95"] for c in cells.values()) / len(cells) for p in POOL_ORDER}
    passing = [p for p in POOL_ORDER if all(c[p]["meets"] for c in cells.values())]
    if not passing:
        return "shipped (no pool met both targets on every cell)", means
    best = min(means[p] for p in passing)
    tied = [p for p in SIZE_ORDER if p in passing and means[p] - best <= 0.005]
    return tied[0], means


def decide_relative(cells: dict[str, dict[str, dict]], base: str = "shipped",
                    challenger: str = "shipped + multimahalanobis", margin: float = 0.005,
                    minimum_cells: int = 3) -> tuple[str, dict[str, float]]:
    """The second test's rule: the challenger replaces the base pool when at least ``minimum_cells`` cells
    finished, its choice is never worse than the base's by more than ``margin`` (0.5 points) on any cell, and its
    mean over the cells is lower; otherwise the base pool stays.

    >>> cell = lambda base, challenger: {"shipped": {"real_mean_fpr95": base},
    ...                                  "shipped + multimahalanobis": {"real_mean_fpr95": challenger}}
    >>> decide_relative({"a": cell(0.3, 0.2), "b": cell(0.5, 0.504), "c": cell(0.4, 0.4)})[0]
    'shipped + multimahalanobis'
    >>> decide_relative({"a": cell(0.3, 0.2), "b": cell(0.5, 0.51), "c": cell(0.4, 0.4)})[0]
    'shipped (shipped + multimahalanobis worse by more than 0.5 points on b)'
    """
    means = {p: sum(c[p]["real_mean_fpr95"] for c in cells.values()) / max(1, len(cells)) for p in (base, challenger)}
    if len(cells) < minimum_cells:
        return f"{base} (only {len(cells)} cells finished, {minimum_cells} needed)", means
    worse = [name for name, c in cells.items()
             if c[challenger]["real_mean_fpr95"] > c[base]["real_mean_fpr95"] + margin]
    if worse:
        return f"{base} ({challenger} worse by more than {100 * margin:.1f} points on {', '.join(worse)})", means
    if means[challenger] >= means[base]:
        return f"{base} ({challenger} not lower on the mean)", means
    return challenger, means


def load_cells(files: list[str], rule: str | None, baseline: str | None,
               base_pool: str | None = None) -> tuple[dict[str, dict[str, dict]], dict[str, dict]]:
    """Each cell's outcomes by pool (or, with ``rule``, the rule's pick next to the baseline's shipped pick), and
    each cell's best in hindsight."""
    cells, bests = {}, {}
    for f in files:
        result = json.loads(Path(f).read_text())
        bests[Path(f).stem] = result["best_in_hindsight"]
        if rule is None:
            cells[Path(f).stem] = pool_outcomes(result)
        else:
            base = None if base_pool else json.loads((Path(baseline) / Path(f).name).read_text())
            cells[Path(f).stem] = rule_outcomes(result, base, rule, base_pool)
    return cells, bests


def table(cells: dict[str, dict[str, dict]], bests: dict[str, dict]) -> list[str]:
    """The markdown table: per cell the best in hindsight and each pool's pick (gap, ratio to energy)."""
    first = next(iter(cells.values()))
    order = [pool for pool in (*POOL_ORDER, *first) if all(pool in pools for pools in cells.values())]
    order = list(dict.fromkeys(order))
    lines = ["| cell | best in hindsight | " + " | ".join(order) + " |", "|---" * (2 + len(order)) + "|"]
    for cell, pools in cells.items():
        best = bests[cell]
        row = [cell, f"{best['score']} {100 * best['real']['mean']['fpr95']:.1f}" if best else "not measured"]
        for pool in order:
            o = pools[pool]
            miss = "" if o["meets"] else " MISS"
            gap = "gap n/m" if o["gap_to_best_points"] is None else f"+{o['gap_to_best_points']:.1f}"
            row.append(f"{o['pick'].replace(' (none)', '')} {100 * o['real_mean_fpr95']:.1f} "
                       f"({gap}, {o['ratio_to_energy']:.2f}x){miss}")
        lines.append("| " + " | ".join(row) + " |")
    return lines


def targets_line(path: str, rule: str) -> tuple[str, bool]:
    """One run's pick by ``rule`` against both targets, as a sentence, and whether it meets them."""
    o = json.loads(Path(path).read_text())["rules"][rule]
    missed = missed_targets(o)
    verdict = "meets both targets" if not missed else "misses " + " and ".join(missed)
    return (f"{Path(path).stem}: {rule} chose {o['pick'].replace(' (none)', '')}, real mean FPR95 "
            f"{100 * o['real_mean_fpr95']:.1f} (+{o['gap_to_best_points']:.1f}, {o['ratio_to_energy']:.2f}x "
            f"energy): {verdict}"), not missed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="+")
    p.add_argument("--out", required=True)
    p.add_argument("--rule", choices=("targets", "relative"), default="targets",
                   help="the first test's rule (every target on every cell) or the second's (challenger vs shipped)")
    p.add_argument("--challenger-rule", help="compare this ranking rule's pick (each JSON's rules) with --baseline")
    p.add_argument("--baseline", help="folder of the earlier test's JSONs, same cell names: the shipped pick")
    p.add_argument("--baseline-pool", help="or: the shipped pick is this pool's in each JSON itself (--pools)")
    p.add_argument("--targets-run", action="append", default=[],
                   help="a further run whose --challenger-rule pick must meet both targets (repeatable)")
    args = p.parse_args()
    if (args.challenger_rule is None) != (args.baseline is None and args.baseline_pool is None):
        p.error("--challenger-rule goes with --baseline or --baseline-pool")
    cells, bests = load_cells(args.results, args.challenger_rule, args.baseline, args.baseline_pool)
    lines = table(cells, bests)
    challenger = args.challenger_rule or "shipped + multimahalanobis"
    decision, means = decide(cells) if args.rule == "targets" else decide_relative(cells, challenger=challenger)
    lines += ["", "Mean over the cells of the choice's real mean FPR95: " +
              ", ".join(f"{p} {100 * m:.1f}" for p, m in means.items())]
    for run in args.targets_run:
        sentence, ok = targets_line(run, challenger)
        lines += ["", sentence]
        if decision == challenger and not ok:
            decision = f"shipped ({Path(run).stem} misses the targets)"
    lines += ["", f"Decision: **{decision}**"]
    text = "\n".join(lines) + "\n"
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
