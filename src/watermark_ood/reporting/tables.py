"""Tables: the terminal and Markdown tables of a run, report.md, and the leaderboard of every detector (rows, order,
standard errors, the shipped file's own row)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from watermark_ood.core.figures import percent  # noqa: F401 - also its old import path
from watermark_ood.core.fileio import atomic_write_text
from watermark_ood.evaluation.metrics import METRIC_NAMES, mean_fpr_standard_error


def table_rows(run: dict[str, Any]) -> list[list[str]]:
    """Rows: OOD set, then FPR95/AUROC/AUPR-In/AUPR-Out as 'baseline -> watermarked' percentages."""
    rows = []
    names = [n for n in run["baseline"] if n != "mean"] + ["mean"]
    for name in names:
        base, marked = run["baseline"][name], run["watermarked"].get(name, {})
        row = [name]
        for metric in METRIC_NAMES:
            row.append(f"{percent(base[metric])} -> {percent(marked.get(metric))}" if marked else percent(base[metric]))
        rows.append(row)
    return rows


HEADERS = ["OOD set", "FPR95 (lower better)", "AUROC", "AUPR-In", "AUPR-Out"]


def run_title(run: dict[str, Any]) -> str:
    acc = run["accuracy"]
    bits = [f"objective={run['objective']}", f"score={run['score']}"]
    if "model" in run:
        bits.insert(0, f"model={run['model']}")
    accuracy = f"accuracy {percent(acc['baseline'])}%"
    if "watermarked" in acc:
        accuracy += f" -> {percent(acc['watermarked'])}%"
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
        cells = [f"{percent(base[m])} -> {percent(marked.get(m))}" for m in METRIC_NAMES]
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
        cells = [str(i), name, r["watermark"], percent(r["mean"]["fpr95"]) + se, percent(r["mean"]["auroc"]),
                 *[f"{percent(r['per_set'][s]['fpr95'])} / {percent(r['per_set'][s]['auroc'])}" for s in sets],
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


def format_terminal_leaderboard(rows: Sequence[dict[str, Any]], heading: str, limit: int = 10) -> str:
    """The best ``limit`` rows of a leaderboard for the terminal (the whole of it is in leaderboard.md)."""
    width = max([len(r["detector"]) for r in rows[:limit]] + [8])
    out = [heading, f"{'rank':>4}  {'detector':<{width}}  {'watermark':<10}  mean FPR95  mean AUROC"]
    for i, r in enumerate(rows[:limit], 1):
        se = f" ± {100 * r['fpr95_se']:.2f}" if "fpr95_se" in r else ""
        out.append(f"{i:>4}  {r['detector']:<{width}}  {r['watermark']:<10}  {percent(r['mean']['fpr95']) + se:>9}  "
                   f"{percent(r['mean']['auroc']):>10}")
    if len(rows) > limit:
        out.append(f"      ... {len(rows) - limit} more rows in leaderboard.md")
    return "\n".join(out)


def write_leaderboard_report(path: str | Path, rows: Sequence[dict[str, Any]], title: str, run: dict[str, Any],
                             notes: str = "", images: Sequence[tuple[str, str]] = ()) -> Path:
    """report.md of a run without a watermark: the model's accuracy, then the leaderboard itself (there is no
    `baseline -> watermarked` to show, and no objective or hyperparameters)."""
    accuracy = run.get("accuracy", {}).get("baseline")
    lines = [f"# {title}", "", f"Model {run.get('model', 'as given')}; ID test accuracy {percent(accuracy)}%; "
             f"{len(rows)} detectors, each fitted on ID training images only. {notes}".rstrip(), ""]
    board = format_leaderboard(rows, "Leaderboard", run.get("num_id_test"), run.get("num_ood"))
    text = "\n".join(lines) + "\n" + board.replace("# Leaderboard", "## Leaderboard", 1)
    if images:
        text += "\n## Pictures\n\n" + "\n".join(f"![{caption}]({file})" for caption, file in images) + "\n"
    return atomic_write_text(path, text)
