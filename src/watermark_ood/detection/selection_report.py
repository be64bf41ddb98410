"""The ranking report of ``--score auto`` (detector.md beside the detector file): every candidate, the choice and
why. :meth:`..detector.Detector.save` writes it with the file, so the library and the CLI ship the same two files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from watermark_ood.core.fileio import atomic_write_text
from watermark_ood.core.figures import percent


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
            lines.append(f"| {i} | {row['score']} | {label}{refused} | {percent(ranked[0])} | "
                         f"{percent(row['fpr95'])} | {percent(ranked[1])} | "
                         f"{'' if chance is None else f'{100 * chance:.0f}% of resamples'} |")
        else:
            lines.append(f"| {i} | {row['score']} | {row['watermark']} | skipped: {row['error']} | | | |")
    return atomic_write_text(path, "\n".join(lines) + "\n")
