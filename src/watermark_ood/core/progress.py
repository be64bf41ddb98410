"""Progress output: live bars on a terminal, one plain line per epoch in logs.

Redirected output full of carriage-return bar updates is unreadable (lines tens of kB long), so bars are shown
only when stderr is a terminal; otherwise the learner prints one line per epoch through :func:`say`.
"""

from __future__ import annotations

import sys
from typing import Any, Iterable

from tqdm.auto import tqdm

from watermark_ood.core import distributed


def interactive() -> bool:
    """True when stderr is a terminal (bars make sense) and this is the process that speaks under torchrun."""
    return sys.stderr.isatty() and distributed.is_main_process()


def bar(iterable: Iterable[Any], enabled: bool, **kwargs: Any) -> tqdm:
    """A tqdm bar, shown only when ``enabled`` and :func:`interactive`."""
    return tqdm(iterable, disable=not (enabled and interactive()), **kwargs)


def say(message: str) -> None:
    """One line on stderr from the main process (progress and notices; results go to stdout or files)."""
    if distributed.is_main_process():
        print(message, file=sys.stderr, flush=True)
