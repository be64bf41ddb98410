"""Import paths of the flat package (before the layered one) keep working for one release.

``watermark_ood.detector`` and the other old module names are modules that replace themselves, in
``sys.modules``, by the module the code moved to, after one warning. The old name and the new one are then the
same object, so monkeypatching, ``isinstance`` and private names behave as before.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import warnings


def warn_moved(old: str, new: str, stacklevel: int = 3) -> None:
    """The one warning of an old import path (shown once: the module is imported once)."""
    warnings.warn(f"{old} moved to {new}; the old import path will be removed in the next release",
                  FutureWarning, stacklevel=stacklevel)


def moved(old: str, new: str) -> None:
    """Warn once that ``old`` moved to ``new`` and make ``old`` an alias of it."""
    warn_moved(old, new, stacklevel=4)
    sys.modules[old] = importlib.import_module(new)


def forwarding(package: str, sources: tuple[str, ...]):
    """A module ``__getattr__`` for a layer package whose name was a flat module before (``watermark_ood.data``
    was ``data.py``): a name of the old module resolves, on first use, in the modules it moved to, so
    ``watermark_ood.data.ImageSet`` keeps working without importing the layer's every module up front."""

    def __getattr__(name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        if importlib.util.find_spec(f"{package}.{name}") is not None:
            return importlib.import_module(f"{package}.{name}")
        for source in sources:
            module = importlib.import_module(source)
            if hasattr(module, name):
                return getattr(module, name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
