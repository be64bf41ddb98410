"""Backward passes run in capped batches (their graphs hold every activation); the scores do not depend on it."""

import numpy as np

from conftest import make_images
from watermark_ood.runtime.device import ExecutionConfig
from watermark_ood.runtime.inference import GRADIENT_BATCH, gradient_batch, odin_scores


def test_gradient_batches_are_capped_and_odin_scores_do_not_depend_on_the_batch(trained_toy):
    assert gradient_batch(ExecutionConfig(device="cpu", eval_batch_size=4000)) == GRADIENT_BATCH
    assert gradient_batch(ExecutionConfig(device="cpu", eval_batch_size=7)) == 7
    model, norm, _ = trained_toy
    images = make_images(30, seed=3)
    small = odin_scores(model, images, norm, None, ExecutionConfig(device="cpu", eval_batch_size=7))
    whole = odin_scores(model, images, norm, None, ExecutionConfig(device="cpu", eval_batch_size=1000))
    assert np.allclose(small, whole, rtol=1e-5) and float(np.std(whole)) > 0
