"""The README's list of detectors, written from the registry (a test keeps the README's copy equal to it)."""

from __future__ import annotations

import sys
from pathlib import Path

from watermark_ood.detection.registry import DETECTOR_KINDS, NOT_WIRED, needs_dropout

MARKER = "DETECTORS"


def detector_list() -> str:
    """One Markdown row per score: what it reads, whether it is fitted, exported, and in which pool of
    ``--score auto`` it is a candidate (``selection.pools``: shipped, the default, or only ``--candidates all``)."""
    rows = ["| name | reads | fitted on ID data | exports | `--score auto` pool | pytorch-ood class | paper |",
            "|---|---|---|---|---|---|---|"]
    yes = lambda flag: "yes" if flag else "no"  # noqa: E731
    for kind in DETECTOR_KINDS.values():
        rows.append(f"| `{kind.name}` | {kind.reads} | {yes(kind.fitted)} | {yes(kind.exports)} | {_pool(kind)} "
                    f"| {f'`{kind.library}`' if kind.library else 'ours'} | {kind.paper} |")
    rows += ["", f"Not wired ({len(NOT_WIRED)} of pytorch-ood's detector classes), each with why:", ""]
    rows += [f"- `{name}`: {why}" for name, why in NOT_WIRED.items()]
    return "\n".join(rows) + "\n"


def _pool(kind) -> str:
    """The smallest pool of ``--score auto`` the detector is a candidate of."""
    if kind.in_auto:
        return "shipped"
    return "all (models with dropout)" if needs_dropout(kind.name) else "all"


def replace_block(text: str, body: str, marker: str = MARKER) -> str:
    """``text`` with the part between ``<!-- marker -->`` and ``<!-- /marker -->`` replaced by ``body``."""
    start, end = f"<!-- {marker} -->\n", f"<!-- /{marker} -->"
    head, _, rest = text.partition(start)
    _, _, tail = rest.partition(end)
    return f"{head}{start}{body}{end}{tail}"


if __name__ == "__main__":  # python -m watermark_ood.reporting.detector_list README.md
    path = Path(sys.argv[1])
    path.write_text(replace_block(path.read_text(), detector_list()))
