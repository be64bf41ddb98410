"""The detectors that run the model themselves: scores that do not depend on the size of their backward passes'
batches, and the library's own class where a model has a layer whose per-image gradient is not rebuilt."""

import numpy as np

from conftest import make_images
from watermark_ood.detection.image_scores import odin_scores
from watermark_ood.runtime.device import ExecutionConfig


def test_odin_scores_do_not_depend_on_the_batch(trained_toy):
    model, norm, _ = trained_toy
    images = make_images(30, seed=3)
    small = odin_scores(model, images, norm, None, ExecutionConfig(device="cpu", eval_batch_size=7))
    whole = odin_scores(model, images, norm, None, ExecutionConfig(device="cpu", eval_batch_size=1000))
    assert np.allclose(small, whole, rtol=1e-5) and float(np.std(whole)) > 0


def test_parameter_gradient_kinds_fall_back_to_the_library_where_a_layer_is_not_rebuilt():
    """A LayerNorm has no batched per-image gradient here: the library's own class scores that model, with the
    same answer as calling it directly."""
    import torch
    from pytorch_ood.detector import GradNorm, GradUncertainty
    from torch import nn

    from watermark_ood.data.preprocessing import Normalization
    from watermark_ood.detection.image_gradients import GRADNORM_ALL, UNCERTAINTY
    from watermark_ood.detection.image_scores import parameter_gradient_scores

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LayerNorm(144), nn.Linear(144, 3)).eval()
    norm = Normalization((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    images = make_images(10, seed=4)
    for library, gradient_norm in ((GradUncertainty, UNCERTAINTY), (GradNorm, GRADNORM_ALL)):
        ours = parameter_gradient_scores(library.__name__, gradient_norm)(
            model, images, norm, None, ExecutionConfig(device="cpu", eval_batch_size=4))
        expected = -library(model).predict(norm(images.images)).numpy()
        assert np.allclose(ours, expected, rtol=1e-5) and float(np.std(ours)) > 0
