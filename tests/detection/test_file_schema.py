"""Detector, watermark and checkpoint files are validated before they are trusted (issue 33).

Every JSON field of a real file of every detector kind (combinations and watermarked files included) is replaced
by an object, a list, a string, -1, 1e308, null or NaN, or deleted. Each mutant must either be refused with a
WatermarkOODError, or load and predict sanely: finite scores and decisions that follow its threshold; where
the field does not enter the computation (the stored ranking, names, records), exactly the original's
predictions. No other outcome: no traceback, no warning.
"""

from __future__ import annotations

import copy
import json
import math
import warnings

import numpy as np
import pytest
import torch
from conftest import make_images
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save as save_bytes

from watermark_ood.core.errors import WatermarkOODError
from watermark_ood.core.fileio import read_safetensors
from watermark_ood.detection.detector import Detector
from watermark_ood.detection.registry import SCORE_NAMES
from watermark_ood.runtime.device import ExecutionConfig
from watermark_ood.watermark.file import Watermark

CPU = ExecutionConfig(device="cpu")
DELETE = object()
MUTANTS = [{}, [], "x", -1, 1e308, None, float("nan"), DELETE]
NO_EFFECT = {"selection", "model", "class_names"}  # records: read by reports, never by a score
KINDS = [*(n for n in SCORE_NAMES if n != "mcd"),  # mcd needs a model with dropout (test_registry.py)
         "knn+vim+energy", "mahalanobis+msp", "watermarked-energy", "watermarked-knn"]


def json_paths(value, prefix=()):
    """Every path to a field of a JSON value (containers and leaves)."""
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from json_paths(item, (*prefix, key))
    elif isinstance(value, list):
        for i, item in enumerate(value[:3]):
            yield from json_paths(item, (*prefix, i))


def mutated(meta, path, value):
    meta = copy.deepcopy(meta)
    target = meta
    for key in path[:-1]:
        target = target[key]
    if value is DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return meta


@pytest.fixture(scope="module")
def files(trained_toy, tmp_path_factory):
    """(tensors, metadata, original prediction) of a real detector file of every kind."""
    model, norm, train = trained_toy
    folder = tmp_path_factory.mktemp("kinds")
    mark = Watermark(torch.randn(1, 3, 8, 8) * 0.05, {"objective": "energy", "hyperparameters": {"sigma": 1.5}})
    out = {}
    for kind in KINDS:
        score, watermark = (kind.split("-", 1)[1], mark) if kind.startswith("watermarked") else (kind, None)
        detector = Detector(model, norm, watermark, score, execution=CPU).fit(train).calibrate(make_images(90, seed=4))
        detector.selection = {"chosen": {"score": score}, "ranking": [{"score": score, "fpr95": 0.1}]}
        detector.class_names = ["a", "b", "c"]
        path = detector.save(folder / f"{kind}.safetensors")
        tensors, header = read_safetensors(path.read_bytes())
        out[kind] = (tensors, json.loads(header["detector"]), Detector.load(path, model).predict(IMAGES))
    return out


IMAGES = make_images(6, seed=12).images


def outcome(model, tensors, meta, tmp_path, name="m.safetensors"):
    """'refused', or the prediction of the mutant; anything else raises and fails the test."""
    path = tmp_path / name
    path.write_bytes(save_bytes(tensors, metadata={"detector": json.dumps(meta)}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an overflow warning is an outcome the schema must prevent
        try:
            loaded = Detector.load(path, model, CPU)
            prediction = loaded.predict(IMAGES)
            prediction.thresholds = (loaded.calibration.thresholds_for(prediction.classes) if loaded.calibration
                                     is not None else np.full(len(prediction.scores), loaded.threshold))
            return prediction
        except WatermarkOODError as error:
            assert "\n" not in str(error)
            return "refused"


def check(result, original, path):
    if result == "refused":
        return
    assert np.isfinite(result.scores).all(), path
    assert result.is_ood.dtype == bool
    assert np.array_equal(result.is_ood, result.scores < result.thresholds), path  # decisions follow the threshold
    if path and path[0] in NO_EFFECT:
        assert np.array_equal(result.scores, original.scores) and np.array_equal(result.is_ood, original.is_ood)


@pytest.mark.parametrize("kind", KINDS)
def test_every_field_of_every_kind_refused_or_harmless(files, trained_toy, tmp_path, kind):
    model = trained_toy[0]
    tensors, meta, original = files[kind]
    refused = 0
    paths = [p for p in json_paths(meta) if p]
    for path in paths:
        for value in MUTANTS:
            result = outcome(model, tensors, mutated(meta, path, value), tmp_path)
            check(result, original, path)
            refused += result == "refused"
    assert refused >= len(paths)  # most replacements are type errors; some (null, delete) are legitimate


@pytest.mark.parametrize("field, value", [
    (("threshold",), -1e39), (("threshold",), float("nan")), (("tpr",), 1.5), (("tpr",), 0.0),
    (("normalization", "std", 0), 0.0), (("normalization", "mean", 0), float("inf")),
    (("input_shape", 0), 2), (("score_state", "k"), 10 ** 6), (("score_state", "k"), 0),
    (("model_fingerprint",), "0" * 16),
])
def test_values_that_cannot_be_right_are_refused(files, trained_toy, tmp_path, field, value):
    """The figures of the issue: a traceback, an overflow or a silently wrong value before; one line now."""
    tensors, meta, _ = files["knn"]
    assert outcome(trained_toy[0], tensors, mutated(meta, field, value), tmp_path) == "refused"


def test_combination_part_fields_are_checked(files, trained_toy, tmp_path):
    tensors, meta, _ = files["knn+vim+energy"]
    for value in ({}, 1e308, float("nan")):  # the part's fitted values: a TypeError or an overflow before
        assert outcome(trained_toy[0], tensors, mutated(meta, ("score_state", "parts", "1", "alpha"), value),
                       tmp_path) == "refused"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_tensor_mutations_are_refused_or_harmless(files, trained_toy, tmp_path, data):
    kind = data.draw(st.sampled_from(KINDS))
    tensors, meta, original = files[kind]
    name = data.draw(st.sampled_from(sorted(tensors)))
    change = data.draw(st.sampled_from(["nan", "inf", "shape", "dtype", "drop", "extra"]))
    mutant = dict(tensors)
    t = tensors[name]
    if change in ("nan", "inf"):
        t = t.clone().flatten()
        t[data.draw(st.integers(0, len(t) - 1))] = float(change)
        mutant[name] = t.view(tensors[name].shape)
    elif change == "shape":
        mutant[name] = torch.zeros(t.numel() + 1)
    elif change == "dtype":
        mutant[name] = t.to(torch.int64)
    elif change == "drop":
        del mutant[name]
    else:
        mutant[f"{name}.extra"] = torch.zeros(2)
    result = outcome(trained_toy[0], mutant, meta, tmp_path, "t.safetensors")
    if name == "none" or (change == "drop" and name.endswith("_log_num_classes")):
        check(result, original, ("selection",))  # a placeholder, or a cache rebuilt on load: nothing changes
    else:
        assert result == "refused", (kind, name, change)


def test_valid_files_load_unchanged(files, trained_toy, tmp_path):
    for kind, (tensors, meta, original) in files.items():
        result = outcome(trained_toy[0], tensors, meta, tmp_path)
        assert np.array_equal(result.scores, original.scores), kind


# ------------------------------------------------------------------ watermark files
WATERMARK_MUTANTS = [{}, [], "x", -1, 1e308, None, float("nan"), DELETE]


def test_watermark_file_fields(tmp_path):
    mark = Watermark(torch.randn(1, 3, 4, 4) * 0.1, {"objective": "energy", "preset": "cifar10",
                                                     "hyperparameters": {"sigma": 1.5, "lr_decay_at": [0.5]}})
    path = mark.save(tmp_path / "w.safetensors")
    tensors, header = read_safetensors(path.read_bytes())
    meta = json.loads(header["watermark_ood"])
    for field in [p for p in json_paths(meta) if p]:
        for value in WATERMARK_MUTANTS:
            bad = tmp_path / "bad.safetensors"
            bad.write_bytes(save_bytes(tensors, metadata={"watermark_ood": json.dumps(mutated(meta, field, value))}))
            try:
                loaded = Watermark.load(bad)
            except WatermarkOODError as error:
                assert "\n" not in str(error)
                continue
            assert torch.equal(loaded.tensor, mark.tensor)
            objective = loaded.metadata.get("objective", "")
            assert isinstance(objective, str) and isinstance(loaded.metadata.get("hyperparameters", {}), dict)
            for v in loaded.metadata.get("hyperparameters", {}).values():
                assert v is None or isinstance(v, (str, bool, list)) or math.isfinite(v)


def test_fit_checkpoint_fields_are_checked(tmp_path):
    """Every field of a fit checkpoint's state: refused in one line, or resumed from a sane position."""
    from watermark_ood.watermark.checkpoint import FitCheckpoint
    from watermark_ood.watermark.config import FitConfig
    from watermark_ood.watermark.records import EpochRecord

    config = FitConfig(epochs=2, batch_size=4)
    ckpt = FitCheckpoint(tmp_path, config, (3, 4, 4), 16)
    record = EpochRecord(epoch=1, loss=1.0, alpha=0.01, max_abs=0.1, mean_abs=0.01, l2=0.2, seconds=1.0, steps=4,
                         ce=0.5, ood_term=0.5)
    ckpt.save(torch.zeros(1, 3, 4, 4), 1, 0, [record], 4,
              best={"step": 3, "key": [0.5, 0.2], "watermark": torch.zeros(1, 3, 4, 4)})
    tensors, header = read_safetensors(ckpt.path.read_bytes())
    state = json.loads(header["state"])
    refused = 0
    for field in [p for p in json_paths(state) if p and p[0] not in ("config", "image_shape", "num_images")]:
        for value in MUTANTS:
            ckpt.path.write_bytes(save_bytes(tensors, metadata={"state": json.dumps(mutated(state, field, value))}))
            try:
                loaded = FitCheckpoint(tmp_path, config, (3, 4, 4), 16).load()
            except WatermarkOODError as error:
                assert "\n" not in str(error)
                refused += 1
                continue
            assert 0 <= loaded.epoch <= 2 and loaded.step >= 0 and torch.isfinite(loaded.watermark).all()
    assert refused > 20
