"""Command-line interface: argument parsing, signals and dispatch; every command is a library call in
:mod:`watermark_ood.pipelines`.

Every user error becomes one line on stderr and exit status 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
from pathlib import Path
from typing import Sequence

from watermark_ood.cli.commands import COMMANDS, check_options
from watermark_ood.cli.parser import build_parser
from watermark_ood.core import distributed
from watermark_ood.core.errors import WatermarkOODError
from watermark_ood.runtime.stop import STOP
from watermark_ood.watermark.learner import StopRequested

__all__ = ["main", "build_parser"]


def _install_stop_handler() -> None:
    """SIGINT/SIGTERM: finish the current step, write a checkpoint, then stop (see learner.StopRequested)."""
    STOP.clear()

    def handler(signum, frame):  # noqa: ARG001
        if STOP.is_set():  # a second signal stops at once
            raise KeyboardInterrupt
        STOP.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handler)


def _one_voice(args) -> None:
    """Under torchrun every rank computes; rank 0 alone prints."""
    if distributed.launched_by_torchrun() and hasattr(args, "device"):
        args.device = distributed.init_from_environment(args.device)
        if not distributed.is_main_process():
            args.no_progress = True
            sys.stdout = open(os.devnull, "w")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out) if getattr(args, "out", None) else None
    created = out is not None and not out.exists()
    if args.command in ("fit", "bench"):
        _install_stop_handler()
    _one_voice(args)
    try:
        check_options(args)
        status = COMMANDS[args.command](args)
        if STOP.is_set():  # the signal came after the last step: the outputs are complete, the exit says interrupted
            print("watermark-ood: interrupted after the work had finished; all outputs were written", file=sys.stderr)
            return 130
        return status
    except StopRequested as stop:
        print(f"watermark-ood: stopped; checkpoint written to {stop.args[0]}. Run the same command again to resume.",
              file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("watermark-ood: interrupted", file=sys.stderr)
        return 130
    except WatermarkOODError as error:
        if args.debug:
            raise
        if created and out is not None and out.is_dir() and not any(out.iterdir()):
            shutil.rmtree(out, ignore_errors=True)
        print(f"watermark-ood: error: {error}", file=sys.stderr)
        return 2
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    sys.exit(main())
