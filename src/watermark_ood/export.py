"""Export: one module that takes normalized images, adds the watermark, runs the model, scores and decides.

Outputs ``(logits, score, is_ood)``; the same module is saved as TorchScript
(``torch.jit.trace``) and as ONNX (``torch.onnx.export`` with a dynamic batch).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .detector import WatermarkDetector
from .errors import WatermarkOODError, describe


class DeployedDetector(nn.Module):
    def __init__(self, model: nn.Module, watermark: torch.Tensor, score: str, threshold: float,
                 temperature: float = 1.0) -> None:
        super().__init__()
        self.model = model.eval()
        self.register_buffer("watermark", watermark.detach().clone())
        self.register_buffer("threshold", torch.tensor(float(threshold)))
        self.score_name = score
        self.temperature = float(temperature)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits = self.model(images + self.watermark).float()
        if self.score_name == "msp":
            score = torch.softmax(logits, dim=1).amax(dim=1)
        elif self.score_name == "energy":
            score = self.temperature * torch.logsumexp(logits / self.temperature, dim=1)
        else:
            score = logits.amax(dim=1)
        return logits, score, score < self.threshold


def deployable(detector: WatermarkDetector) -> DeployedDetector:
    if detector.threshold is None:
        raise WatermarkOODError("calibrate the detector before exporting it (watermark-ood calibrate)")
    if detector.watermark is None:
        raise WatermarkOODError("the detector has no watermark to export")
    return DeployedDetector(detector.model.cpu().eval(), detector.watermark.tensor, detector.score,
                            detector.threshold).eval()


def export_torchscript(detector: WatermarkDetector, path: str | Path) -> Path:
    module = deployable(detector)
    example = torch.zeros((2, *detector.watermark.image_shape))
    with torch.no_grad():
        traced = torch.jit.trace(module, (example,), check_trace=False)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    traced.save(str(tmp))
    tmp.replace(path)
    return path


def export_onnx(detector: WatermarkDetector, path: str | Path, opset: int = 18) -> Path:
    module = deployable(detector)
    example = torch.zeros((2, *detector.watermark.image_shape))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.onnx")
    try:
        torch.onnx.export(module, (example,), str(tmp), input_names=["images"],
                          output_names=["logits", "score", "is_ood"], opset_version=opset, dynamo=True,
                          dynamic_shapes=({0: torch.export.Dim("batch")},), external_data=False, verbose=False)
    except Exception as error:  # noqa: BLE001 - fall back to the TorchScript-based exporter
        try:
            torch.onnx.export(module, (example,), str(tmp), input_names=["images"],
                              output_names=["logits", "score", "is_ood"], opset_version=opset, dynamo=False,
                              dynamic_axes={"images": {0: "batch"}})
        except Exception:  # noqa: BLE001
            raise WatermarkOODError(f"ONNX export failed: {describe(error)}") from None
    tmp.replace(path)
    return path
