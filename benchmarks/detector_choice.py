"""Issue 13 targets: does `--score auto` (ID data only) pick a detector close to the best in hindsight?

For one model: runs the selection (timed) with the shipped ranking kinds, and again with the other rules
(`RULES`: all synthetic kinds, only those that destroy the object, or those plus the class kinds; `--rules` picks),
then measures every candidate either
ranked on the real OOD sets (the paper's protocol) and reports
- the chosen detector's mean FPR95 vs the best candidate in hindsight and vs the energy score,
- the same for the other rule's pick (`rules`), so the two can be compared on models neither was written on,
- the Spearman correlation between the synthetic-outlier ranking and the real-OOD ranking,
- the selection's wall time vs one watermark fit of the same schedule on the same model (optional, --fit-reference).
OOD data is read only *after* the choice, to measure it. ``--measure picks`` measures only what a pool test's
decision reads (each rule's and pool's pick, and energy for the ratio): several times cheaper where gradient
detectors would each score every real image; the best in hindsight, the gaps to it and the Spearman correlation
are then not measured (null in the JSON).

    python benchmarks/detector_choice.py --model resnet20 --checkpoint ../shared/models/cifar10_resnet/resnet20-*.th \
        --id-data ../shared/data/cifar10 --ood-data ../shared/data/ood/*.npz \
        --watermark benchmarks/results/detectors/resnet20-bench/watermark-energy.safetensors \
        --out benchmarks/results/detectors/resnet20-choice.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from watermark_ood.data.readers import load_id_data, load_ood_data
from watermark_ood.data.synthetic import CLASS_KINDS, OBJECT_DESTROYING_KINDS, OUTLIER_KINDS
from watermark_ood.detection.detector import Detector
from watermark_ood.evaluation.metrics import mean_metrics, ood_metrics
from watermark_ood.evaluation.protocol import protocol_subsample
from watermark_ood.models.registry import load_model
from watermark_ood.pipelines.bench import fit_config_for
from watermark_ood.runtime.device import ExecutionConfig
from watermark_ood.selection.auto_score import SelectionSettings, select_detector, selection_splits
from watermark_ood.selection.pools import candidate_pool
from watermark_ood.watermark.file import Watermark
from watermark_ood.watermark.learner import WatermarkLearner


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--id-data", required=True)
    p.add_argument("--ood-data", nargs="+", help="required unless --cost-only")
    p.add_argument("--watermark")
    p.add_argument("--fit-reference", action="store_true",
                   help="also time one watermark fit (energy preset, 2 epochs x 10k images, fp32)")
    p.add_argument("--cost-only", action="store_true",
                   help="only time the shipped selection against one watermark fit (no OOD data, one rule)")
    p.add_argument("--rules", nargs="+", choices=list(RULES), help="ranking rules to run besides the shipped "
                   "one [all of RULES]")
    p.add_argument("--candidates", choices=list(POOLS), default="shipped",
                   help="the candidate pool of the measured choice: the shipped candidates of --score auto, or every "
                        "detector the model runs (issue 26), or every one but combood")
    p.add_argument("--pools", nargs="+", choices=list(POOLS), default=[],
                   help="other candidate pools to choose from as well (shipped ranking rule), each reported beside "
                        "the measured choice under 'pools' [none]")
    p.add_argument("--measure", choices=("all", "picks"), default="all",
                   help="measure every candidate on the real sets, or only the rules' and pools' picks and energy "
                        "[all]")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    if not args.cost_only and not args.ood_data:
        p.error("--ood-data is required (unless --cost-only)")

    execution = ExecutionConfig(device="cpu")
    train, test = load_id_data(args.id_data)
    model = load_model(args.model, args.checkpoint)
    watermark = Watermark.load(args.watermark, expected_shape=test.image_shape) if args.watermark else None

    if args.cost_only:
        result = choice_cost(model, train, watermark, execution)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))
        print(json.dumps(result, indent=1))
        return
    shipped_kinds = tuple(SelectionSettings().ranking_kinds)
    selections, choose_seconds = {}, 0.0
    rules = {rule: kinds for rule, kinds in RULES.items() if args.rules is None or rule in args.rules
             or kinds == shipped_kinds}
    runs = [(rule, kinds, args.candidates) for rule, kinds in sorted(rules.items(), key=lambda item: item[1] !=
                                                                      shipped_kinds)]  # the shipped rule first
    runs += [(f"pool {pool}", shipped_kinds, pool) for pool in args.pools if pool != args.candidates]
    for label, kinds, pool in runs:
        t0 = time.perf_counter()
        settings = SelectionSettings(ranking_kinds=kinds, candidates=candidates_for(pool, model.module))
        selections[label] = select_detector(model.module, model.normalization, train, watermark, 0.95, settings,
                                            execution, model.model_id, log=print)
        seconds = time.perf_counter() - t0
        choose_seconds = choose_seconds or seconds  # the shipped rule's time
        print(f"{label}: chose {selections[label].detector.score} (watermark: "
              f"{selections[label].ranking[0]['watermark']}) in {seconds:.0f}s", flush=True)
    shipped_rule = next(rule for rule, kinds in RULES.items() if kinds == shipped_kinds)
    selection = selections[shipped_rule]
    chosen = selection.detector
    other_rows = [r for rule, sel in selections.items() if rule != shipped_rule for r in sel.ranking]
    seen = {(r["score"], r["watermark"]) for r in selection.ranking}

    # --- only now is OOD data read, to measure the choice
    ood = protocol_subsample([load_ood_data(s, test.image_shape) for s in args.ood_data], len(test), 0)
    fit_set, z_set, _, _ = selection_splits(train, SelectionSettings())  # the parts the selection fitted on
    rows, extra, cache = [], [], {}
    wanted = measured_rows(selections) if args.measure == "picks" else None
    for row in selection.ranking + [r for r in other_rows if (r["score"], r["watermark"]) not in seen]:
        if not row["ok"] or (wanted is not None and (row["score"], row["watermark"]) not in wanted):
            continue
        mark = watermark if row["watermark"] == "given" else None
        key = row["watermark"]
        if key not in cache:
            probe = Detector(model.module, model.normalization, mark, "knn", execution=execution)
            cache[key] = {"fit": probe.outputs(fit_set), "z": probe.outputs(z_set), "test": probe.outputs(test),
                          "ood": {s.name: probe.outputs(s) for s in ood}}
        c = cache[key]
        detector = Detector(model.module, model.normalization, mark, row["score"], execution=execution)
        detector.fit_shared(fit_set, c["fit"], c["z"])
        if detector.own_passes:
            s_id, s_ood = detector.scores(test), {s.name: detector.scores(s) for s in ood}
        else:
            s_id, s_ood = detector.scores_from(*c["test"]), {k: detector.scores_from(*v) for k, v in c["ood"].items()}
        per = {k: ood_metrics(s_id, v) for k, v in s_ood.items()}
        (rows if (row["score"], row["watermark"]) in seen else extra).append({**row, "real": {**per, "mean": mean_metrics(per)}})
        print(f"{row['score']:>28s} {row['watermark']:5s} synthetic FPR95 {100 * row['ranking_fpr95']:5.1f}  real mean "
              f"FPR95 {100 * (rows + extra)[-1]['real']['mean']['fpr95']:5.1f}", flush=True)

    # the shipped detector itself (fitted and calibrated by the selection), on the same sets
    s_id = chosen.scores(test)
    shipped = {s.name: ood_metrics(s_id, chosen.scores(s)) for s in ood}
    shipped_mean = mean_metrics(shipped)
    every = wanted is None
    best = min(rows + extra, key=lambda r: r["real"]["mean"]["fpr95"]) if every else None
    energy = next(r for r in rows if r["score"] == "energy" and r["watermark"] == "none")
    rho = spearmanr([r["ranking_fpr95"] for r in rows], [r["real"]["mean"]["fpr95"] for r in rows]) if every else None
    gap = 100 * (shipped_mean["fpr95"] - best["real"]["mean"]["fpr95"]) if every else None
    result = {
        "model": model.model_id, "watermark": args.watermark, "device": "cpu", "threads": torch.get_num_threads(),
        "chosen": {"score": chosen.score, "watermark": selection.ranking[0]["watermark"],
                   "real": {**shipped, "mean": shipped_mean}, "threshold": chosen.threshold,
                   "id_test_accepted": float(np.mean(s_id >= chosen.threshold))},
        "measured": args.measure,
        "best_in_hindsight": {"score": best["score"], "watermark": best["watermark"], "real": best["real"]}
        if every else None,
        "energy_no_watermark": energy["real"],
        "targets": {
            "within_5_points_of_best": bool(shipped_mean["fpr95"] - best["real"]["mean"]["fpr95"] <= 0.05)
            if every else None,
            "gap_to_best_points": gap,
            "ratio_to_energy": shipped_mean["fpr95"] / energy["real"]["mean"]["fpr95"],
            "at_most_0.7x_energy": bool(shipped_mean["fpr95"] <= 0.7 * energy["real"]["mean"]["fpr95"]),
        },
        # the same two targets with each real set left out of the mean: the synthetic greyscale kind was added
        # knowing the suite has a grey set (Fashion-MNIST), so the choice is also judged without it
        "targets_leaving_out": {left: leave_out(left, shipped, best_rows=rows + extra, energy=energy["real"])
                                for left in shipped} if every else None,
        "spearman_synthetic_vs_real": {"rho": float(rho.statistic), "p": float(rho.pvalue), "n": len(rows)}
        if every else None,
        "ranking_kinds": list(shipped_kinds), "candidate_pool": args.candidates,
        "rules": {rule: rule_outcome(sel, rows + extra, best, energy["real"], shipped_mean if rule == shipped_rule
                                     else None) for rule, sel in selections.items() if rule in rules},
        "pools": {label.removeprefix("pool "): rule_outcome(sel, rows + extra, best, energy["real"], None)
                  for label, sel in selections.items() if label not in rules},
        "choose_seconds": choose_seconds, "candidates": rows, "candidates_of_other_rules": extra,
        "close_call_rule": close_call_rule(rows, selection.detector.selection["close_share"], shipped_mean, best,
                                           energy["real"]) if every else None,
    }
    if args.fit_reference:
        result["reference_fit_seconds"] = reference_fit_seconds(model, train, execution)
        result["targets"]["choose_over_fit"] = choose_seconds / result["reference_fit_seconds"]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps({k: result[k] for k in ("chosen", "best_in_hindsight", "targets", "spearman_synthetic_vs_real",
                                             "choose_seconds")}, indent=1)[:3000])


def candidates_for(which: str, module: torch.nn.Module) -> tuple[str, ...]:
    """A pool of ``POOLS``: the shipped candidates or every registered detector the model runs (mcd only where it
    has dropout), less the ones it leaves out, plus the ones it adds."""
    base, without, added = POOLS[which]
    names = candidate_pool([base], module)
    return tuple(n for n in names if n not in without) + tuple(n for n in added if n not in names)


def reference_fit_seconds(model, train, execution) -> float:
    """Wall time of one watermark fit: the paper's energy preset, 2 epochs x 10k images (the choice's yardstick)."""
    config = fit_config_for("cifar10", "energy", {"epochs": 2, "train_limit": 10000})
    t0 = time.perf_counter()
    WatermarkLearner(model.module, model.normalization, config, execution).fit(train, progress=False)
    return time.perf_counter() - t0


def choice_cost(model, train, watermark, execution) -> dict:
    """The cost target alone: the shipped selection and one watermark fit, timed in one process."""
    t0 = time.perf_counter()
    select_detector(model.module, model.normalization, train, watermark, 0.95, SelectionSettings(), execution,
                    model.model_id)
    choose = time.perf_counter() - t0
    fit = reference_fit_seconds(model, train, execution)
    return {"model": model.model_id, "device": "cpu", "threads": torch.get_num_threads(),
            "ranking_kinds": list(SelectionSettings().ranking_kinds), "choose_seconds": choose,
            "reference_fit_seconds": fit, "choose_over_fit": choose / fit}


def rule_outcome(selection, rows: list[dict], best: dict | None, energy: dict, shipped_mean: dict | None) -> dict:
    """One ranking rule's pick measured on the real sets (the shipped detector's own figures where it is that one;
    otherwise the candidate's, fitted on the same split: identical up to calibration, which FPR95 does not use).
    With only the picks measured (``best`` None) the gap and the Spearman correlation are None."""
    real = {(r["score"], r["watermark"]): r["real"]["mean"]["fpr95"] for r in rows}
    top = selection.ranking[0]
    mean = shipped_mean["fpr95"] if shipped_mean is not None else real[top["score"], top["watermark"]]
    ranked = [r for r in selection.ranking if r["ok"]]
    rho = spearmanr([r["ranking_fpr95"] for r in ranked], [real[r["score"], r["watermark"]] for r in ranked]) \
        if best is not None else None
    return {"ranking_kinds": list(selection.ranking_kinds), "pick": f"{top['score']} ({top['watermark']})", "real_mean_fpr95": mean,
            "gap_to_best_points": 100 * (mean - best["real"]["mean"]["fpr95"]) if best is not None else None,
            "ratio_to_energy": mean / energy["mean"]["fpr95"],
            "spearman": float(rho.statistic) if rho is not None else None, "choose_seconds": selection.seconds}


def measured_rows(selections: dict) -> set[tuple[str, str]]:
    """What ``--measure picks`` measures: every rule's and pool's pick, and energy (the ratio's yardstick)."""
    return {(s.ranking[0]["score"], s.ranking[0]["watermark"]) for s in selections.values()} | {("energy", "none")}


def close_call_rule(rows: list[dict], share: float, shipped_mean: dict, best: dict, energy: dict) -> dict:
    """A rule written down *before* it was tested on any model it was not thought of on (issue 13 notes):
    among the chosen candidate and those too close to call (bootstrap share >= ``share``), take the combination
    with the most member detectors, then the lowest validation FPR95. Reported beside the shipped choice only;
    the library still ships the lowest validation FPR95. Dropped as a candidate rule (benchmarks/README: on
    ResNet-14 it picked a worse detector); kept in the JSON so earlier and later runs stay comparable.
    """
    pool = [rows[0]] + [r for r in rows[1:] if r.get("chance_better_than_chosen", 0.0) >= share]
    pick = min(pool, key=lambda r: (-len(r["score"].split("+")), r["fpr95"]))
    mean = pick["real"]["mean"]["fpr95"]
    return {"pick": f"{pick['score']} ({pick['watermark']})", "pool": [f"{r['score']} ({r['watermark']})" for r in pool],
            "real_mean_fpr95": mean, "gap_to_best_points": 100 * (mean - best["real"]["mean"]["fpr95"]),
            "ratio_to_energy": mean / energy["mean"]["fpr95"],
            "shipped_real_mean_fpr95": shipped_mean["fpr95"]}


def leave_out(left: str, shipped: dict, best_rows: list[dict], energy: dict) -> dict:
    """Gap to the best in hindsight and ratio to energy on the mean FPR95 over every set but ``left``."""
    def mean_without(per: dict) -> float:
        return float(np.mean([m["fpr95"] for name, m in per.items() if name not in (left, "mean")]))

    best = min(best_rows, key=lambda r: mean_without(r["real"]))
    mine = mean_without(shipped)
    return {"best": f"{best['score']} ({best['watermark']})", "gap_to_best_points": 100 * (mine - mean_without(best["real"])),
            "ratio_to_energy": mine / mean_without(energy)}


# candidate pools: (base: the shipped candidates or every detector, left out, added); the last two were
# pre-registered in benchmarks/README (issue 26, 2026-12-03) before any run of them
POOLS = {"shipped": ("shipped", (), ()), "all": ("all", (), ()), "all but combood": ("all", ("combood",), ()),
         "shipped + multimahalanobis": ("shipped", (), ("multimahalanobis",))}
RULES = {"all kinds": tuple(OUTLIER_KINDS), "object-destroying kinds": tuple(OBJECT_DESTROYING_KINDS),
         # issue 27 item 5, pre-registered in benchmarks/README before any run of it
         "object-destroying + class kinds": tuple(OBJECT_DESTROYING_KINDS) + tuple(CLASS_KINDS),
         # issue 26: patch-shuffle's seams replaced by phase scrambling (data/synthetic.py, STATISTIC_KINDS)
         "seam-free object-destroying kinds": ("phase-scramble", "low-frequency-noise", "flat-colour"),
         # issue 26, fourth pool test: both outlier families at once (patch-shuffled and phase-scrambled)
         "both-family object-destroying kinds": ("patch-shuffle", "phase-scramble", "low-frequency-noise",
                                                 "flat-colour")}


if __name__ == "__main__":
    main()
