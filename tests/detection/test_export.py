"""Export of detectors on intermediate layers: the exported module runs the model with the same hooks that fit
the detector, so its scores are the detector's own (TorchScript and ONNX, any batch size, named taps)."""

import numpy as np
import pytest
import torch

from watermark_ood.core.errors import WatermarkOODError
from watermark_ood.data.images import ImageSet
from watermark_ood.data.preprocessing import Normalization
from watermark_ood.detection.detector import Detector
from watermark_ood.detection.export import export_onnx, export_torchscript
from watermark_ood.models.architectures import cifar_resnet
from watermark_ood.runtime.device import ExecutionConfig
from watermark_ood.watermark.file import Watermark

CPU = ExecutionConfig(device="cpu")
EXPORTED_LAYER_KINDS = [("multimahalanobis", None), ("multimahalanobis", ("layer1.0.bn1", "layer2")),
                        ("gram", None), ("combood", ("layer2", "layer3")), ("ash-map", None),
                        ("scale-map", ("layer2",))]


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    model, norm = cifar_resnet(8).eval(), Normalization((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    train = ImageSet((torch.rand(200, 3, 16, 16) * 255).to(torch.uint8), torch.arange(200) % 10, "train")
    test = (torch.rand(17, 3, 16, 16) * 255).to(torch.uint8)
    test[:6] = (torch.rand(6, 3, 16, 16) * 40).to(torch.uint8)  # darker images: a spread of scores
    return model, norm, train, test


@pytest.mark.parametrize("name,layers", EXPORTED_LAYER_KINDS)
def test_layer_detectors_export_their_own_scores(name, layers, resnet, tmp_path):
    import onnxruntime as ort

    model, norm, train, test = resnet
    mark = Watermark(torch.randn(1, 3, 16, 16) * 0.05)
    detector = Detector(model, norm, mark, name, execution=CPU, layers=layers).fit(train)
    detector.calibrate(ImageSet(train.images[:60], train.labels[:60]))
    expected = detector.scores(test)
    assert float(np.std(expected)) > 0
    tolerance = 1e-4 * float(np.ptp(expected)) + 1e-6
    traced = torch.jit.load(str(export_torchscript(detector, tmp_path / "d.pt")))
    session = ort.InferenceSession(str(export_onnx(detector, tmp_path / "d.onnx")))
    images = test.float() / 255
    for rows in (slice(0, 1), slice(0, 3), slice(0, 17)):
        with torch.no_grad():
            logits, scores, is_ood = traced(images[rows])
        onnx_logits, onnx_scores, _ = session.run(None, {"images": images[rows].numpy()})
        assert np.abs(scores.numpy() - expected[rows]).max() <= tolerance, (name, rows)
        assert np.abs(onnx_scores - expected[rows]).max() <= tolerance, (name, rows)
        with torch.no_grad():
            assert np.allclose(onnx_logits, model(mark.apply(norm(test[rows]))).numpy(), atol=1e-4)
        assert np.array_equal(is_ood.numpy(), expected[rows] < detector.threshold)


def test_rankfeat_refuses_export_in_one_line(resnet, tmp_path):
    model, norm, train, test = resnet
    detector = Detector(model, norm, None, "rankfeat", execution=CPU).fit(train)
    detector.calibrate(ImageSet(train.images[:60], train.labels[:60]))
    with pytest.raises(WatermarkOODError, match=r"rankfeat cannot be exported: .*SVD") as error:
        export_onnx(detector, tmp_path / "r.onnx")
    assert "\n" not in str(error.value) and not (tmp_path / "r.onnx").exists()


def test_cli_exports_a_layer_detector_on_named_layers_and_refuses_rankfeat(tmp_path, capsys):
    """calibrate --layers, export, and the ONNX module's scores are predict's; rankfeat: exit 2, one line, no file."""
    import json

    import onnxruntime as ort
    from conftest import make_images, write_npz_dataset

    from watermark_ood.cli import main

    data = write_npz_dataset(tmp_path / "toy", n_train=300, n_test=30, classes=10)  # no checkpoint: 10 classes
    common = ["--model", "small_cnn", "--random-weights", "--device", "cpu", "--no-progress"]
    det = tmp_path / "mm.safetensors"
    assert main(["calibrate", *common, "--score", "multimahalanobis", "--layers", "bn1", "bn2", "--id-data",
                 str(data), "--out", str(det)]) == 0
    assert json.loads(det.with_suffix(".json").read_text())["layers"] == ["bn1", "bn2"]
    assert main(["export", *common, "--detector", str(det), "--out", str(tmp_path / "exp")]) == 0
    pixels = make_images(12, seed=3).images
    np.savez(tmp_path / "inputs.npz", x=pixels.permute(0, 2, 3, 1).numpy())
    assert main(["predict", *common, "--detector", str(det), "--input", str(tmp_path / "inputs.npz"),
                 "--out", str(tmp_path / "p.json")]) == 0
    predicted = np.array([row["score"] for row in json.loads((tmp_path / "p.json").read_text())["rows"]])
    session = ort.InferenceSession(str(tmp_path / "exp" / "detector.onnx"))
    scores = session.run(None, {"images": (pixels.float() / 255).numpy()})[1]
    # an untrained model's BatchNorm channels are nearly collinear on 300 images, so its layer precision matrices
    # are ill-conditioned and float32 operation order shows at ~1e-4 (the real models': 3e-7, export_check.py)
    assert np.abs(scores - predicted).max() <= 1e-3 * np.abs(predicted).max()
    capsys.readouterr()
    assert main(["calibrate", *common, "--score", "rankfeat", "--id-data", str(data), "--out",
                 str(tmp_path / "r.safetensors")]) == 0
    assert main(["export", *common, "--detector", str(tmp_path / "r.safetensors"), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert "rankfeat cannot be exported" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").iterdir())
