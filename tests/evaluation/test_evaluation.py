import pytest
import torch

from watermark_ood.core.errors import WatermarkOODError
from watermark_ood.data.synthetic import gaussian_set, uniform_set
from watermark_ood.evaluation.protocol import evaluate, protocol_subsample
from watermark_ood.runtime.device import ExecutionConfig
from watermark_ood.runtime.inference import predict_logits
from watermark_ood.watermark.file import Watermark

CPU = ExecutionConfig(device="cpu", eval_batch_size=7)


def test_predict_logits_batches_and_adds_watermark(toy_model, toy_test, norm3):
    plain = predict_logits(toy_model, toy_test, norm3, None, CPU)
    w = Watermark(torch.full((1, 3, 8, 8), 0.3))
    marked = predict_logits(toy_model, toy_test, norm3, w, CPU)
    with torch.no_grad():
        expected = toy_model(norm3(toy_test.images) + 0.3)
    assert plain.shape == (60, 3)
    assert torch.allclose(marked, expected, atol=1e-5)
    assert not torch.allclose(plain, marked)
    # The model stays usable for autograd after inference-mode scoring.
    toy_model(norm3(toy_test.images[:2])).sum().backward()


def test_protocol_subsamples_each_ood_set_to_a_fifth_of_id(toy_test):
    sets = [gaussian_set(100, (3, 8, 8), 0, name="g"), uniform_set(5, (3, 8, 8), 0, name="u")]
    sub = protocol_subsample(sets, len(toy_test), seed=0)
    assert [len(s) for s in sub] == [12, 5]
    again = protocol_subsample(sets, len(toy_test), seed=0)
    assert torch.equal(sub[0].images, again[0].images)


def test_evaluate_reports_per_set_mean_and_accuracy(toy_model, toy_test, norm3):
    sets = [gaussian_set(40, (3, 8, 8), 0, name="g"), uniform_set(40, (3, 8, 8), 1, name="u")]
    ev = evaluate(toy_model, norm3, toy_test, sets, Watermark(torch.zeros(1, 3, 8, 8)), CPU)
    metrics = ev.metrics("msp")
    assert set(metrics["baseline"]) == {"g", "u", "mean"}
    assert metrics["baseline"] == metrics["watermarked"]  # a zero watermark changes nothing
    acc = ev.accuracy()
    assert acc["baseline"] == acc["watermarked"]
    manual = (predict_logits(toy_model, toy_test, norm3, None, CPU).argmax(1) == toy_test.labels).float().mean()
    assert acc["baseline"] == pytest.approx(float(manual))


def test_evaluate_rejects_bad_sets(toy_model, toy_test, norm3):
    with pytest.raises(WatermarkOODError):
        evaluate(toy_model, norm3, toy_test, [], None, CPU)
    with pytest.raises(WatermarkOODError, match="shape"):
        evaluate(toy_model, norm3, toy_test, [gaussian_set(5, (3, 16, 16), 0)], None, CPU)
    with pytest.raises(WatermarkOODError, match="unique"):
        evaluate(toy_model, norm3, toy_test, [gaussian_set(5, (3, 8, 8), 0, name="a")] * 2, None, CPU,
                 protocol=False)


def test_leaderboards_give_detectors_on_layers_their_own_passes(toy_model, toy_train, toy_test, norm3):
    """A leaderboard row of a layer or map detector equals that detector fitted and scored on its own."""
    from watermark_ood.data.synthetic import uniform_set
    from watermark_ood.detection.detector import Detector
    from watermark_ood.evaluation.metrics import ood_metrics
    from watermark_ood.evaluation.protocol import evaluate_scores
    from watermark_ood.runtime.device import ExecutionConfig

    cpu = ExecutionConfig(device="cpu")
    sets = [uniform_set(20, (3, 8, 8), 0, name="u")]
    table = evaluate_scores(toy_model, norm3, toy_train, toy_test, sets, None, ["multimahalanobis", "rankfeat"], cpu)
    for name in ("multimahalanobis", "rankfeat"):
        alone = Detector(toy_model, norm3, None, name, execution=cpu).fit(toy_train)
        expected = ood_metrics(alone.scores(toy_test), alone.scores(sets[0]))
        assert all(abs(table[name]["baseline"]["u"][m] - v) < 1e-6 for m, v in expected.items()), name
