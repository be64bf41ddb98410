import os
import pickle

import pytest
import torch
from conftest import TINY_NET

from watermark_ood.core.errors import WatermarkOODError
from watermark_ood.data.preprocessing import CIFAR, IMAGENET
from watermark_ood.models.registry import REGISTRY, build_model, load_model, read_state_dict


def save_like_shared(model, path, prefix="module.", wrap=True):
    """The layout of ../shared/models: {'state_dict': {'module.' + key: tensor}, 'best_prec1': ...}."""
    state = {prefix + k: v.clone() for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save({"state_dict": state, "best_prec1": 91.5} if wrap else state, path)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_registry_model_loads_a_generated_state_dict(name, tmp_path):
    channels = 1 if name == "small_cnn" else 3
    source, _ = build_model(name, num_classes=7, in_channels=channels)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for key, tensor in source.state_dict().items():
            if tensor.is_floating_point():  # random weights and statistics, kept small enough not to overflow
                tensor.copy_(torch.rand(tensor.shape, generator=generator) * 0.2 + (0.9 if "running_var" in key else -0.1))
    save_like_shared(source, tmp_path / "ckpt.th")
    loaded = load_model(name, tmp_path / "ckpt.th", in_channels=channels)
    x = torch.randn(2, channels, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded.module(x), source.eval()(x), atol=1e-5)
    assert loaded.module(x).shape == (2, 7)  # class count inferred from the checkpoint's head
    assert not loaded.module.training


def test_normalizations_follow_the_checkpoints():
    assert load_model("wrn40_2").normalization == CIFAR
    assert load_model("resnet20").normalization == IMAGENET
    custom = load_model("resnet20", mean=(0.5, 0.5, 0.5), std=(0.2, 0.2, 0.2)).normalization
    assert custom.mean == (0.5, 0.5, 0.5)
    with pytest.raises(WatermarkOODError, match="both"):
        load_model("resnet20", mean=(0.5, 0.5, 0.5))


def test_parameter_counts_match_the_published_ones():
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert round(count(build_model("resnet20")[0]) / 1e6, 2) == 0.27
    assert round(count(build_model("resnet56")[0]) / 1e6, 2) == 0.85
    assert round(count(build_model("wrn40_2")[0]) / 1e6, 1) == 2.2
    assert round(count(build_model("densenet_bc100")[0]) / 1e6, 2) == 0.77


def test_densenet_pools_the_top_left_7x7_window_of_its_8x8_map_as_the_release_did():
    model = build_model("densenet_bc100")[0].eval()
    x = torch.randn(2, 3, 32, 32)
    captured = {}
    model.bn1.register_forward_hook(lambda module, inputs, output: captured.setdefault("map", output))
    with torch.no_grad():
        features = model.features(x)
    window = torch.relu(captured["map"])[:, :, :7, :7].mean((2, 3))
    assert captured["map"].shape[-2:] == (8, 8) and torch.allclose(features, window, atol=1e-6)
    assert not torch.allclose(features, torch.relu(captured["map"]).mean((2, 3)), atol=1e-4)


def test_mismatched_checkpoint_names_the_keys(tmp_path):
    source, _ = build_model("resnet20")
    save_like_shared(source, tmp_path / "r20.th")
    with pytest.raises(WatermarkOODError) as info:
        load_model("resnet32", tmp_path / "r20.th")
    assert "missing keys" in str(info.value) and "layer1.3" in str(info.value)
    with pytest.raises(WatermarkOODError, match="unexpected keys"):
        load_model("wrn40_2", tmp_path / "r20.th")


def test_wrong_class_count_is_refused(tmp_path):
    source, _ = build_model("resnet20", num_classes=10)
    save_like_shared(source, tmp_path / "r20.th")
    with pytest.raises(WatermarkOODError, match="100"):
        load_model("resnet20", tmp_path / "r20.th", fallback_classes=100)


class Payload:
    def __reduce__(self):
        return (os.system, ("touch PWNED_MARKER",))


def test_pickled_code_in_a_checkpoint_is_refused_and_not_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open("evil.pt", "wb") as handle:
        pickle.dump({"state_dict": Payload()}, handle)
    torch.save({"state_dict": {"w": torch.zeros(1)}, "x": Payload()}, "evil2.pt")
    for name in ("evil.pt", "evil2.pt"):
        with pytest.raises(WatermarkOODError, match="evil"):
            read_state_dict(name)
    assert not (tmp_path / "PWNED_MARKER").exists()


def test_unreadable_and_missing_checkpoints(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(WatermarkOODError, match="junk.pt"):
        read_state_dict(tmp_path / "junk.pt")
    with pytest.raises(WatermarkOODError, match="not found"):
        read_state_dict(tmp_path / "none.pt")


def test_safetensors_checkpoint(tmp_path):
    from safetensors.torch import save_file

    source, _ = build_model("resnet20")
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(tmp_path / "r20.safetensors"))
    loaded = load_model("resnet20", tmp_path / "r20.safetensors")
    assert torch.equal(loaded.module.linear.weight, source.linear.weight)


def test_torchvision_and_callable_models(tmp_path):
    tv = load_model("torchvision:resnet18", fallback_classes=4)
    assert tv.normalization == IMAGENET and tv.module.fc.out_features == 4
    source, _ = build_model("torchvision:resnet18", num_classes=4)
    torch.save(source.state_dict(), tmp_path / "tv.pt")
    assert torch.equal(load_model("torchvision:resnet18", tmp_path / "tv.pt").module.fc.weight, source.fc.weight)
    custom = load_model("watermark_ood.architectures:SmallCNN", mean=(0.5,) * 3, std=(0.25,) * 3)
    assert custom.module.__class__.__name__ == "SmallCNN" and custom.normalization.std == (0.25,) * 3
    with pytest.raises(WatermarkOODError, match=r"give the input normalization it was trained with, --mean"):
        load_model("watermark_ood.architectures:SmallCNN")  # no silent CIFAR statistics for a user's model
    with pytest.raises(WatermarkOODError):
        load_model("torchvision:not_a_model")
    with pytest.raises(WatermarkOODError):
        load_model("no_such_module:thing")
    with pytest.raises(WatermarkOODError, match="known"):
        load_model("resnet21")


def test_a_model_of_ones_own_by_file_path_or_by_module_from_the_working_directory(tmp_path, monkeypatch):
    """``file.py:callable`` needs no PYTHONPATH; ``module:callable`` is found in the working directory too."""
    (tmp_path / "mynet.py").write_text(TINY_NET)
    by_path = load_model(f"{tmp_path / 'mynet.py'}:TinyNet", mean=(0.5,) * 3, std=(0.2,) * 3)
    assert type(by_path.module).__name__ == "TinyNet" and by_path.module.fc.out_features == 3
    assert type(load_model(f"{tmp_path / 'mynet.py'}:build", mean=(0.5,) * 3, std=(0.2,) * 3).module).__name__ == \
        "TinyNet"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.path", [p for p in __import__("sys").path if p not in ("", str(tmp_path))])
    assert type(load_model("mynet:TinyNet", mean=(0.5,) * 3, std=(0.2,) * 3).module).__name__ == "TinyNet"
    with pytest.raises(WatermarkOODError, match=r"no such Python file"):
        load_model(f"{tmp_path / 'other.py'}:TinyNet")
    with pytest.raises(WatermarkOODError, match=r"cannot import model factory .*called with no arguments"):
        load_model(f"{tmp_path / 'mynet.py'}:Missing")


def test_a_model_with_its_own_normalization_needs_no_mean_and_std(tmp_path):
    from watermark_ood.data.preprocessing import Normalization

    (tmp_path / "normed.py").write_text(TINY_NET + "\nNormalized.normalization = __import__('watermark_ood')"
                                                   ".Normalization((0.1, 0.2, 0.3), (0.4, 0.5, 0.6))\n")
    loaded = load_model(f"{tmp_path / 'normed.py'}:Normalized")
    assert loaded.normalization == Normalization((0.1, 0.2, 0.3), (0.4, 0.5, 0.6))
