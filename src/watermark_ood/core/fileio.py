"""Our files on disk: atomic writes (a crash never leaves a half-written artefact behind) and checked reads."""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from safetensors.torch import load

from watermark_ood.core.distributed import is_main_process
from watermark_ood.core.errors import WatermarkOODError, describe


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write to a temporary file in the same folder, fsync, then rename over ``path``.

    Under torchrun only rank 0 writes; the other ranks skip every write.
    """

    path = Path(path)
    if not is_main_process():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would make results unreadable to other users
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete temporaries that an atomic write left when its process was killed (SIGKILL cannot clean up).

    Only our own pattern (``.<name>.<random>.tmp``) is touched, only below ``folder``, and only by rank 0.
    """

    folder = Path(folder)
    if not folder.is_dir() or not is_main_process():
        return []
    stale = [p for p in folder.rglob(".*.tmp") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def read_safetensors(blob: bytes):
    """Tensors and the string metadata of a safetensors file's bytes; raises on a damaged file."""

    tensors = load(blob)
    header = json.loads(blob[8: 8 + int.from_bytes(blob[:8], "little")])
    metadata = header.get("__metadata__") or {}
    if not isinstance(metadata, dict):
        raise ValueError("metadata is not a mapping")
    return tensors, metadata


def read_artefact(path: str | Path, kind: str, not_found: str = "") -> tuple[dict[str, Any], dict[str, str]]:
    """Tensors and string metadata of one of our safetensors files, or the one-line error every reader gives:
    ``<path>: <kind> file not found<not_found>`` or ``<path>: not a valid <kind> file (<why>)``."""
    path = Path(path)
    if not path.is_file():
        raise WatermarkOODError(f"{path}: {kind} file not found{not_found}")
    try:
        return read_safetensors(path.read_bytes())
    except Exception as error:  # noqa: BLE001 - safetensors and json raise several types on damaged files
        raise WatermarkOODError(f"{path}: not a valid {kind} file ({describe(error)})") from None


def what_file_is(path: str | Path) -> str:
    """A short description of a file that failed to load as a checkpoint: empty, text, truncated zip, ...

    For error messages: users need to know *what* they passed, not a reader's internal key error.
    """

    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        return "an empty file (0 bytes)"
    with path.open("rb") as handle:
        head = handle.read(512)
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(path) as archive:
                archive.namelist()
        except (zipfile.BadZipFile, UnicodeDecodeError, ValueError, OSError, EOFError):  # damaged headers/names
            return f"a truncated or damaged zip archive ({size} bytes)"
        return f"a zip archive ({size} bytes) that is not a PyTorch checkpoint"
    if head[:1] == b"\x80" and len(head) > 1 and head[1] <= 5:
        return f"a pickle file ({size} bytes), which is read only when it holds tensors alone"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return f"a binary file ({size} bytes) of unknown format"
    if all(c.isprintable() or c in "\r\n\t" for c in text):
        first = text.strip().splitlines()[0][:40] if text.strip() else ""
        return f"a text file ({size} bytes, starting {first!r})"
    return f"a binary file ({size} bytes) of unknown format"
