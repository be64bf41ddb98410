"""The process-wide stop request: set by the CLI's SIGINT/SIGTERM handler (or a library caller), read by every
running loop after its step, so a fit ends with a checkpoint instead of a traceback."""

from __future__ import annotations

import threading

STOP = threading.Event()  # set by the CLI's SIGINT/SIGTERM handler; every running fit stops after its step
