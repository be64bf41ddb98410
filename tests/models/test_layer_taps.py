"""Taps on named layers: defaults of the registered architectures, any module by name, one-line refusals."""

import pytest
import torch
from torch import nn

from watermark_ood.core.errors import WatermarkOODError
from watermark_ood.models.architectures import cifar_resnet
from watermark_ood.models.layers import LayerTaps, check_layers, default_layers, layer_widths
from watermark_ood.models.registry import build_model


@pytest.mark.parametrize("name, layers, widths", [
    ("resnet20", ("layer1", "layer2", "layer3"), (16, 32, 64)),
    ("wrn16_4", ("block1", "block2", "block3"), (64, 128, 256)),
])
def test_default_layers_are_each_stage_output(name, layers, widths):
    model = build_model(name, 10)[0].eval()
    assert default_layers(model) == layers
    assert layer_widths(model, layers, (3, 32, 32)) == widths


def test_taps_equal_the_spatial_means_of_the_layers_outputs():
    torch.manual_seed(0)
    model = cifar_resnet(8).eval()
    seen = {}
    handles = [getattr(model, n).register_forward_hook(lambda m, i, o, n=n: seen.__setitem__(n, o))
               for n in ("layer1", "layer3")]
    taps = LayerTaps(model, ["layer3", "layer1"])  # in the order named, not the model's order
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        model(x)
        model(x[:2])
    out = taps.close()
    for handle in handles:
        handle.remove()
    assert taps.widths == (64, 16) and out.shape == (6, 80)
    assert torch.allclose(out[4:, :64], seen["layer3"].mean(dim=(2, 3)))
    assert torch.allclose(out[4:, 64:], seen["layer1"].mean(dim=(2, 3)))
    assert not model._forward_hooks and not model.layer1._forward_hooks  # close() removes every hook


class Branch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.unused = nn.Conv2d(3, 4, 3), nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def test_any_module_by_name_and_refusals_in_one_line():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
    model(torch.zeros(1, 3, 8, 8))
    assert layer_widths(model, ["0", "2"], (3, 8, 8)) == (4, 144)  # a vector layer is kept as it is
    with pytest.raises(WatermarkOODError, match="Sequential has no default layers to tap; name them with --layers"):
        default_layers(model)
    with pytest.raises(WatermarkOODError, match="has no layer '9'; it has e.g. 0, 1, 2, 3"):
        check_layers(model, ["9"])
    with pytest.raises(WatermarkOODError, match="layers named twice: 0"):
        check_layers(model, ["0", "0"])
    with pytest.raises(WatermarkOODError, match="no layers named"):
        check_layers(model, [])
    branch = Branch()
    with pytest.raises(WatermarkOODError, match="'unused' was not run by the model's forward pass"):
        layer_widths(branch, ["unused"], (3, 8, 8))
