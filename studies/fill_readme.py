"""Regenerate the result tables inside studies/README.md (between <!-- NAME --> markers)."""

from __future__ import annotations

import importlib.util
import io
import json
import re
import sys
from contextlib import redirect_stdout
from pathlib import Path

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT.parent / "benchmarks" / "results"


def block(text: str, name: str, body: str) -> str:
    return re.sub(rf"<!-- {name} -->.*?<!-- /{name} -->", f"<!-- {name} -->\n{body.strip()}\n<!-- /{name} -->",
                  text, flags=re.S)


def summary() -> str:
    sys.argv = ["summarize.py", str(RESULTS / "cpu-2ep-10k"), str(RESULTS / "cpu-2ep-10k-auto")]
    spec = importlib.util.spec_from_file_location("summarize", ROOT / "summarize.py")
    summarize = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(summarize)

    buffer = io.StringIO()
    with redirect_stdout(buffer):
        summarize.main()
    return buffer.getvalue()


def scores() -> str:
    lines = []
    for results in sorted((RESULTS / "scores").glob("*/results.json")):
        run = json.loads(results.read_text())["runs"][0]
        lines += [f"**{results.parent.name}** (`{run['watermark']}`; accuracy "
                  f"{100 * run['accuracy']['baseline']:.1f}% -> {100 * run['accuracy']['watermarked']:.1f}%), "
                  "mean over the three OOD sets, `baseline -> watermarked`:", "",
                  "| score | FPR95 | AUROC | AUPR-In | AUPR-Out |", "|---|---|---|---|---|"]
        for name, b in run["scores"].items():
            base, marked = b["baseline"]["mean"], b["watermarked"]["mean"]
            lines.append(f"| {name} | " + " | ".join(f"{100 * base[m]:.1f} -> {100 * marked[m]:.1f}"
                                                   for m in ("fpr95", "auroc", "aupr_in", "aupr_out")) + " |")
        lines.append("")
    return "\n".join(lines) or "(pending)"


def issue14_target() -> str:
    import issue14_target as t

    rows = t.collect()
    return t.markdown(rows, t.verdict(rows))


if __name__ == "__main__":
    path = ROOT / "README.md"
    text = path.read_text()
    text = block(text, "SUMMARY_TABLE", summary())
    text = block(text, "SCORES_TABLE", scores())
    text = block(text, "ISSUE14_TARGET", issue14_target())
    path.write_text(text)
