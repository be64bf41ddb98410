"""``watermark-ood export`` as a library call: a detector file as one TorchScript and/or ONNX module that takes
raw [0, 1] images and returns scores, decisions and logits (and p-values when asked)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from watermark_ood.detection.export import export_onnx, export_torchscript
from watermark_ood.pipelines.predict import load_detector
from watermark_ood.pipelines.source import ModelSource
from watermark_ood.runtime.device import ExecutionConfig

FORMATS = ("torchscript", "onnx")


def export(detector: str, source: ModelSource, out: str | Path, formats: Sequence[str] = FORMATS,
           p_value: bool = False, execution: ExecutionConfig | None = None) -> list[Path]:
    """Write ``out/detector.torchscript.pt`` and/or ``out/detector.onnx``; return the paths written."""
    loaded = load_detector(detector, source, execution)
    out = Path(out)
    written = []
    if "torchscript" in formats:
        written.append(Path(export_torchscript(loaded, out / "detector.torchscript.pt", p_value)))
    if "onnx" in formats:
        written.append(Path(export_onnx(loaded, out / "detector.onnx", with_p_value=p_value)))
    return written
