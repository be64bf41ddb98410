import pytest

from watermark_ood.core.errors import WatermarkOODError
from watermark_ood.watermark.config import PRESETS, FitConfig, get_preset


def test_presets_are_the_papers():
    expected = {
        "cifar10-msp": (0.4, 1.0, 3.5, 0.0, 0.0),
        "cifar100-msp": (1.0, 0.2, 2.5, 0.0, 0.0),
        "cifar10-energy": (1.5, 0.05, 0.1, 0.2, 0.7),
        "cifar100-energy": (0.4, 0.1, 0.1, 0.9, 0.1),
    }
    ours = {"cifar10-hinge", "cifar100-hinge", "cifar10-anchored", "cifar100-anchored", "cifar10-features",
            "cifar100-features"}  # not the paper's
    assert set(PRESETS) - ours == set(expected)
    for name, (sigma, rho, beta, t_in, t_out) in expected.items():
        cfg = PRESETS[name].config()
        assert (cfg.sigma, cfg.rho, cfg.beta, cfg.t_in, cfg.t_out) == (sigma, rho, beta, t_in, t_out)
        assert (cfg.alpha, cfg.epochs, cfg.batch_size, cfg.hflip) == (0.01, 50, 128, True)


def test_alpha_divided_by_ten_at_epoch_25_of_50():
    cfg = FitConfig()
    assert cfg.alpha_at(0) == cfg.alpha_at(24) == 0.01
    assert cfg.alpha_at(25) == pytest.approx(0.001) and cfg.alpha_at(49) == pytest.approx(0.001)


def test_lookup_by_dataset_and_objective_and_overrides():
    cfg = get_preset("cifar10", "energy").config(epochs=3, sigma=2.0)
    assert cfg.objective == "energy" and cfg.epochs == 3 and cfg.sigma == 2.0 and cfg.rho == 0.05


@pytest.mark.parametrize("bad", [dict(objective="odin"), dict(epochs=0), dict(alpha=float("nan")),
                                 dict(sigma=-1.0), dict(linf_budget=0.0), dict(train_limit=0)])
def test_invalid_settings_are_user_errors(bad):
    with pytest.raises(WatermarkOODError):
        FitConfig(**bad)


def test_unknown_preset_names_the_known_ones():
    with pytest.raises(WatermarkOODError, match="cifar10-msp") as info:
        get_preset("imagenet", "msp")
    for name in ("cifar10,", "cifar100,", "auto"):  # the short names the README and --help present
        assert name in str(info.value)
    with pytest.raises(WatermarkOODError, match="objective"):
        get_preset("cifar10-msp", "energy")


def test_hyperparameters_round_trip():
    cfg = get_preset("cifar100-energy").config(seed=3, linf_budget=0.5)
    hp = cfg.hyperparameters()
    assert hp["t_in"] == 0.9 and hp["linf_budget"] == 0.5
    assert FitConfig.from_dict(hp) == cfg
    assert "t_in" not in get_preset("cifar10-msp").config().hyperparameters()


def test_l2_budget_projects_onto_the_ball_and_leaves_points_inside_alone():
    import torch

    cfg = FitConfig(l2_budget=2.0)
    outside = torch.full((1, 3, 4, 4), 1.0)  # norm sqrt(48) ~ 6.9
    projected = cfg.project(outside)
    assert torch.isclose(projected.norm(), torch.tensor(2.0))
    assert torch.allclose(projected / projected.norm(), outside / outside.norm())  # same direction
    inside = torch.full((1, 3, 4, 4), 0.1)
    assert torch.equal(cfg.project(inside), inside)
    both = FitConfig(l2_budget=2.0, linf_budget=0.2).project(outside)
    assert both.abs().max() <= 0.2 + 1e-7 and both.norm() <= 2.0 + 1e-6
