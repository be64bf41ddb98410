import pytest
import torch

from watermark_ood.core.errors import WatermarkOODError
from watermark_ood.detection.logit_scores import energy_score, get_score, max_logit_score, msp_score


def test_scores_are_higher_for_confident_logits():
    logits = torch.tensor([[10.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    for fn in (msp_score, energy_score, max_logit_score):
        s = fn(logits)
        assert s[0] > s[1]


def test_values():
    logits = torch.tensor([[2.0, 0.0]])
    assert msp_score(logits).item() == pytest.approx(torch.softmax(logits, 1)[0, 0].item())
    assert energy_score(logits, 2.0).item() == pytest.approx(2 * torch.logsumexp(logits / 2, 1).item())
    assert max_logit_score(logits).item() == 2.0


def test_unknown_score():
    with pytest.raises(WatermarkOODError):
        get_score("nope")
