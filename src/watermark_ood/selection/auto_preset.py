"""``--preset auto``: choose hyperparameters for a given model and ID set without any OOD data.

Only the ID *training* data is read: a seeded validation split is held out from
it, and validation outliers are synthesized from that split (see
:mod:`validation`). Candidates (the paper's preset plus stabilized variants:
an L-infinity budget, a cosine step schedule, smaller outlier weights, noise
scaled to the data's spread) are compared by successive halving over short
runs; the winner gets the full schedule with best-step selection, and the zero
watermark is kept when nothing beats it on validation.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from watermark_ood.data.images import ImageSet
from watermark_ood.data.preprocessing import Normalization
from watermark_ood.detection.logit_scores import score_for_objective
from watermark_ood.runtime.device import ExecutionConfig
from watermark_ood.selection.validation import ValidationOutcome, Validator
from watermark_ood.watermark.config import FitConfig, get_preset
from watermark_ood.watermark.file import Watermark
from watermark_ood.watermark.learner import WatermarkLearner


def candidate_configs(base: FitConfig) -> list[FitConfig]:
    """The search space: the paper's setting and seven stabilized variants of it."""
    stable = dict(schedule="cosine")
    variants: list[dict[str, Any]] = [{}]  # the preset itself, unchanged
    for budget, beta_scale in ((0.03, 1.0), (0.1, 1.0), (0.3, 1.0), (0.1, 0.1), (0.3, 0.1), (0.1, 0.01)):
        variants.append(dict(stable, linf_budget=budget, alpha=budget / 8, beta=base.beta * beta_scale))
    variants.append(dict(stable, linf_budget=0.1, alpha=0.1 / 8, noise_scale="data", sigma=1.0))
    return [base.replace(**v) for v in variants]


@dataclass
class AutoSettings:
    """The final schedule (as for a fixed preset) and the search's own budget."""

    epochs: int = 50
    train_limit: int | None = None
    seed: int = 0
    batch_size: int = 128
    validation_fraction: float = 0.1
    max_validation: int = 2000
    max_accuracy_drop: float = 0.01
    # binomial standard errors by which a watermark may lose on one validation outlier kind and must win overall
    # (validation.Validator); 0 compares exactly
    tolerance: float = 0.0
    search_budget: float = 2.0  # search steps, in units of one final fit's steps
    rounds: int = 3


@dataclass
class AutoResult:
    config: FitConfig | None  # None: the zero watermark was kept
    watermark: Watermark
    trials: list[dict[str, Any]] = field(default_factory=list)
    baseline_validation: dict[str, Any] = field(default_factory=dict)
    chosen_validation: dict[str, Any] = field(default_factory=dict)
    search_seconds: float = 0.0
    final_seconds: float = 0.0
    final_images: int = 0
    tolerance: float = 0.0  # the validator's, in binomial standard errors

    @property
    def zero_kept(self) -> bool:
        return self.config is None

    def summary(self) -> dict[str, Any]:
        return {
            "zero_watermark_kept": self.zero_kept,
            "chosen": None if self.config is None else self.config.hyperparameters(),
            "search_seconds": self.search_seconds, "final_fit_seconds": self.final_seconds,
            "validation_baseline": self.baseline_validation, "validation_chosen": self.chosen_validation,
            "tolerance_se": self.tolerance, "trials": self.trials,
        }


def successive_halving(model: torch.nn.Module, normalization: Normalization, candidates: Sequence[FitConfig],
                       fit_set: ImageSet, validator: Validator, settings: AutoSettings, final_steps: int,
                       execution: ExecutionConfig, model_id: str,
                       log: Callable[[str], None]) -> tuple[list[int], list[dict[str, Any]], float]:
    """Round r runs len/2^r candidates for s * 2^r steps each (restarting from zero), keeping the better half by
    validation; returns the survivors (the first is the winner), every trial's record and the search time."""
    base = candidates[0]
    per_round_units = sum((len(candidates) >> r) * (1 << r) for r in range(settings.rounds))
    first_steps = max(3, int(settings.search_budget * final_steps / per_round_units))
    trials: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    alive = list(range(len(candidates)))
    for round_index in range(settings.rounds):
        steps = first_steps << round_index
        scored = []
        # A short run is a whole (cosine) schedule over a seeded subset of ``steps`` batches.
        trial_set = fit_set.sample(steps * base.batch_size, settings.seed + round_index)
        trial_epochs = max(1, round(steps * base.batch_size / len(trial_set)))
        for i in alive:
            cfg = candidates[i].replace(epochs=trial_epochs)
            learner = WatermarkLearner(model, normalization, cfg, execution, model_id)
            result = learner.fit(trial_set, progress=False, max_steps=steps)
            outcome: ValidationOutcome = validator(result.watermark.tensor)
            trials.append({"round": round_index, "candidate": i, "steps": steps,
                           "hyperparameters": candidates[i].hyperparameters(), **outcome.to_dict()})
            scored.append((outcome.key, i))
            log(f"auto: round {round_index + 1} candidate {i} ({steps} steps): val FPR95 {outcome.fpr95:.3f} "
                f"AUROC {outcome.auroc:.3f} acc {outcome.accuracy:.3f}")
        scored.sort()
        alive = [i for _, i in scored[: max(1, len(alive) // 2)]]
        if len(alive) == 1:
            break
    return alive, trials, time.perf_counter() - t0


def auto_fit(
    model: torch.nn.Module,
    normalization: Normalization,
    train: ImageSet,
    objective: str,
    settings: AutoSettings | None = None,
    execution: ExecutionConfig | None = None,
    base_preset: str = "cifar10",
    model_id: str = "model",
    progress: bool = False,
    log: Callable[[str], None] = lambda _: None,
) -> AutoResult:
    """Search, then fit the winner. Reads nothing but ``train``; there is no OOD argument on purpose."""
    settings = settings or AutoSettings()
    execution = execution or ExecutionConfig()
    base = get_preset(base_preset, objective).config(epochs=settings.epochs, seed=settings.seed,
                                                     batch_size=settings.batch_size)
    pool = train
    if settings.train_limit is not None and settings.train_limit < len(train):
        pool = train.sample(settings.train_limit, settings.seed)
    n_val = min(settings.max_validation, max(50, int(settings.validation_fraction * len(pool))))
    fit_set, val_set = pool.split(n_val / len(pool), settings.seed + 1)
    validator = Validator(model, normalization, val_set, score_for_objective(objective), execution,
                          settings.max_accuracy_drop, settings.seed, settings.tolerance)
    log(f"auto: {len(fit_set)} images to fit, {len(val_set)} held out for validation; zero watermark: "
        f"val FPR95 {validator.baseline.fpr95:.3f}, AUROC {validator.baseline.auroc:.3f}, "
        f"accuracy {validator.baseline.accuracy:.3f}")

    steps_per_epoch = math.ceil(len(fit_set) / base.batch_size)
    final_steps = settings.epochs * steps_per_epoch
    candidates = candidate_configs(base)
    alive, trials, search_seconds = successive_halving(model, normalization, candidates, fit_set, validator,
                                                       settings, final_steps, execution, model_id, log)
    winner = candidates[alive[0]]
    baseline = validator.baseline.to_dict()
    best_trial = min((t for t in trials if t["candidate"] == alive[0]), key=lambda t: -t["round"])
    if not (best_trial["admissible"] and best_trial["beats_zero"]):
        # No candidate beat the zero watermark even at its longest search run: keep zero, skip the final fit.
        log("auto: no candidate beat the zero watermark on validation; keeping the zero watermark")
        zero = Watermark.zeros(train.image_shape, **WatermarkLearner(model, normalization, winner, execution,
                                                                     model_id).metadata(train.image_shape))
        zero.metadata["auto"] = "zero watermark kept: no candidate beat it on validation"
        return AutoResult(None, zero, trials, baseline, baseline, search_seconds, 0.0, 0, settings.tolerance)

    t1 = time.perf_counter()
    learner = WatermarkLearner(model, normalization, winner, execution, model_id)
    final = learner.fit(fit_set, progress=progress, validator=validator,
                        validate_every=max(1, final_steps // 10))
    final_seconds = time.perf_counter() - t1
    chosen = min(final.validation, key=lambda v: (0.0 if v["admissible"] else 1.0, v["fpr95"], -v["auroc"]))
    result = AutoResult(winner, final.watermark, trials, baseline, chosen, search_seconds, final_seconds,
                        final.images_seen, settings.tolerance)
    # a final fit resumed from a checkpoint of an older version has validation records without "beats_zero"
    wins = chosen.get("beats_zero", chosen["fpr95"] < baseline["fpr95"])
    if final.selected_step == 0 or not (chosen["admissible"] and wins):
        log("auto: nothing beat the zero watermark on validation; keeping the zero watermark")
        zero = Watermark.zeros(train.image_shape, **learner.metadata(train.image_shape))
        zero.metadata["auto"] = "zero watermark kept: no candidate beat it on validation"
        result.config, result.watermark = None, zero
    else:
        result.watermark.metadata["auto"] = {"chosen_step": final.selected_step, "validation": chosen}
    log(f"auto: search {search_seconds:.1f}s, final fit {final_seconds:.1f}s")
    return result


def candidate_names(configs: Sequence[FitConfig]) -> list[str]:
    return [", ".join(f"{k}={v}" for k, v in c.hyperparameters().items()) for c in configs]
