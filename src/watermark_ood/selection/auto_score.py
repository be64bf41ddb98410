"""``--score auto``: rank every detector, with and without a watermark, using ID training data only.

The ID training split is divided, by seed, into a part the scores are fitted on, a ranking part and a
calibration part. Synthetic outliers are built from the ranking part (:mod:`validation`: patch-shuffled,
rotated, low-frequency noise, greyscale, flat colour). Every single score is ranked by FPR95 (then AUROC) on
ranking ID vs the outliers of ``ranking_kinds`` (by default those that destroy the object: patch-shuffled and
phase-scrambled, noise, flat colour; greyscale and rotated copies keep it, and ranking on them chose worse
detectors on real OOD sets),
under each condition (no watermark; the given watermark); then mean-of-z-scores combinations of
the best two and three feature/logit scores of each condition join the ranking.

A watermark changes every input the classifier sees, and synthetic outliers are only a proxy for real ones
(on ResNet-56 the energy watermark won the synthetic ranking by 2-3 points yet lost 7.5 points of FPR95 on
real OOD sets). So a watermarked candidate is admitted only when it costs at most ``max_accuracy_drop`` of
ranking-ID accuracy and beats the best candidate without watermark on *every* synthetic outlier kind; the
others stay in the ranking, marked with the reason, below every admitted one. The winner is fitted,
calibrated on the calibration part at the requested TPR, and carries the whole ranking in its file.
No OOD data is read anywhere here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from watermark_ood.core.errors import WatermarkOODError
from watermark_ood.core.progress import say
from watermark_ood.data.images import ImageSet
from watermark_ood.data.preprocessing import Normalization
from watermark_ood.data.streaming import without_skipped
from watermark_ood.data.synthetic import OUTLIER_KINDS, RANKING_KINDS, kind_rows, synthesize_outliers, synthesized_kinds
from watermark_ood.detection.data_policy import AUTO
from watermark_ood.detection.detector import Detector
from watermark_ood.detection.registry import AUTO_CANDIDATES, DETECTOR_KINDS, Reads, reads_layers
from watermark_ood.evaluation.metrics import accuracy, auroc, fpr_at_tpr, fpr_at_tpr_resampled
from watermark_ood.runtime.device import ExecutionConfig
from watermark_ood.selection.shared_passes import RACE_MARGIN, Race, score_in_heats, shared_outputs
from watermark_ood.selection.validation import lost_kind, per_kind_fpr
from watermark_ood.watermark.file import Watermark

SCORES = "_scores"  # a ranking row's (ID, outlier) scores, kept until the bootstrap, never written
CLOSE = 0.2  # a candidate better than the chosen one in at least this share of resamples is reported as close


@dataclass
class SelectionSettings:
    candidates: Sequence[str] = AUTO_CANDIDATES  # the default pool (selection/pools.py)
    fit_images: int = AUTO.fit_images  # the split of the ID training data: detection/data_policy.py
    rank_images: int = 3000  # ID images ranked against as many synthetic outliers (500 of each of six kinds)
    # the kinds the ranking's FPR95 is taken over: those that destroy the object (benchmarks/README: chosen on five
    # models, then tested on two trained afterwards; phase-scrambled images added by a pre-registered test on five
    # retrains); greyscale and rotated copies still guard watermarks
    ranking_kinds: Sequence[str] = RANKING_KINDS
    calibration_images: int = AUTO.calibration_images
    holdout_fraction: float = AUTO.holdout_fraction  # half ranks, half calibrates
    combine: Sequence[int] = (2, 3)  # combinations of the best k scores of each condition
    max_accuracy_drop: float = 0.01  # a watermark costing more ranking-ID accuracy is not admitted
    watermark_must_win_every_kind: bool = True  # ... nor one that loses to no watermark on any outlier kind
    resamples: int = 200  # paired bootstrap of the ranking images: how sure is the winner?
    per_class: bool = False  # calibrate the winner with one threshold per predicted class
    seed: int = 0


@dataclass
class Selection:
    detector: Detector
    ranking: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    ranking_kinds: Sequence[str] = RANKING_KINDS
    sizes: dict[str, int] = field(default_factory=dict)  # ranking ID images and ranked outliers
    forward_seconds: float = 0.0  # of the forward passes alone (logits and features once per set, odin's passes)
    candidates: Sequence[str] = ()  # the pool ranked (selection.pools)

    def summary(self) -> dict[str, Any]:
        best = self.ranking[0]
        kinds = self.ranking_kinds
        return {"chosen": {"score": best["score"], "watermark": best["watermark"]},
                "criterion": "FPR95 then AUROC, held-out ID training images vs synthetic outliers "
                             f"({', '.join(kinds)}); a watermark only where it keeps accuracy and wins "
                             f"on every outlier kind ({', '.join(OUTLIER_KINDS)}); no OOD data",
                "ranking_kinds": list(kinds),
                "close": [f"{r['score']} ({r['watermark']})" for r in self.ranking
                          if r.get("chance_better_than_chosen", 0.0) >= CLOSE], "close_share": CLOSE,
                "tied": tied_with(best, self.ranking),
                "saturated": bool(tied_with(best, self.ranking)) and best.get("ranking_fpr95") == 0.0
                and best.get("ranking_auroc") == 1.0,
                "ranking_sizes": self.sizes, "candidates": list(self.candidates),
                "seconds": self.seconds, "forward_seconds": self.forward_seconds, "ranking": self.ranking}


def selection_splits(train: ImageSet, settings: SelectionSettings) -> tuple[ImageSet, ImageSet, ImageSet, ImageSet]:
    """Disjoint seeded parts of the ID training data: (fit, z-scores of combinations, ranking, calibration)."""
    fit_split, holdout = train.split(settings.holdout_fraction, settings.seed)
    rank_part, calibration = holdout.split(0.5, settings.seed + 1)
    fit_set, z_set = AUTO.fit_and_z(fit_split, settings.seed, settings.fit_images)
    return fit_set, z_set, rank_part.sample(settings.rank_images, settings.seed), calibration


def select_detector(model: torch.nn.Module, normalization: Normalization, train: ImageSet,
                    watermark: Watermark | None = None, tpr: float = 0.95,
                    settings: SelectionSettings | None = None, execution: ExecutionConfig | None = None,
                    model_id: str = "model", log: Callable[[str], None] | None = say) -> Selection:
    """Rank every candidate on ID-only validation, fit and calibrate the best; see the module docstring.

    It takes minutes on a CPU, so by default it says what it does on stderr (``log=None``: silent)."""
    settings = settings or SelectionSettings()
    execution = execution or ExecutionConfig()
    t0 = time.perf_counter()
    if (train.labels < 0).any():
        raise WatermarkOODError(f"{train.name}: choosing a detector needs labelled ID training images")
    fit_set, z_set, rank_id, calibration = selection_splits(train, settings)
    try:
        made = synthesized_kinds(settings.ranking_kinds)
        outliers = synthesize_outliers(rank_id, settings.seed, made)
        ranked_rows = kind_rows(len(outliers), settings.ranking_kinds, made)
    except ValueError as error:
        raise WatermarkOODError(f"--score auto: {error}") from None
    conditions = [("none", None)] + ([("given", watermark)] if watermark is not None else [])
    ranking: list[dict[str, Any]] = []
    cached: dict[str, dict[str, Any]] = {}
    layer_taps: dict[str, dict[str, Any]] = {}  # each layer detector's part of the shared passes
    forward_seconds = 0.0  # the shared forward passes alone (and odin's own), next to the whole choice's time
    ranked = _Ranked(fit_set, rank_id, outliers, ranked_rows, made)
    for condition, mark in conditions:
        t_forward = time.perf_counter()
        outputs, taps = shared_outputs(model, normalization, mark, execution,
                                       _layer_detectors(model, normalization, mark, settings.candidates, execution),
                                       {"fit": fit_set, "z": z_set, "id": rank_id, "out": outliers}, train.image_shape)
        forward_seconds += time.perf_counter() - t_forward
        cached[condition], layer_taps[condition] = outputs, taps
        ranking += _rank_condition(model, normalization, mark, condition, outputs, taps, ranked, ranking, settings,
                                   execution, model_id, log)
    if watermark is not None:
        _admit_watermarks(ranking, {c: accuracy(cached[c]["id"][0], rank_id.labels) for c, _ in conditions},
                          settings)
    ranking.sort(key=_key)
    best = ranking[0]
    if not best["ok"]:
        raise WatermarkOODError("no detector could be fitted on this model and data")
    admitted = [r for r in ranking if r["ok"] and r.get("admitted", True)]
    chances = chance_better(best[SCORES], [r[SCORES] for r in admitted[1:]], settings.resamples, settings.seed)
    for row, chance in zip(admitted[1:], chances):
        row["chance_better_than_chosen"] = chance
    for row in ranking:
        row.pop(SCORES, None)
    detector = Detector(model, normalization, watermark if best["watermark"] == "given" else None, best["score"],
                        execution=execution, model_id=model_id)
    _fit_winner(detector, train, fit_set, cached[best["watermark"]], layer_taps[best["watermark"]].get(best["score"]))
    detector.calibrate(calibration.sample(settings.calibration_images, settings.seed), tpr, settings.per_class,
                       train.num_classes)
    forward_seconds += sum(r.get("seconds", 0.0) for r in ranking if r.get("own_passes"))
    selection = Selection(detector, ranking, time.perf_counter() - t0, tuple(settings.ranking_kinds),
                          {"id": len(rank_id), "outliers": int(len(ranked_rows))}, forward_seconds,
                          tuple(settings.candidates))
    detector.selection = selection.summary()
    return selection


def _fit_winner(detector: Detector, train: ImageSet, fit_set: ImageSet, outputs: dict[str, Any],
                own_taps: dict[str, Any] | None) -> None:
    """The chosen detector fitted as it was ranked: on the shared outputs of the fit sample, or (a layer detector)
    on its own part of the shared pass."""
    detector.input_shape = tuple(train.image_shape)
    if own_taps is not None:
        detector.fit_outputs(*own_taps["fit"], fit_set.labels)
    else:
        detector.fit_shared(fit_set, outputs["fit"], outputs["z"])


@dataclass(frozen=True)
class _Ranked:
    """What every candidate is fitted on and ranked against: the fit sample, the ranking ID images, the synthetic
    outliers, each outlier's kind row, and the kinds made."""

    fit_set: ImageSet
    rank_id: ImageSet
    outliers: Any
    rows: Any
    made: Any


def _rank_condition(model, normalization, mark, condition: str, outputs, taps, ranked: _Ranked,
                    earlier: list[dict[str, Any]], settings: SelectionSettings, execution: ExecutionConfig,
                    model_id: str, log: Callable[[str], None] | None) -> list[dict[str, Any]]:
    """Every candidate under one condition (the kinds with their own passes last: they race the rest, ``earlier``
    included), then the combinations of the best ``k`` single detectors that read shared outputs."""
    rows: list[dict[str, Any]] = []
    race = Race.of(len(ranked.rank_id), ranked.rows)
    for name in sorted(settings.candidates, key=_makes_own_passes):
        best_heat = min((r["heat_fpr95"] for r in earlier + rows if r.get("heat_fpr95") is not None), default=1.0)
        rows.append(_rank_one(model, normalization, mark, name, condition, outputs, ranked.fit_set, ranked.rank_id,
                              ranked.outliers, ranked.rows, execution, model_id, ranked.made, taps.get(name), race,
                              best_heat))
        if log is not None:
            log(_describe(rows[-1]))
    usable = sorted((r for r in rows if r["ok"] and not _makes_own_passes(r["score"])
                     and not reads_layers(r["score"])), key=_key)  # parts of combinations
    for k in settings.combine:
        if len(usable) >= k:
            name = "+".join(r["score"] for r in usable[:k])
            rows.append(_rank_one(model, normalization, mark, name, condition, outputs, ranked.fit_set,
                                  ranked.rank_id, ranked.outliers, ranked.rows, execution, model_id, ranked.made))
            if log is not None:
                log(_describe(rows[-1]))
    return rows


def _admit_watermarks(ranking: list[dict[str, Any]], accuracies: dict[str, float],
                      settings: SelectionSettings) -> None:
    """Mark each watermarked row admitted or refused (with why) against the best row without the watermark."""
    plain = sorted((r for r in ranking if r["ok"] and r["watermark"] == "none"), key=_key)
    for row in ranking:
        if row["ok"] and row["watermark"] == "given" and not row.get("raced_out"):
            reason = watermark_refusal(row, plain[0] if plain else None, accuracies["none"] - accuracies["given"],
                                       settings)
            row["admitted"] = reason is None
            if reason is not None:
                row["refused"] = reason


def watermark_refusal(row: dict[str, Any], best_plain: dict[str, Any] | None, accuracy_drop: float,
                      settings: SelectionSettings) -> str | None:
    """Why a watermarked candidate is not admitted (None when it is); see the module docstring.

    >>> s = SelectionSettings()
    >>> plain = {"per_kind": {"a": 0.30, "b": 0.20}}
    >>> watermark_refusal({"per_kind": {"a": 0.10, "b": 0.25}}, plain, 0.0, s)
    'loses to no watermark on b (FPR95 25.0% vs 20.0%)'
    >>> watermark_refusal({"per_kind": {"a": 0.10, "b": 0.15}}, plain, 0.02, s)
    'costs 2.0 points of accuracy (at most 1.0 allowed)'
    >>> watermark_refusal({"per_kind": {"a": 0.10, "b": 0.15}}, plain, 0.0, s) is None
    True
    """
    if accuracy_drop > settings.max_accuracy_drop + 1e-12:
        return (f"costs {100 * accuracy_drop:.1f} points of accuracy "
                f"(at most {100 * settings.max_accuracy_drop:.1f} allowed)")
    if settings.watermark_must_win_every_kind and best_plain is not None:
        kind = lost_kind(row["per_kind"], best_plain["per_kind"])
        if kind is not None:
            return (f"loses to no watermark on {kind} (FPR95 {100 * row['per_kind'][kind]:.1f}% vs "
                    f"{100 * best_plain['per_kind'][kind]:.1f}%)")
    return None


def chance_better(chosen: tuple[np.ndarray, np.ndarray], others: Sequence[tuple[np.ndarray, np.ndarray]],
                  resamples: int = 200, seed: int = 0) -> list[float]:
    """Share of paired bootstrap resamples in which each of ``others`` has a lower FPR95 than ``chosen``.

    Every candidate is scored on the same ranking images and outliers, so one draw (with replacement) of ID
    rows and outlier rows serves all; a tie counts half. Near 0.5 means the ranking cannot tell the two apart.
    It informs the report; the choice itself stays the lowest FPR95.

    >>> ids, outs = np.linspace(0, 1, 50), np.linspace(-1, 0.5, 50)
    >>> chance_better((ids, outs), [(ids, outs - 1), (ids, outs + 1)], resamples=20)
    [1.0, 0.0]
    """
    rng = np.random.default_rng(seed)
    n_id, n_out = len(chosen[0]), len(chosen[1])
    draws = [(rng.integers(0, n_id, n_id), rng.integers(0, n_out, n_out)) for _ in range(resamples)]
    id_rows, out_rows = np.stack([i for i, _ in draws]), np.stack([o for _, o in draws])
    reference = fpr_at_tpr_resampled(*chosen, id_rows, out_rows)
    chances = []
    for s_id, s_out in others:
        fpr = fpr_at_tpr_resampled(s_id, s_out, id_rows, out_rows)
        chances.append(float(((fpr < reference) + 0.5 * (fpr == reference)).mean()))
    return chances


def _key(row: dict[str, Any]) -> tuple[float, float, float, float, float]:
    """Ranking order: usable, admitted, lower FPR95, higher AUROC, then (ties) fewer fitted values to ship."""
    return (0.0 if row["ok"] else 1.0, 0.0 if row.get("admitted", True) else 1.0, row.get("ranking_fpr95", 1.0),
            -row.get("ranking_auroc", 0.0), row.get("fitted_values", 0))


def tied_with(best: dict[str, Any], ranking: Sequence[dict[str, Any]]) -> list[str]:
    """Admitted candidates whose ranking FPR95 and AUROC equal the chosen one's: the tie-break chose among them.

    >>> rows = [{"score": "a", "watermark": "none", "ok": True, "ranking_fpr95": 0.0, "ranking_auroc": 1.0},
    ...         {"score": "b", "watermark": "none", "ok": True, "ranking_fpr95": 0.0, "ranking_auroc": 1.0},
    ...         {"score": "c", "watermark": "none", "ok": True, "ranking_fpr95": 0.1, "ranking_auroc": 0.9}]
    >>> tied_with(rows[0], rows)
    ['b (none)']
    """
    return [f"{r['score']} ({r['watermark']})" for r in ranking if r is not best and r["ok"] and r.get("admitted", True)
            and r.get("ranking_fpr95") == best.get("ranking_fpr95") and r.get("ranking_auroc") == best.get("ranking_auroc")]


def _makes_own_passes(name: str) -> bool:
    """Whether a candidate runs the model itself even in the selection (the layer kinds share one pass)."""
    return "+" not in name and DETECTOR_KINDS[name].reads not in (Reads.LOGITS, Reads.FEATURES, Reads.LAYERS)


def _layer_detectors(model, normalization, mark, candidates: Sequence[str], execution) -> list[Detector]:
    """The candidates on intermediate layers this model has the layers of (the others fail in their own row)."""
    made = []
    for name in candidates:
        if "+" not in name and DETECTOR_KINDS[name].reads == Reads.LAYERS:
            try:
                made.append(Detector(model, normalization, mark, name, execution=execution))
            except WatermarkOODError:
                continue
    return made


def _rank_one(model, normalization, mark, name, condition, outputs, fit_set, rank_id, outliers, ranked_rows,
              execution, model_id, made: Sequence[str] = OUTLIER_KINDS, taps: dict | None = None,
              race: Race | None = None, best_heat: float = 1.0) -> dict[str, Any]:
    """One candidate's validation row: FPR95/AUROC over all outlier kinds and per kind (reported, and the
    watermark guard), and over ``ranked_rows`` (the ranking's criterion). ``taps``: a layer kind's outputs of the
    shared pass; ``race``: own-pass candidates first score its heat and stop there when ``best_heat`` is far ahead."""
    row: dict[str, Any] = {"score": name, "watermark": condition}
    t0 = time.perf_counter()
    raced = None
    try:
        detector = Detector(model, normalization, mark, name, execution=execution, model_id=model_id)
        if taps is not None:  # a detector on intermediate layers: its part of the shared pass
            detector.input_shape = tuple(fit_set.image_shape)
            detector.fit_outputs(*taps["fit"], fit_set.labels)
            s_id, s_out = detector.scores_from(*taps["id"]), detector.scores_from(*taps["out"])
        elif detector.own_passes:  # odin, mcd, gradient and map detectors
            detector.fit_shared(fit_set, outputs["fit"], outputs["z"])
            if race is None:
                s_id, s_out = detector.scores(rank_id), detector.scores(outliers)
            else:
                s_id, s_out, raced = score_in_heats(detector, rank_id, outliers, race, best_heat)
        else:
            detector.fit_shared(fit_set, outputs["fit"], outputs["z"])
            s_id, s_out = detector.scores_from(*outputs["id"]), detector.scores_from(*outputs["out"])
        fitted_values = 0 if detector.scorer is None else sum(t.numel() for t in detector.scorer.state()[0].values())
    except WatermarkOODError as error:
        return {**row, "ok": False, "error": str(error)}
    common = {"seconds": time.perf_counter() - t0, "fitted_values": fitted_values,
              **({"own_passes": True} if detector.own_passes and taps is None else {}),
              **({"shared_taps": True} if taps is not None else {})}
    if raced is not None:
        s_id = without_skipped(s_id)
        return {**row, "ok": True, "fpr95": raced, "auroc": auroc(s_id, s_out), "ranking_fpr95": raced,
                "ranking_auroc": auroc(s_id, s_out), "per_kind": {}, "heat_fpr95": raced, "raced_out": True,
                "admitted": False, "refused": f"raced out: FPR95 {100 * raced:.1f}% on the first heat ({len(s_id)} ID, "
                f"{len(s_out)} outliers) vs the best {100 * best_heat:.1f}% + {100 * RACE_MARGIN:.0f} points",
                **common, SCORES: (s_id, s_out)}
    ranked = s_out[ranked_rows]
    heat = race.heat_fpr(s_id, ranked) if race is not None and len(s_id) == len(rank_id) else None
    s_id = without_skipped(s_id)  # rows of unreadable ID files (streamed with skip_bad); outliers are in memory
    return {**row, "ok": True, "fpr95": fpr_at_tpr(s_id, s_out), "auroc": auroc(s_id, s_out),
            "ranking_fpr95": fpr_at_tpr(s_id, ranked), "ranking_auroc": auroc(s_id, ranked),
            "per_kind": per_kind_fpr(s_id, s_out, made), **({} if heat is None else {"heat_fpr95": heat}),
            **common, SCORES: (s_id, ranked)}


def _describe(row: dict[str, Any]) -> str:
    where = "with the watermark" if row["watermark"] == "given" else "without watermark"
    if not row["ok"]:
        return f"  {row['score']} ({where}): skipped, {row['error']}"
    return (f"  {row['score']} ({where}): validation FPR95 {100 * row['ranking_fpr95']:.1f}% (ranking kinds), "
            f"{100 * row['fpr95']:.1f}% (all kinds), AUROC {100 * row['ranking_auroc']:.1f}%")
