"""Plots: the watermark, score histograms, ROC curves, a fit's history, the leaderboard bars (PNG, written atomically)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from sklearn.metrics import roc_curve

from watermark_ood.core.fileio import atomic_write_bytes
from watermark_ood.evaluation.protocol import Evaluation
from watermark_ood.reporting.tables import leaderboard_rows


# -------------------------------------------------------------------- plots
def _figure_png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return buffer.getvalue()


def _pyplot():
    """matplotlib on first use, deliberately: importing it costs 0.4 s, and its Agg backend (files, no display) is
    set only when the library draws, never when a user merely imports the package."""
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
    fig, axes = plt.subplots(1, channels + (1 if channels == 3 else 0), figsize=(3 * (channels + 1), 3.4),
                             layout="constrained")
    axes = np.atleast_1d(axes)
    names = ("red", "green", "blue") if channels == 3 else tuple(f"channel {c}" for c in range(channels))
    for c in range(channels):
        im = axes[c].imshow(w[c], cmap="RdBu_r", vmin=-limit, vmax=limit)
        axes[c].set_title(names[c], fontsize=9)
        axes[c].axis("off")
    bar = fig.colorbar(im, ax=list(axes[:channels]), shrink=0.8)
    bar.set_label("w (normalized input units)")
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
        axis_name = f"{score} score (higher = more in-distribution)"
        if score == "msp":  # MSP piles up just below 1.0: spread it out as -log10(1 - MSP)
            def spread(v):
                return -np.log10(np.clip(1.0 - v, 1e-7, None))
            id_scores, ood_scores = spread(id_scores), {k: spread(v) for k, v in ood_scores.items()}
            axis_name = "-log10(1 - MSP) (higher = more in-distribution)"
        everything = np.concatenate([id_scores, *ood_scores.values()])
        bins = np.linspace(everything.min(), everything.max() + 1e-9, 60)
        ax.hist(id_scores, bins=bins, density=True, alpha=0.6, label="ID test", color="black")
        for name, s in ood_scores.items():
            ax.hist(s, bins=bins, density=True, alpha=0.45, histtype="stepfilled", label=name)
        ax.set_title(f"{score} score, {label}")
        ax.set_xlabel(axis_name)
        ax.set_ylabel("density")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return atomic_write_bytes(path, _figure_png(fig))


def plot_roc(evaluation: Evaluation, score: str, path: str | Path) -> Path:
    """ROC curves (ID positive) per OOD set: dashed before, solid after the watermark."""

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
    ax.axhline(0.95, color="grey", lw=0.8, ls=":", label="95% TPR (FPR95 is read here)")
    ax.plot([0, 1], [0, 1], color="lightgrey", lw=0.6)
    ax.set_xlabel("false-positive rate (OOD accepted)")
    ax.set_ylabel("true-positive rate (ID accepted)")
    ax.set_title(f"ROC, {score} score")
    ax.legend(fontsize=6)
    return atomic_write_bytes(path, _figure_png(fig))


def plot_history(history: Sequence[dict[str, float]], path: str | Path) -> Path:
    """Training loss and its two parts on a log axis (they differ by up to ~20 orders of magnitude), and |w|."""
    plt = _pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.4))
    epochs = [h["epoch"] for h in history]
    a.plot(epochs, [h["loss"] for h in history], marker="o", color="black", label="loss")
    if all(h.get("ce") is not None for h in history):
        a.plot(epochs, [h["ce"] for h in history], marker=".", ls="--", label="cross-entropy (ID)")
        a.plot(epochs, [max(h["ood_term"], 1e-12) for h in history], marker=".", ls=":", label="beta x OOD term")
    if min(min(h["loss"] for h in history), min(h.get("ce") or 1.0 for h in history)) > 0:
        a.set_yscale("log")
    a.set_xlabel("epoch"); a.set_ylabel("mean training loss (log scale)"); a.set_title("objective")
    a.legend(fontsize=7)
    b.plot(epochs, [h["max_abs"] for h in history], marker="o", label="max |w|")
    b.plot(epochs, [h["mean_abs"] for h in history], marker="o", label="mean |w|")
    b.set_xlabel("epoch"); b.set_ylabel("normalized input units"); b.set_title("watermark size"); b.legend(fontsize=7)
    fig.tight_layout()
    return atomic_write_bytes(path, _figure_png(fig))


def plot_leaderboard(scores: dict[str, Any] | Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Mean FPR95 per detector, without (grey) and with (colour) the watermark, best first."""
    plt = _pyplot()
    rows = leaderboard_rows(scores) if isinstance(scores, dict) else list(scores)
    names = list(dict.fromkeys(_bar_name(r) for r in rows))
    labels = list(dict.fromkeys(r["watermark"] for r in rows))
    fig, ax = plt.subplots(figsize=(8, 0.32 * len(names) + 1.4), layout="constrained")
    height = 0.8 / max(1, len(labels))
    colours = ["0.6"] + plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for j, label in enumerate(labels):
        values = {_bar_name(r): r["mean"]["fpr95"] for r in rows if r["watermark"] == label}
        y = [i + j * height for i in range(len(names))]
        ax.barh(y, [100 * values.get(n, np.nan) for n in names], height=height, color=colours[j % len(colours)],
                label=f"watermark: {label}")
    ax.set_yticks([i + 0.4 - height / 2 for i in range(len(names))], names)
    ax.invert_yaxis()
    ax.set_xlabel("mean FPR95 over OOD sets, % (lower is better)")
    fig.suptitle("Detectors, best first")
    fig.legend(fontsize=7, loc="outside lower center", ncol=len(labels))
    return atomic_write_bytes(path, _figure_png(fig))


def _bar_name(row: dict[str, Any]) -> str:
    return f"{row['detector']} (shipped file)" if row.get("shipped") else row["detector"]
