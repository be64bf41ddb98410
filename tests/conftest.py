"""Shared fixtures: small generated data and models, never ../shared."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from watermark_ood.cli import main
from watermark_ood.data.images import ImageSet
from watermark_ood.data.preprocessing import Normalization
from watermark_ood.models.architectures import SmallCNN

# Two pytest-xdist workers share the two cores with one thread each; a single process takes both.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)


def pytest_runtest_setup(item):
    """Every test starts from the same random state, so a draw without its own generator is seeded too (a hook,
    not a fixture: Hypothesis' tests take no function-scoped fixtures)."""
    import random

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


def make_images(n: int, classes: int = 3, size: int = 8, channels: int = 3, seed: int = 0,
                name: str = "toy") -> ImageSet:
    """Class k is a bright square at a class-specific position on a noisy background."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 60, size=(n, channels, size, size)).astype(np.uint8)
    y = np.arange(n) % classes
    half = size // 2
    for i, k in enumerate(y):
        r, c = divmod(int(k) % 4, 2)
        x[i, :, r * half:(r + 1) * half, c * half:(c + 1) * half] += 150
    return ImageSet(torch.from_numpy(x), torch.from_numpy(y.astype(np.int64)), name)


@pytest.fixture
def toy_train() -> ImageSet:
    return make_images(64, seed=1, name="toy-train")


@pytest.fixture
def toy_test() -> ImageSet:
    return make_images(60, seed=2, name="toy-test")


@pytest.fixture
def toy_model() -> SmallCNN:
    torch.manual_seed(0)
    return SmallCNN(num_classes=3, in_channels=3, width=8).eval()


@pytest.fixture
def norm3() -> Normalization:
    return Normalization((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def write_npz_dataset(folder, n_train=64, n_test=30, classes=3, size=8, seed=0):
    """A train.npz / test.npz folder in the layout of ../shared/data (N x H x W x C)."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, n, s in (("train", n_train, seed), ("test", n_test, seed + 1)):
        data = make_images(n, classes, size, seed=s)
        np.savez_compressed(folder / f"{split}.npz", x=data.images.permute(0, 2, 3, 1).numpy(),
                            y=data.labels.numpy())
    return folder


CLI_TOY = ["--model", "small_cnn", "--random-weights", "--device", "cpu", "--no-progress"]


def calibrated_toy_detector(tmp_path):
    """`calibrate --score energy --tpr 0.9` through the CLI on a toy npz folder: (the folder, the detector file)."""
    data = write_npz_dataset(tmp_path / "toy", n_train=300, n_test=30)
    det = tmp_path / "d.safetensors"
    assert main(["calibrate", *CLI_TOY, "--id-data", str(data), "--score", "energy", "--tpr", "0.9",
                 "--out", str(det)]) == 0
    return data, det


def train_toy(classes: int, width: int, images: int, epochs: int) -> tuple[SmallCNN, Normalization, ImageSet]:
    """A SmallCNN with ``classes`` outputs trained with Adam on the 3 toy classes (seeded: the same every run)."""
    norm = Normalization((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    train = make_images(images, seed=1, name="toy-train")
    torch.manual_seed(0)
    model = SmallCNN(num_classes=classes, in_channels=3, width=width)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    x, y = norm(train.images), train.labels
    model.train()
    for _ in range(epochs):
        for index in torch.randperm(len(train), generator=torch.Generator().manual_seed(0)).split(32):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x[index]), y[index]).backward()
            optimizer.step()
    return model.eval(), norm, train


@pytest.fixture(scope="session")
def trained_toy():
    """A SmallCNN trained on the toy classes (every class predicted correctly somewhere, as SHE needs)."""
    return train_toy(classes=3, width=8, images=300, epochs=15)


@pytest.fixture(scope="session")
def wide_toy():
    """A classifier of the shapes that broke saved files: 160-d features (wider than 128, ViM's threshold) and 10
    outputs trained on 3 ID classes (more outputs than the data has classes), as many real models are; 600 images
    keep its 160-d covariances well enough conditioned."""
    return train_toy(classes=10, width=80, images=600, epochs=10)


# A model of one's own, as a user writes it in a file of their own (tests of file.py:callable models)
TINY_NET = """
import torch
from torch import nn


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


class Normalized(TinyNet):
    normalization = None  # a model may carry the statistics it was trained with (set by a test)


def build():
    return TinyNet()
"""


def assert_ships(detector, model, test: torch.Tensor, expected: np.ndarray, tmp_path, refusal: str,
                 exports: bool = False) -> None:
    """A kind ships: calibrated, saved and loaded, it gives ``expected`` on ``test`` exactly; a combination with it
    is refused (``refusal``: that one-line message); its ONNX export gives ``expected`` within 1e-4 of the scores'
    range on batches of 1 and of ``len(test)`` (``exports``), or is refused in one line."""
    import onnxruntime as ort

    from watermark_ood.core.errors import WatermarkOODError
    from watermark_ood.detection.detector import Detector
    from watermark_ood.detection.export import export_onnx
    from watermark_ood.detection.registry import check_name
    from watermark_ood.runtime.device import ExecutionConfig

    detector.calibrate(ImageSet(test, torch.zeros(len(test), dtype=torch.long)))
    loaded = Detector.load(detector.save(tmp_path / "shipped.safetensors"), model, ExecutionConfig(device="cpu"))
    assert np.array_equal(loaded.scores(test), expected)
    with pytest.raises(WatermarkOODError, match=refusal):
        check_name(f"{detector.score}+energy")
    if not exports:
        with pytest.raises(WatermarkOODError, match="cannot be exported"):
            export_onnx(loaded, tmp_path / "shipped.onnx")
        return
    session = ort.InferenceSession(str(export_onnx(loaded, tmp_path / "shipped.onnx")))
    images = (test.float() / 255).numpy()
    scores = np.concatenate([session.run(None, {"images": images[:1]})[1], session.run(None, {"images": images})[1]])
    reference = np.concatenate([expected[:1], expected])
    assert np.abs(scores - reference).max() <= 1e-4 * (np.ptp(expected) + 1e-6), detector.score
