"""A score object saves what its kind's schema declares, read by name from the library object: the same state the
earlier reading of every attribute (minus a deny-list of what is rebuilt) gave, for every kind that fits."""

import pytest
import torch
from torch import nn

from conftest import make_images
from watermark_ood.detection.detector import Detector
from watermark_ood.detection.registry import DETECTOR_KINDS, SCORE_NAMES
from watermark_ood.runtime.device import ExecutionConfig

CPU = ExecutionConfig(device="cpu")
# What the earlier state() skipped: attributes rebuilt from the model (its deny-list, kept here as the reference).
REBUILT = {"encoder", "model", "head", "backbone", "detector", "ash", "knn", "criterion", "_device", "_base", "norm_std"}


def every_attribute_state(impl) -> tuple[dict, dict]:
    tensors, values = {}, {}
    for key, value in vars(impl).items():
        if key in REBUILT:
            continue
        if isinstance(value, nn.ParameterDict):
            values[key] = {"parameter_dict": list(value.keys())}
            tensors.update({f"{key}.{k}": p.detach().float().cpu() for k, p in value.items()})
        elif isinstance(value, torch.Tensor):
            tensors[key] = value.detach().cpu()
        elif value is None or isinstance(value, (bool, int, float, str)):
            values[key] = value
    return tensors, values


@pytest.mark.parametrize("name", [n for n in SCORE_NAMES if DETECTOR_KINDS[n].fitted
                                  and DETECTOR_KINDS[n].score_images is None])
def test_the_saved_state_is_the_declared_state(name, trained_toy):
    model, norm, train = trained_toy
    detector = Detector(model, norm, None, name, execution=CPU).fit(train)
    detector.scores(make_images(12, seed=9))  # some kinds cache a value at their first score (pnml)
    tensors, values = detector.scorer.state()
    reference_tensors, reference_values = every_attribute_state(detector.scorer.impl)
    assert values == {"fitted": True, **reference_values}
    assert sorted(tensors) == sorted(reference_tensors) and (tensors or len(values) > 1)  # fitted: saves something
    assert all(torch.equal(tensors[k], reference_tensors[k]) for k in tensors)
