"""Export: one module from raw images to a decision, as torchvision weights carry their own preprocessing.

Input: float images in [0, 1], NCHW. Inside: the model's normalization, the watermark (if any), the model,
the detector's score and its threshold (one per predicted class for ``--per-class`` detectors). Output:
``(logits, score, is_ood)``, score higher = more ID; with ``with_p_value`` (``export --p-value``) a fourth output,
the conformal p-value, computed against the sorted calibration scores stored inside (float32, as the scores).
Saved as TorchScript (``torch.jit.trace``) and as ONNX (``torch.onnx.export``, dynamic batch).

Penultimate features are read by running a copy of the model whose last linear layer is replaced by the
identity, then applying that layer: plain tensor code that traces. Detectors on intermediate layers run a copy of
the model with the same forward hooks that fit them (:class:`..models.layers.LayerTaps`, or
:class:`..models.layers.LayerRewrite` for a changed feature map): a hook's tensor operations run inside the traced
forward pass, so both formats record them. ODIN is refused: its input perturbation needs a backward pass inside
inference, which neither format carries.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from watermark_ood.core.errors import WatermarkOODError, describe
from watermark_ood.detection.detector import Detector
from watermark_ood.detection.registry import Reads
from watermark_ood.models.layers import LayerRewrite, LayerTaps
from watermark_ood.models.taps import split_at_head


class DeployedDetector(nn.Module):
    def __init__(self, detector: Detector, with_p_value: bool = False) -> None:
        super().__init__()
        if detector.spec.export_refusal:
            raise WatermarkOODError(detector.spec.export_refusal)
        if detector.threshold is None:
            raise WatermarkOODError("calibrate the detector before exporting it (watermark-ood calibrate)")
        if detector.input_shape is None:
            raise WatermarkOODError("the detector does not record its input shape; calibrate it again")
        model, scorer = frozen_copy(detector.model.cpu().eval(), detector.scorer)
        self.features_model, self.head = split_at_head(model)
        self.features_model.eval()
        norm = detector.normalization
        self.register_buffer("mean", torch.tensor(norm.mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(norm.std, dtype=torch.float32).view(1, -1, 1, 1))
        w = detector.watermark.tensor if detector.watermark is not None else torch.zeros((1, *detector.input_shape))
        self.register_buffer("watermark", w.detach().float().clone())
        self.register_buffer("threshold", torch.tensor(float(detector.threshold)))
        calibration = detector.calibration
        classes = self.head.out_features
        thresholds = torch.full((classes,), float(detector.threshold))
        if calibration is not None and calibration.class_thresholds is not None:
            thresholds = torch.full((classes,), float("inf"))  # a class never calibrated: nothing is guaranteed
            for c, t in calibration.class_thresholds.items():
                if 0 <= c < classes:
                    thresholds[c] = t
        self.register_buffer("class_thresholds", thresholds)
        # p-values: the sorted calibration scores (and their classes) inside, as float32 like the scores
        scores = torch.zeros(0) if calibration is None else torch.from_numpy(calibration.scores).float()
        owners = torch.zeros(len(scores), dtype=torch.int64) if calibration is None or calibration.classes is None \
            else torch.from_numpy(calibration.classes)
        self.register_buffer("calibration_scores", scores)
        self.register_buffer("calibration_classes", owners)
        self.per_class = calibration is not None and calibration.class_thresholds is not None
        self.with_p_value = with_p_value
        if with_p_value and calibration is None:
            raise WatermarkOODError("this detector file predates conformal calibration and holds no calibration "
                                    "scores, so its exported module cannot give p-values; calibrate it again")
        self.scorer = scorer
        self.input_shape = tuple(detector.input_shape)
        self._check_split(model)
        self.reads = detector.reads
        self.tapped, self._taps = self._tap(detector, model)

    def _tap(self, detector: Detector, model: nn.Module) -> tuple[nn.Module | None, LayerTaps | None]:
        """A copy of the model with the detector's hooks: its tapped layers' statistics, or its changed map."""
        if detector.reads not in (Reads.LAYERS, Reads.MAP):
            return None, None
        tapped = copy.deepcopy(model).eval()
        if detector.reads == Reads.MAP:
            LayerRewrite(tapped, detector.layers[0], detector.scorer.kind.change_map())
            return tapped, None
        return tapped, LayerTaps(tapped, detector.layers, detector.layer_reducer())

    def _check_split(self, model: nn.Module) -> None:
        x = torch.rand((2, *self.input_shape))
        with torch.no_grad():
            direct = model((x - self.mean) / self.std)
            split = self.head(self.features_model((x - self.mean) / self.std).flatten(1))
        if direct.shape != split.shape or not torch.allclose(direct, split, rtol=1e-4, atol=1e-4):
            raise WatermarkOODError("cannot export: the model's last linear layer is not its last operation, so "
                                    "its penultimate features cannot be separated from its logits")

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = (images - self.mean) / self.std + self.watermark
        if self.reads == Reads.LAYERS:  # one pass: the hooks append its statistics of the tapped layers
            logits = self.tapped(x).float()
            features = self._taps.features.pop()
        else:
            features = self.features_model(x).flatten(1).float()
            logits = self.head(features).float()
        if self.reads == Reads.MAP:  # the logits of the model run on its changed feature map
            features = self.tapped(x).float()
        score = self.scorer(logits, features, traceable=True).float().detach()
        predicted = logits.argmax(dim=1)
        is_ood = score < self.class_thresholds[predicted]
        # Inference outputs: detached, so callers can call .numpy() (the weights require grad in the module).
        if not self.with_p_value:
            return logits.detach(), score, is_ood
        below = self.calibration_scores[None, :] <= score[:, None]
        if self.per_class:
            own = self.calibration_classes[None, :] == predicted[:, None]
            counts, sizes = (below & own).sum(dim=1), own.sum(dim=1)
        else:
            counts, sizes = below.sum(dim=1), torch.full_like(predicted, self.calibration_scores.shape[0])
        p_value = (1.0 + counts.float()) / (1.0 + sizes.float())
        return logits.detach(), score, is_ood, p_value


_MODULE_REGISTRIES = {"_parameters", "_buffers", "_modules", "_non_persistent_buffers_set"}


def _freeze(value: Any, seen: set[int], depth: int = 0) -> Any:
    """``value`` with every tensor it holds detached and every module's parameters frozen, in place where it can."""
    if id(value) in seen or depth > 6:
        return value
    seen.add(id(value))
    if isinstance(value, nn.Module):
        value.requires_grad_(False)
        for child in value.children():
            _freeze(child, seen, depth + 1)
        for name, item in list(vars(value).items()):
            if name not in _MODULE_REGISTRIES:
                object.__setattr__(value, name, _freeze(item, seen, depth + 1))
        return value
    if isinstance(value, torch.Tensor):
        return value.detach() if value.requires_grad else value
    if isinstance(value, (list, dict)):
        for key, item in list(value.items() if isinstance(value, dict) else enumerate(value)):
            frozen = _freeze(item, seen, depth + 1)
            if frozen is not item:
                value[key] = frozen
        return value
    if hasattr(value, "__dict__") and not isinstance(value, type):
        for name, item in list(vars(value).items()):
            frozen = _freeze(item, seen, depth + 1)
            if frozen is not item:
                setattr(value, name, frozen)
    return value


def frozen_copy(model: nn.Module, scorer: Any) -> tuple[nn.Module, Any]:
    """Copies of the model and the score that share their layers as the originals do, with nothing that requires
    grad: a trace records every tensor the score reads that is not the module's own as a constant, and TorchScript
    refuses a constant that requires grad (the classifier's head inside pnml, she, react, ...: its weights do). The
    caller's model and detector keep their gradients."""
    model, scorer = copy.deepcopy((model, scorer))
    return model.requires_grad_(False), _freeze(scorer, set())


def deployable(detector: Detector, with_p_value: bool = False) -> DeployedDetector:
    return DeployedDetector(detector, with_p_value).eval()


def _example(module: DeployedDetector) -> torch.Tensor:
    return torch.rand((2, *module.input_shape))


def export_torchscript(detector: Detector, path: str | Path, with_p_value: bool = False) -> Path:
    """A traced TorchScript module (dynamic batch).

    ``torch.jit.trace`` warns that it is deprecated and, for KNN, that a Python int read from a tensor shape "might
    not generalize": that int is ``min(k + spare, bank size)``, a constant of the detector file, not of the batch.
    Both warnings are silenced here for that reason; tests check batch sizes 1, 3, 17 and 400 against the library.
    """
    module = deployable(detector, with_p_value)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.trace.* is deprecated", category=FutureWarning)
        try:
            traced = torch.jit.trace(module, (_example(module),), check_trace=False)
        except Exception as error:  # noqa: BLE001 - tracing fails in many ways
            raise WatermarkOODError(f"TorchScript export of {detector.score} failed: {describe(error)}") from error
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    traced.save(str(tmp))
    tmp.replace(path)
    return path


def export_onnx(detector: Detector, path: str | Path, opset: int = 18, with_p_value: bool = False) -> Path:
    module = deployable(detector, with_p_value)
    example = _example(module)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.onnx")
    outputs = ["logits", "score", "is_ood"] + (["p_value"] if with_p_value else [])
    names = dict(input_names=["images"], output_names=outputs, opset_version=opset)
    try:
        with torch.no_grad():
            torch.onnx.export(module, (example,), str(tmp), **names, dynamo=True,
                              dynamic_shapes=({0: torch.export.Dim("batch")},), external_data=False, verbose=False)
    except Exception as error:  # noqa: BLE001 - fall back to the TorchScript-based exporter
        try:
            with torch.no_grad():
                torch.onnx.export(module, (example,), str(tmp), **names, dynamo=False,
                                  dynamic_axes={"images": {0: "batch"}})
        except Exception:  # noqa: BLE001
            tmp.unlink(missing_ok=True)
            raise WatermarkOODError(f"ONNX export of {detector.score} failed: {describe(error)}") from error
    tmp.replace(path)
    return path
