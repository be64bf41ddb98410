import json

import pytest
import torch
from conftest import write_npz_dataset

from watermark_ood.cli import main
from watermark_ood.data.synthetic import uniform_set
from watermark_ood.evaluation.protocol import evaluate_scores
from watermark_ood.models.registry import build_model
from watermark_ood.models.taps import PenultimateHook, last_linear
from watermark_ood.runtime.device import ExecutionConfig
from watermark_ood.runtime.inference import WatermarkedModel
from watermark_ood.watermark.file import Watermark


@pytest.mark.parametrize("name, head", [("resnet20", "linear"), ("wrn40_2", "fc"), ("torchvision:resnet18", "fc"),
                                        ("torchvision:mobilenet_v3_small", "classifier.3")])
def test_hook_finds_the_head_of_registry_and_torchvision_models(name, head):
    model, _ = build_model(name, num_classes=5)
    assert last_linear(model) is model.get_submodule(head)
    hook = PenultimateHook(model.eval())
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    feats = hook.close()
    assert feats.shape == (2, last_linear(model).in_features)


def test_watermarked_model_adds_the_watermark(toy_model):
    w = torch.randn(1, 3, 8, 8)
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(WatermarkedModel(toy_model, Watermark(w))(x), toy_model(x + w))


def test_every_score_with_and_without_watermark(toy_model, toy_train, toy_test, norm3):
    sets = [uniform_set(20, (3, 8, 8), 0, name="u")]
    scores = ["msp", "energy", "maxlogit", "odin", "mahalanobis", "knn", "vim"]
    table = evaluate_scores(toy_model, norm3, toy_train, toy_test, sets, Watermark(torch.randn(1, 3, 8, 8) * 0.1),
                            scores, ExecutionConfig(device="cpu"))
    assert list(table) == scores
    for block in table.values():
        assert set(block) == {"baseline", "watermarked", "cost"}
        assert set(block["cost"]["baseline"]) == {"fit_seconds", "images_per_second", "file_bytes"}
        assert 0 <= block["baseline"]["mean"]["auroc"] <= 1
    assert table["msp"]["baseline"] != table["msp"]["watermarked"]
    # the values, not only the keys: the logit scores recomputed directly, under both conditions
    from watermark_ood.detection.logit_scores import energy_score, msp_score
    from watermark_ood.evaluation.metrics import ood_metrics
    from watermark_ood.runtime.inference import predict_logits

    mark = Watermark(torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 0.1)
    table = evaluate_scores(toy_model, norm3, toy_train, toy_test, sets, mark, ["energy", "msp"],
                            ExecutionConfig(device="cpu"))
    for condition, w in (("baseline", None), ("watermarked", mark)):
        z_id, z_out = (predict_logits(toy_model, s, norm3, w, ExecutionConfig(device="cpu")) for s in (toy_test, sets[0]))
        for name, fn in (("energy", energy_score), ("msp", msp_score)):
            expected = ood_metrics(fn(z_id).numpy(), fn(z_out).numpy())
            assert all(abs(table[name][condition]["u"][m] - v) < 1e-6 for m, v in expected.items()), (name, condition)


def test_bench_scores_option(tmp_path):
    data = write_npz_dataset(tmp_path / "toy", n_train=64, n_test=30)
    out = tmp_path / "b"
    assert main(["bench", "--model", "small_cnn", "--random-weights", "--device", "cpu", "--no-progress", "--epochs", "1",
                 "--batch-size", "16", "--objective", "energy", "--id-data", str(data), "--ood-data",
                 "synthetic:uniform", "--scores", "energy", "knn", "mahalanobis", "--out", str(out)]) == 0
    run = json.loads((out / "results.json").read_text())["runs"][0]
    assert set(run["scores"]) == {"energy", "knn", "mahalanobis"}
    assert "| knn |" in (out / "report.md").read_text()


def test_bench_with_the_bounded_objectives_and_feature_detectors(tmp_path):
    data = write_npz_dataset(tmp_path / "toy", n_train=64, n_test=30)
    out = tmp_path / "b"
    assert main(["bench", "--model", "small_cnn", "--random-weights", "--device", "cpu", "--no-progress", "--epochs", "1",
                 "--batch-size", "16", "--objective", "hinge", "features", "--id-data", str(data), "--ood-data",
                 "synthetic:uniform", "--scores", "knn", "energy", "--out", str(out)]) == 0
    runs = json.loads((out / "results.json").read_text())["runs"]
    assert [r["objective"] for r in runs] == ["hinge", "features"] and all(r["score"] == "energy" for r in runs)
    assert "m_in" in runs[1]["hyperparameters"]
    board = (out / "leaderboard.md").read_text()
    assert "| knn | features (cifar10) |" in board and "| knn | none |" in board


def test_evaluate_scores_option(tmp_path):
    data = write_npz_dataset(tmp_path / "toy", n_train=64, n_test=30)
    Watermark(torch.randn(1, 3, 8, 8) * 0.1, {"objective": "msp"}).save(tmp_path / "w.safetensors")
    out = tmp_path / "e"
    assert main(["evaluate", "--model", "small_cnn", "--random-weights", "--device", "cpu", "--no-progress", "--watermark",
                 str(tmp_path / "w.safetensors"), "--id-data", str(data), "--ood-data", "synthetic:gaussian",
                 "--scores", "msp", "vim", "odin", "--out", str(out)]) == 0
    run = json.loads((out / "results.json").read_text())["runs"][0]
    assert list(run["scores"]) == ["msp", "vim", "odin"]
    assert run["scores"]["msp"]["watermarked"]["mean"] == run["watermarked"]["mean"]
