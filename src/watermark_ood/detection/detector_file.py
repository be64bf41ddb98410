"""The detector file: safetensors tensors (watermark, fitted score state, sorted calibration scores) and one JSON
header, every field checked against its schema before anything is built; no pickle anywhere.

Format 1 (logit scores only) is still read; format 2 holds any score, its fitted state and the model head's
fingerprint. Every failure is a one-line :class:`WatermarkOODError` naming the field.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from watermark_ood.core.errors import WatermarkOODError, describe
from watermark_ood.core.fileio import read_artefact
from watermark_ood.core.schema import check_float, check_int, check_list, check_mapping, check_str, check_tensor, fail
from watermark_ood.data.preprocessing import Normalization
from watermark_ood.detection.conformal import Calibration, conformal_threshold
from watermark_ood.detection.posthoc import Combination, check_state
from watermark_ood.detection.registry import DetectorSpec, check_name
from watermark_ood.models.taps import last_linear
from watermark_ood.watermark.file import Watermark, check_watermark_metadata

FORMAT = "watermark-ood-detector"
FORMAT_VERSION = 2  # 1: logit scores only (still read); 2: any score, its fitted state, model fingerprint


def model_fingerprint(model: torch.nn.Module) -> str:
    """sha256 of the classifier head's weights: identifies the model a detector was fitted for, cheaply."""
    head = last_linear(model)
    digest = hashlib.sha256()
    for tensor in (head.weight, head.bias):
        if tensor is not None:
            digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def read_detector_file(path: str | Path) -> tuple[dict[str, Any], Watermark | None]:
    """Metadata (with ``score_tensors``) and watermark of a detector file, every field checked against the
    file's schema (:func:`check_metadata`); every failure is a one-line WatermarkOODError naming the field."""
    path = Path(path)
    tensors, header_metadata = read_artefact(path, "detector")
    try:
        meta = json.loads(header_metadata["detector"], parse_constant=_refuse_constant)
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise ValueError("not a watermark-ood detector")
    except WatermarkOODError as error:
        raise WatermarkOODError(f"{path}: not a valid detector file ({error})") from None
    except Exception as error:  # noqa: BLE001 - damaged files fail in many ways
        raise WatermarkOODError(f"{path}: not a valid detector file ({describe(error)})") from None
    try:
        normalization = check_metadata(meta, tensors)
        watermark = None
        if "watermark" in tensors:
            watermark = Watermark(tensors["watermark"], meta.get("watermark") or {})
    except WatermarkOODError as error:
        raise WatermarkOODError(f"{path}: not a valid detector file ({error})") from None
    meta["normalization"] = normalization
    meta["score_tensors"] = {k.split("/", 1)[1]: v for k, v in tensors.items() if k.startswith("score/")}
    try:
        meta["calibration_state"] = check_calibration(meta, tensors)
    except WatermarkOODError as error:
        raise WatermarkOODError(f"{path}: not a valid detector file ({error})") from None
    return meta, watermark



def _refuse_constant(name: str) -> float:
    raise WatermarkOODError(f"the JSON header holds {name}, which no field may be")


def _check_layers_field(meta: dict[str, Any]) -> None:
    """The tapped layers' names: present exactly for a score on intermediate layers (checked on the model later)."""
    layered = DetectorSpec.parse(meta["score"]).reads_layers
    if meta.get("layers") is None:
        if layered:
            raise fail("layers", f"the names of the layers {meta['score']} taps", None)
        return
    if not layered:
        raise fail("layers", f"nothing ({meta['score']} reads no intermediate layers)", meta["layers"])
    for i, name in enumerate(check_list("layers", meta["layers"])):
        check_str(f"layers[{i}]", name)
    if not meta["layers"]:
        raise fail("layers", "at least one layer name", meta["layers"])


def check_metadata(meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Normalization:
    """Every JSON field of a detector file (formats 1 and 2) and its watermark tensor, before anything is built.

    Returns the normalization. Sizes that need the model (feature dimension, classes) are checked by
    :func:`check_score_state` once the model is known.
    """
    version = meta.get("format_version", 1)
    check_int("format_version", version, 1, FORMAT_VERSION)
    check_str("model", meta.get("model"))
    if meta.get("model_fingerprint") is not None or version >= 2:
        check_str("model_fingerprint", meta.get("model_fingerprint"), r"[0-9a-f]{16}")
    check_str("score", meta.get("score"))
    check_name(meta["score"])
    norm = check_mapping("normalization", meta.get("normalization"))
    if set(norm) != {"mean", "std"}:
        raise fail("normalization", "an object with mean and std", norm)
    mean = check_list("normalization.mean", norm["mean"])
    std = check_list("normalization.std", norm["std"], len(mean))
    if not mean:
        raise fail("normalization.mean", "one value per channel", mean)
    for i, (m, v) in enumerate(zip(mean, std)):
        check_float(f"normalization.mean[{i}]", m, 0.0, 1.0)  # of pixels in [0, 1]
        check_float(f"normalization.std[{i}]", v, 0.0, 1e3, low_open=True)
    shape = meta.get("input_shape")
    if shape is not None:
        for i, size in enumerate(check_list("input_shape", shape, 3)):
            check_int(f"input_shape[{i}]", size, 1, 1 << 16)
        if shape[0] != len(mean):
            raise fail("input_shape[0]", f"{len(mean)} channels, as the normalization has", shape[0])
    threshold, tpr = meta.get("threshold"), meta.get("tpr")
    if threshold is not None:
        check_float("threshold", threshold)
    if tpr is not None:
        check_float("tpr", tpr, 0.0, 1.0, low_open=True)
    if (threshold is None) != (tpr is None):
        raise fail("tpr", "a value exactly when threshold has one", tpr)
    if meta.get("selection") is not None:
        check_mapping("selection", meta["selection"])
    if meta.get("watermark") is not None:
        check_watermark_metadata("watermark", meta["watermark"])
    _check_layers_field(meta)
    names = meta.get("class_names")
    if names is not None:
        for i, name in enumerate(check_list("class_names", names)):
            check_str(f"class_names[{i}]", name)
    if ("watermark" in tensors) != (meta.get("watermark") is not None):
        raise fail("watermark", "metadata exactly when the file holds a watermark tensor", meta.get("watermark"))
    if "watermark" in tensors:
        mark = tensors["watermark"]
        expected = (1, *shape) if shape is not None else (1, len(mean), "H", "W")
        check_tensor("tensor watermark", mark, expected, {})
    unknown = sorted(k for k in tensors if k not in ("watermark", "none", "calibration/scores", "calibration/classes")
                     and not k.startswith("score/"))
    if unknown:
        raise fail(f"tensor {unknown[0]}", "no such tensor in a detector file", "a tensor")
    return Normalization(tuple(mean), tuple(std))


def check_calibration(meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Calibration | None:
    """The calibration block (sorted scores, per-class thresholds) of files written since conformal calibration."""
    block, scores = meta.get("calibration"), tensors.get("calibration/scores")
    if block is None and scores is None and "calibration/classes" not in tensors:
        return None  # an older file: threshold and tpr only
    block = check_mapping("calibration", block)
    if scores is None:
        raise fail("tensor calibration/scores", "the sorted calibration scores", "none")
    n = check_int("calibration.n", block.get("n"), 1)
    check_tensor("tensor calibration/scores", scores, (n,), {})
    values = scores.double().numpy()
    tpr = check_float("tpr", meta.get("tpr"), 0.0, 1.0, low_open=True, high_open=True)
    classes = tensors.get("calibration/classes")
    thresholds = None
    if block.get("per_class"):
        if classes is None or classes.dtype != torch.int64 or tuple(classes.shape) != (n,):
            raise fail("tensor calibration/classes", f"{n} int64 class indices", "none" if classes is None
                       else f"{classes.dtype} {tuple(classes.shape)}")
        classes = classes.numpy()
        per = check_mapping("calibration.classes", block.get("classes"))
        thresholds = {}
        for key, item in per.items():
            if not key.isdigit():
                raise fail("calibration.classes", "class indices", key)
            c = int(key)
            own = values[classes == c]
            if len(own) == 0 or np.any(np.diff(own) < 0):
                raise fail(f"calibration.classes.{key}", "sorted calibration scores of this class", len(own))
            thresholds[c] = conformal_threshold(own, tpr)
            check_float(f"calibration.classes.{key}.threshold", check_mapping(f"calibration.classes.{key}", item)
                        .get("threshold"))
    else:
        if classes is not None:
            raise fail("tensor calibration/classes", "none (the calibration is not per class)", "a tensor")
        if np.any(np.diff(values) < 0):
            raise fail("tensor calibration/scores", "scores sorted ascending", "unsorted scores")
        classes = None
    threshold = conformal_threshold(values, tpr)  # recomputed: the stored threshold must be the conformal one
    if meta.get("threshold") is None or abs(threshold - float(meta["threshold"])) > 1e-6 * max(1.0, abs(threshold)):
        raise fail("threshold", f"{threshold:.9g}, the split-conformal threshold of the stored scores",
                   meta.get("threshold"))
    return Calibration(values, classes, tpr, threshold, thresholds)


def check_score_state(meta: dict[str, Any], scorer: Any, model: torch.nn.Module) -> None:
    """The fitted state against the score's schema and this model's feature and class counts."""
    name, tensors = meta["score"], meta["score_tensors"]
    values = meta.get("score_state")
    if scorer is None:  # odin, mcd: nothing fitted, nothing stored
        if tensors or values not in (None, {}, {"fitted": True}):
            raise fail("score_state", f"nothing for {name}, which is not fitted", values)
        return
    if values is None and int(meta.get("format_version", 1)) == 1:
        values = {"fitted": True}  # format 1: logit scores, no state
    head = scorer.parts[0].head if isinstance(scorer, Combination) else scorer.head
    try:
        classes = last_linear(model).out_features
    except WatermarkOODError:
        classes = None
    check_state(name, values, tensors, head, classes)
