"""results.json (a stable interface), terminal and Markdown tables, and plots."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .errors import WatermarkOODError
from .evaluation import Evaluation
from .fileio import atomic_write_bytes, atomic_write_json, atomic_write_text
from .metrics import METRIC_NAMES

SCHEMA_VERSION = 1


def build_run(objective: str, score: str, hyperparameters: dict[str, Any], evaluation: Evaluation,
              fit_seconds: float, images_per_second: float, **extra: Any) -> dict[str, Any]:
    """One entry of ``results.json["runs"]``; ``extra`` adds fields (model, data, ...) without renaming any."""
    metrics = evaluation.metrics(score)
    run = {
        "objective": objective,
        "score": score,
        "hyperparameters": hyperparameters,
        "accuracy": evaluation.accuracy(),
        "baseline": metrics["baseline"],
        "watermarked": metrics.get("watermarked", {}),
        "timing": {"fit_seconds": float(fit_seconds), "images_per_second": float(images_per_second)},
    }
    run.update(extra)
    validate_run(run)
    return run


def validate_run(run: dict[str, Any]) -> None:
    """Check one run against the schema; a violation is a bug, reported plainly."""
    for key in ("objective", "score", "hyperparameters", "accuracy", "baseline", "watermarked", "timing"):
        if key not in run:
            raise WatermarkOODError(f"results run lacks {key!r}")
    for condition in ("baseline", "watermarked"):
        block = run[condition]
        if block and "mean" not in block:
            raise WatermarkOODError(f"results run {condition} lacks 'mean'")
        for name, metrics in block.items():
            for metric in METRIC_NAMES:
                value = metrics.get(metric)
                if value is None or not (0.0 <= value <= 1.0):
                    raise WatermarkOODError(f"{condition}/{name}/{metric} must be a fraction in [0, 1], got {value}")
    for value in run["accuracy"].values():
        if not 0.0 <= value <= 1.0:
            raise WatermarkOODError(f"accuracy must be a fraction in [0, 1], got {value}")


def write_results(path: str | Path, runs: Sequence[dict[str, Any]], **extra: Any) -> Path:
    for run in runs:
        validate_run(run)
    return atomic_write_json(path, {"runs": list(runs), "schema_version": SCHEMA_VERSION, **extra})


def _pct(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}"


def table_rows(run: dict[str, Any]) -> list[list[str]]:
    """Rows: OOD set, then FPR95/AUROC/AUPR-In/AUPR-Out as 'baseline -> watermarked' percentages."""
    rows = []
    names = [n for n in run["baseline"] if n != "mean"] + ["mean"]
    for name in names:
        base, marked = run["baseline"][name], run["watermarked"].get(name, {})
        row = [name]
        for metric in METRIC_NAMES:
            row.append(f"{_pct(base[metric])} -> {_pct(marked.get(metric))}" if marked else _pct(base[metric]))
        rows.append(row)
    return rows


HEADERS = ["OOD set", "FPR95 (lower better)", "AUROC", "AUPR-In", "AUPR-Out"]


def run_title(run: dict[str, Any]) -> str:
    acc = run["accuracy"]
    bits = [f"objective={run['objective']}", f"score={run['score']}"]
    if "model" in run:
        bits.insert(0, f"model={run['model']}")
    accuracy = f"accuracy {_pct(acc['baseline'])}%"
    if "watermarked" in acc:
        accuracy += f" -> {_pct(acc['watermarked'])}%"
    return ", ".join(bits) + f"; {accuracy}; fit {run['timing']['fit_seconds']:.1f}s"


def format_terminal_table(run: dict[str, Any]) -> str:
    rows = [HEADERS] + table_rows(run)
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADERS))]
    line = "+".join("-" * (w + 2) for w in widths)
    out = [run_title(run), line]
    for i, row in enumerate(rows):
        out.append("|".join(f" {cell:<{widths[j]}} " for j, cell in enumerate(row)))
        if i == 0 or i == len(rows) - 2:
            out.append(line)
    return "\n".join(out)


def format_scores_table(scores: dict[str, Any]) -> list[str]:
    """Every score's mean metrics, baseline -> watermarked, in one table."""
    out = ["All scores (mean over OOD sets, `baseline -> watermarked`):", "",
           "| score | FPR95 | AUROC | AUPR-In | AUPR-Out |", "|---|---|---|---|---|"]
    for name, block in scores.items():
        base, marked = block["baseline"]["mean"], block.get("watermarked", {}).get("mean", {})
        cells = [f"{_pct(base[m])} -> {_pct(marked.get(m))}" for m in METRIC_NAMES]
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    return out + [""]


def format_markdown(runs: Sequence[dict[str, Any]], title: str = "Results") -> str:
    out = [f"# {title}", "", "Percentages, shown as `baseline -> watermarked`. FPR95: lower is better; "
           "the other metrics: higher is better. ID is the positive class for FPR95, AUROC and AUPR-In.", ""]
    for run in runs:
        out += [f"## {run_title(run)}", "", "| " + " | ".join(HEADERS) + " |",
                "|" + "---|" * len(HEADERS)]
        out += ["| " + " | ".join(r) + " |" for r in table_rows(run)]
        hp = ", ".join(f"{k}={v}" for k, v in run["hyperparameters"].items())
        out += ["", f"Hyperparameters: {hp}", ""]
        if run.get("scores"):
            out += format_scores_table(run["scores"])
    return "\n".join(out)


# -------------------------------------------------------------------- plots
def _figure_png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_watermark(tensor, path: str | Path, title: str = "watermark") -> Path:
    """The watermark per channel (diverging colours, 0 = white) and as an RGB image rescaled to [0, 1]."""
    plt = _pyplot()
    w = np.asarray(tensor, dtype=np.float32)[0]
    channels = w.shape[0]
    limit = float(np.abs(w).max()) or 1.0
    fig, axes = plt.subplots(1, channels + (1 if channels == 3 else 0), figsize=(3 * (channels + 1), 3))
    axes = np.atleast_1d(axes)
    for c in range(channels):
        im = axes[c].imshow(w[c], cmap="RdBu_r", vmin=-limit, vmax=limit)
        axes[c].set_title(f"channel {c}")
        axes[c].axis("off")
    fig.colorbar(im, ax=list(axes[:channels]), shrink=0.8)
    if channels == 3:
        rgb = (w.transpose(1, 2, 0) + limit) / (2 * limit)
        axes[-1].imshow(np.clip(rgb, 0, 1))
        axes[-1].set_title("RGB (rescaled)")
        axes[-1].axis("off")
    fig.suptitle(f"{title} (max |w| = {limit:.3f}, normalized units)")
    return atomic_write_bytes(path, _figure_png(fig))


def plot_histograms(evaluation: Evaluation, score: str, path: str | Path) -> Path:
    """ID vs each OOD set score distributions, before (top) and after (bottom) the watermark."""
    plt = _pyplot()
    conditions = [("baseline", evaluation.baseline)]
    if evaluation.watermarked is not None:
        conditions.append(("watermarked", evaluation.watermarked))
    fig, axes = plt.subplots(len(conditions), 1, figsize=(8, 3.2 * len(conditions)), squeeze=False)
    for ax, (label, cond) in zip(axes[:, 0], conditions):
        id_scores, ood_scores = cond.scores(score)
        everything = np.concatenate([id_scores, *ood_scores.values()])
        bins = np.linspace(everything.min(), everything.max() + 1e-9, 60)
        ax.hist(id_scores, bins=bins, density=True, alpha=0.6, label="ID test", color="black")
        for name, s in ood_scores.items():
            ax.hist(s, bins=bins, density=True, alpha=0.45, histtype="stepfilled", label=name)
        ax.set_title(f"{score} score, {label}")
        ax.legend(fontsize=7)
    return atomic_write_bytes(path, _figure_png(fig))


def plot_roc(evaluation: Evaluation, score: str, path: str | Path) -> Path:
    """ROC curves (ID positive) per OOD set: dashed before, solid after the watermark."""
    from sklearn.metrics import roc_curve

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for style, label, cond in (("--", "baseline", evaluation.baseline), ("-", "watermarked", evaluation.watermarked)):
        if cond is None:
            continue
        id_scores, ood_scores = cond.scores(score)
        for i, (name, s) in enumerate(ood_scores.items()):
            labels = np.r_[np.ones_like(id_scores), np.zeros_like(s)]
            fpr, tpr, _ = roc_curve(labels, np.r_[id_scores, s])
            ax.plot(fpr, tpr, style, color=colours[i % len(colours)], label=f"{name} ({label})", lw=1.2)
    ax.axhline(0.95, color="grey", lw=0.6, ls=":")
    ax.plot([0, 1], [0, 1], color="lightgrey", lw=0.6)
    ax.set_xlabel("false-positive rate (OOD accepted)")
    ax.set_ylabel("true-positive rate (ID accepted)")
    ax.set_title(f"ROC, {score} score")
    ax.legend(fontsize=6)
    return atomic_write_bytes(path, _figure_png(fig))


def plot_history(history: Sequence[dict[str, float]], path: str | Path) -> Path:
    plt = _pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3))
    epochs = [h["epoch"] for h in history]
    a.plot(epochs, [h["loss"] for h in history], marker="o")
    a.set_xlabel("epoch"); a.set_ylabel("mean training loss")
    b.plot(epochs, [h["max_abs"] for h in history], marker="o", label="max |w|")
    b.plot(epochs, [h["mean_abs"] for h in history], marker="o", label="mean |w|")
    b.set_xlabel("epoch"); b.legend()
    return atomic_write_bytes(path, _figure_png(fig))


def write_report(path: str | Path, runs: Sequence[dict[str, Any]], title: str, notes: str = "",
                 images: Sequence[tuple[str, str]] = ()) -> Path:
    """report.md: the Markdown tables, free-text notes, and links to the pictures."""
    text = format_markdown(runs, title)
    if notes:
        text += "\n" + notes.strip() + "\n"
    if images:
        text += "\n## Pictures\n\n" + "\n".join(f"![{caption}]({file})" for caption, file in images) + "\n"
    return atomic_write_text(path, text)
