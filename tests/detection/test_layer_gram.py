"""LayerGram (detection/layer_gram.py) beyond the library-equality test in test_registry.py."""

import torch

from watermark_ood.detection.layer_gram import LayerGram


def test_a_model_with_more_outputs_than_id_classes_is_scored_by_its_best_fitted_class():
    """An ImageNet-style head on a 3-class ID set: an image whose top output is an unfitted class is scored with
    the statistics of its most likely fitted class (it was an IndexError)."""
    widths = (2, 3)  # two layers: Gram vectors of width C_l x poles, poles = 2
    features = torch.rand(60, 2 * 2 + 3 * 2)
    labels = torch.arange(60) % 3
    gram = LayerGram(widths).fit_features(features, labels)
    logits = torch.randn(10, 5)
    logits[:5, 4] = 10.0  # the top output is class 4, which the ID data does not have
    test = torch.rand(10, features.shape[1])
    scores = gram.predict_structured(logits, test)
    assert torch.equal(scores, gram.predict_structured(logits[:, :3], test)) and torch.isfinite(scores).all()
