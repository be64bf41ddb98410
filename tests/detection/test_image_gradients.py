"""Per-image gradient norms from one batched backward pass equal pytorch-ood's per-image classes (GradUncertainty,
GradNorm with its defaults) on the architectures users bring, and refuse (so the library scores) what they cannot
rebuild."""

import pytest
import torch
import torchvision
from pytorch_ood.detector import GradNorm, GradUncertainty
from torch import nn

from watermark_ood.detection import image_gradients
from watermark_ood.detection.image_gradients import GRADNORM_ALL, UNCERTAINTY, Unsupported, per_image_norms
from watermark_ood.models.architectures import SmallCNN
from watermark_ood.models.architectures.cifar_resnet import cifar_resnet
from watermark_ood.models.architectures.wide_resnet import WideResNet


class Tokens(nn.Module):
    """A linear layer on a sequence (B x T x D, the per-image gradient sums over positions), BatchNorm1d on vectors,
    a grouped and a dilated convolution with bias."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=2, dilation=2, groups=1)
        self.grouped = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=4)
        self.mix = nn.Linear(8, 12)
        self.norm = nn.BatchNorm1d(12)
        self.head = nn.Linear(12, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = torch.relu(self.grouped(torch.relu(self.conv(x)))).flatten(2).transpose(1, 2)  # B x T x 8
        return self.head(torch.relu(self.norm(self.mix(tokens).mean(dim=1))))


def _trained_bn(model: nn.Module) -> nn.Module:
    """Non-trivial running statistics and affine BatchNorm values (fresh ones are 0/1 and would hide a wrong xhat)."""
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.running_mean.uniform_(-0.5, 0.5, generator=generator)
            module.running_var.uniform_(0.5, 2.0, generator=generator)
            module.weight.data.uniform_(0.5, 1.5, generator=generator)
            module.bias.data.uniform_(-0.2, 0.2, generator=generator)
    return model.eval()


MODELS = {
    "torchvision-resnet18": lambda: torchvision.models.resnet18(num_classes=10),  # in-place ReLU and +=
    "cifar-resnet20": lambda: cifar_resnet(20),  # no conv bias, padded shortcut
    "wide-resnet": lambda: WideResNet(depth=10, num_classes=10, widen_factor=2),  # pre-activation: BatchNorm reads the block input
    "mobilenet-v3": lambda: torchvision.models.mobilenet_v3_small(num_classes=10),  # depthwise, SE on 1x1 maps
    "small-cnn": lambda: SmallCNN(num_classes=3, in_channels=3, width=8),
    "tokens": Tokens,
}


@pytest.mark.parametrize("name", MODELS)
def test_per_image_norms_equal_the_library(name):
    torch.manual_seed(0)
    model = _trained_bn(MODELS[name]())
    x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    for library, norm in ((GradUncertainty, UNCERTAINTY), (GradNorm, GRADNORM_ALL)):
        expected = -library(model).predict(x)
        ours = per_image_norms(model, x, norm)
        # float32 sums of up to 11M terms in another order: 1e-5 relative is 100x their measured disagreement
        # (3e-7 on the ResNet-18); a layer left out or counted twice moves the norms by > 1e-3
        assert torch.allclose(ours, expected, rtol=1e-5, atol=0), (name, library.__name__)
        assert float(ours.std()) > 0


def test_the_ghost_norm_and_the_formed_gradient_agree(monkeypatch):
    """A convolution's squared norm is formed (dW_i) or taken from the patches' Gram matrices, whichever is cheaper;
    both give the same norms (forced each way)."""
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    for model in (_trained_bn(cifar_resnet(20)), _trained_bn(Tokens())):  # no conv bias; bias, groups, dilation
        reference = -GradUncertainty(model).predict(x)
        for ghost in (True, False):
            monkeypatch.setattr(image_gradients, "_ghost_is_cheaper", lambda positions, rows, cols, ghost=ghost: ghost)
            assert torch.allclose(per_image_norms(model, x, UNCERTAINTY), reference, rtol=1e-5, atol=0)


def test_what_cannot_be_rebuilt_is_refused_for_the_library_to_score():
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(Unsupported, match="LayerNorm"):
        per_image_norms(nn.Sequential(nn.Flatten(), nn.LayerNorm(192), nn.Linear(192, 3)), x, UNCERTAINTY)
    with pytest.raises(Unsupported, match="BatchNorm2d"):  # training mode: rows interact through batch statistics
        per_image_norms(nn.Sequential(nn.BatchNorm2d(3).train(), nn.Flatten(), nn.Linear(192, 3)), x, UNCERTAINTY)
    shared = nn.Linear(192, 192)
    with pytest.raises(Unsupported, match="runs twice"):
        per_image_norms(nn.Sequential(nn.Flatten(), shared, nn.ReLU(), shared, nn.Linear(192, 3)), x, UNCERTAINTY)

    class ChangesInput(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(192, 3)

        def forward(self, x):
            flat = x.flatten(1) * 1.0
            out = self.fc(flat)
            flat.mul_(2.0)  # what the layer read is no longer there
            return out + flat.sum(dim=1, keepdim=True)

    with pytest.raises(Unsupported, match="changed in place"):
        per_image_norms(ChangesInput(), x, GRADNORM_ALL)
