"""Moved to :mod:`watermark_ood.models.architectures`; this import path works for one release and warns once."""

from watermark_ood.core.compat import moved

moved(__name__, "watermark_ood.models.architectures")

import importlib  # noqa: E402
import sys  # noqa: E402

for _name in ("cifar_resnet", "small_cnn", "wide_resnet"):  # old submodule paths name the same module objects
    sys.modules[f"{__name__}.{_name}"] = importlib.import_module(f"watermark_ood.models.architectures.{_name}")
