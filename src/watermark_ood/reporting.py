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


def skipped_images(sets: Sequence[Any], listed: int = 100) -> dict[str, Any]:
    """results.json's ``skipped_images``: unreadable files left out (--skip-bad-images), counted once each."""
    files: list[str] = []
    for images in sets:
        files += [f for f in getattr(images, "skipped", ()) if f not in files]
    return {"count": len(files), "files": files[:listed]}


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


def write_report(path: str | Path, runs: Sequence[dict[str, Any]], title: str, notes: str = "",
                 images: Sequence[tuple[str, str]] = (), preface: str = "") -> Path:
    """report.md: an optional preface (what to do), the Markdown tables, free-text notes, and the pictures."""
    text = format_markdown(runs, title)
    if preface:
        head, _, rest = text.partition("\n\n")
        text = f"{head}\n\n{preface.strip()}\n\n{rest}"
    if notes:
        text += "\n" + notes.strip() + "\n"
    if images:
        text += "\n## Pictures\n\n" + "\n".join(f"![{caption}]({file})" for caption, file in images) + "\n"
    return atomic_write_text(path, text)


# -------------------------------------------------------------- detector leaderboard
def leaderboard_rows(scores: dict[str, Any], watermark_label: str = "watermark",
                     counts: dict[str, int] | None = None) -> list[dict[str, Any]]:
    """One row per (detector, condition) from an ``evaluate_scores`` table, best mean FPR95 first.

    ``counts`` (OOD images per set) adds each row's binomial standard error of the mean FPR95 (``fpr95_se``).
    """
    rows = []
    for name, block in scores.items():
        for condition in ("baseline", "watermarked"):
            if condition not in block:
                continue
            metrics, cost = block[condition], block.get("cost", {}).get(condition, {})
            rows.append(with_standard_error({"detector": name,
                                             "watermark": "none" if condition == "baseline" else watermark_label,
                                             "mean": metrics["mean"],
                                             "per_set": {k: v for k, v in metrics.items() if k != "mean"}, **cost},
                                            counts))
    return sort_rows(rows)


def sort_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Best mean FPR95 first; ties by higher AUROC, then the shipped row first."""
    return sorted(rows, key=lambda r: (r["mean"]["fpr95"], -r["mean"]["auroc"], not r.get("shipped", False)))


def with_standard_error(row: dict[str, Any], counts: dict[str, int] | None) -> dict[str, Any]:
    from .metrics import mean_fpr_standard_error

    if counts and all(s in counts for s in row["per_set"]):
        row["fpr95_se"] = mean_fpr_standard_error([row["per_set"][s]["fpr95"] for s in row["per_set"]],
                                                  [counts[s] for s in row["per_set"]])
    return row


def shipped_row(name: str, watermark_label: str, metrics: dict[str, Any], counts: dict[str, int] | None = None,
                file_bytes: int | None = None) -> dict[str, Any]:
    """The leaderboard row of a detector file measured as shipped (its own fit, watermark and state), marked."""
    row = {"detector": name, "watermark": watermark_label, "shipped": True, "mean": metrics["mean"],
           "per_set": {k: v for k, v in metrics.items() if k != "mean"}}
    if file_bytes is not None:
        row["file_bytes"] = file_bytes
    return with_standard_error(row, counts)


def format_leaderboard(rows: Sequence[dict[str, Any]], title: str, num_id: int | None = None,
                       num_ood: dict[str, int] | None = None) -> str:
    sets = list(rows[0]["per_set"]) if rows else []
    head = ["rank", "detector", "watermark", "mean FPR95", "mean AUROC", *[f"{s} FPR95 / AUROC" for s in sets],
            "fit s", "images/s", "file KiB"]
    out = [f"# {title}", "", "Percentages; FPR95 at 95% TPR (ID positive), lower is better. Images/s include the "
           "model's forward pass; the file is the saved detector (safetensors + JSON header).", "",
           "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, r in enumerate(rows, 1):
        se = f" ± {100 * r['fpr95_se']:.2f}" if "fpr95_se" in r else ""
        name = f"**{r['detector']} (shipped file)**" if r.get("shipped") else r["detector"]
        cells = [str(i), name, r["watermark"], _pct(r["mean"]["fpr95"]) + se, _pct(r["mean"]["auroc"]),
                 *[f"{_pct(r['per_set'][s]['fpr95'])} / {_pct(r['per_set'][s]['auroc'])}" for s in sets],
                 f"{r['fit_seconds']:.2f}" if "fit_seconds" in r else "-",
                 f"{r['images_per_second']:.0f}" if "images_per_second" in r else "-",
                 f"{r['file_bytes'] / 1024:.1f}" if r.get("file_bytes") else "-"]
        out.append("| " + " | ".join(cells) + " |")
    out += [""] + measured_on(rows, num_id, num_ood)
    return "\n".join(out) + "\n"


def measured_on(rows: Sequence[dict[str, Any]], num_id: int | None, num_ood: dict[str, int] | None) -> list[str]:
    """The sizes under a leaderboard and what its ± means, so rows closer than noise are not read as different."""
    lines = []
    if num_id is not None and num_ood:
        lines.append(f"Every row was measured on the same {num_id} ID test images and "
                     + ", ".join(f"{n} {s}" for s, n in num_ood.items()) + " OOD images.")
    if any("fpr95_se" in r for r in rows):
        lines.append("± is the binomial standard error of the mean FPR95 at those sizes (sqrt(p(1-p)/n) per set, "
                     "averaged); it ignores the noise of the ID threshold, so rows closer than about two of them "
                     "are not told apart by this data.")
    if any(r.get("shipped") for r in rows):
        lines.append("The **shipped file** row is the detector file itself, measured as shipped; the row of the same "
                     "name without the mark was refitted here on a seeded sample of the ID training split, so the "
                     "two can differ by the noise of the fit.")
    return lines


def write_leaderboard(path: str | Path, scores: dict[str, Any] | Sequence[dict[str, Any]], title: str,
                      num_id: int | None = None, num_ood: dict[str, int] | None = None) -> Path:
    rows = leaderboard_rows(scores, counts=num_ood) if isinstance(scores, dict) else list(scores)
    return atomic_write_text(path, format_leaderboard(rows, title, num_id, num_ood))


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


def write_selection_report(path: str | Path, selection: dict[str, Any], watermark_label: str = "given") -> Path:
    """The short report of ``calibrate --score auto``: what was chosen, how, and the whole ranking.

    ``watermark_label`` names the given watermark in the table, as the other reports of the same run name it.
    """
    chosen = selection["chosen"]
    where = f"with the {watermark_label} watermark" if watermark_label != "given" else "with the watermark"
    sizes = selection.get("ranking_sizes")
    lines = [f"# Detector chosen: {chosen['score']} ({where if chosen['watermark'] == 'given' else 'without a watermark'})",
             "", f"Criterion: {selection['criterion']}; ties are broken by fewer fitted values to ship. Took "
             f"{selection['seconds']:.0f} s" + (f", ranking {sizes['id']} ID images against {sizes['outliers']} "
                                                f"synthetic outliers" if sizes else "") + ".", "",
             "| rank | detector | watermark | validation FPR95 (ranking kinds) | (all kinds) | validation AUROC "
             "(ranking kinds) | better than the chosen in |", "|---|---|---|---|---|---|---|"]
    if selection.get("saturated"):
        lines[4:4] = [f"**The ranking is saturated**: {len(selection['tied']) + 1} candidates separate every ranking "
                      "image from every synthetic outlier (FPR95 0, AUROC 100), so the synthetic data cannot choose "
                      "among them; the tie-break (fewer fitted values) did. Measure them on real OOD data if you "
                      f"have some (`evaluate --scores`). Tied: {', '.join(selection['tied'])}.", ""]
    elif selection.get("tied"):
        lines[4:4] = [f"Tied with the chosen one on FPR95 and AUROC (broken by fewer fitted values): "
                      f"{', '.join(selection['tied'])}.", ""]
    if selection.get("close"):
        lines[4:4] = [f"Too close to call (better than the chosen one in at least {100 * selection['close_share']:.0f}% "
                      f"of bootstrap resamples of the ranking images): {', '.join(selection['close'])}.", ""]
    for i, row in enumerate(selection["ranking"], 1):
        if row["ok"]:
            refused = f" (not admitted: {row['refused']})" if row.get("refused") else ""
            chance = row.get("chance_better_than_chosen")
            ranked = row.get("ranking_fpr95", row["fpr95"]), row.get("ranking_auroc", row["auroc"])  # older files: all
            label = watermark_label if row["watermark"] == "given" else row["watermark"]
            lines.append(f"| {i} | {row['score']} | {label}{refused} | {_pct(ranked[0])} | "
                         f"{_pct(row['fpr95'])} | {_pct(ranked[1])} | "
                         f"{'' if chance is None else f'{100 * chance:.0f}% of resamples'} |")
        else:
            lines.append(f"| {i} | {row['score']} | {row['watermark']} | skipped: {row['error']} | | | |")
    return atomic_write_text(path, "\n".join(lines) + "\n")
