import torch
import torch.nn.functional as F

from watermark_ood.watermark.config import FitConfig
from watermark_ood.watermark.objectives import energy_objective, msp_objective, objective_loss


def test_msp_outlier_term_is_cross_entropy_to_uniform():
    torch.manual_seed(0)
    z_in, y, z_out = torch.randn(5, 4), torch.tensor([0, 1, 2, 3, 0]), torch.randn(6, 4)
    uniform = torch.full((6, 4), 0.25)
    ce_uniform = -(uniform * F.log_softmax(z_out, 1)).sum(1).mean()
    expected = F.cross_entropy(z_in, y) + 3.5 * ce_uniform
    assert torch.allclose(msp_objective(z_in, y, z_out, 3.5), expected, atol=1e-6)


def test_msp_outlier_term_is_smallest_for_flat_logits():
    z_in, y = torch.zeros(2, 3), torch.tensor([0, 1])
    ce = F.cross_entropy(z_in, y)
    flat = msp_objective(z_in, y, torch.full((4, 3), 7.0), 1.0) - ce
    peaked = msp_objective(z_in, y, torch.tensor([[7.0, 0.0, 0.0]] * 4), 1.0) - ce
    assert torch.allclose(flat, torch.log(torch.tensor(3.0)))
    assert peaked > flat


def test_energy_objective_matches_formula():
    torch.manual_seed(1)
    z_in, y, z_out = torch.randn(5, 3), torch.tensor([0, 1, 2, 0, 1]), torch.randn(7, 3)
    expected = F.cross_entropy(z_in, y) + 0.1 * (torch.exp(0.7 * z_out).mean() + torch.exp(-0.2 * z_in).mean())
    assert torch.allclose(energy_objective(z_in, y, z_out, 0.1, 0.2, 0.7), expected)
    cfg = FitConfig(objective="energy", beta=0.1, t_in=0.2, t_out=0.7)
    assert torch.allclose(objective_loss(cfg, z_in.bfloat16(), y, z_out), expected, atol=0.05)


def test_hinge_objective_is_liu_et_al_squared_hinge_in_logsumexp_units():
    from watermark_ood.watermark.objectives import hinge_objective

    torch.manual_seed(2)
    z_in, y, z_out = torch.randn(5, 3) * 4, torch.tensor([0, 1, 2, 0, 1]), torch.randn(7, 3) * 4
    # Liu et al. 2020 on the energy E = -logsumexp: (E_in - m_in)_+^2 + (m_out - E_out)_+^2, E-margins -5 / -1.
    e_in, e_out = -torch.logsumexp(z_in, 1), -torch.logsumexp(z_out, 1)
    liu = F.relu(e_in - (-5.0)).pow(2).mean() + F.relu(-1.0 - e_out).pow(2).mean()
    expected = F.cross_entropy(z_in, y) + 0.1 * liu
    assert torch.allclose(hinge_objective(z_in, y, z_out, 0.1, m_in=5.0, m_out=1.0), expected)


def test_hinge_objective_is_flat_once_margins_hold():
    from watermark_ood.watermark.objectives import hinge_objective

    y = torch.tensor([0, 1])
    confident = torch.tensor([[20.0, 0.0, 0.0], [0.0, 20.0, 0.0]])
    quiet = torch.full((4, 3), -10.0)
    assert torch.allclose(hinge_objective(confident, y, quiet, 1.0, 10.0, 2.0), F.cross_entropy(confident, y))
    loud = torch.full((4, 3), 10.0)
    assert hinge_objective(confident, y, loud, 1.0, 10.0, 2.0) > F.cross_entropy(confident, y) + 60


def test_hinge_objective_without_margins_is_a_user_error():
    import pytest

    from watermark_ood.core.errors import WatermarkOODError

    with pytest.raises(WatermarkOODError, match="margins"):
        objective_loss(FitConfig(objective="hinge"), torch.zeros(2, 3), torch.tensor([0, 1]), torch.zeros(2, 3))


def test_features_term_is_a_squared_hinge_on_distance_to_the_nearest_class_mean():
    from watermark_ood.watermark.objectives import class_mean_distance, features_term

    anchors = torch.eye(3)[:2]  # two unit class means in 3-d
    near, far = torch.tensor([[2.0, 0.0, 0.0]]), torch.tensor([[0.0, 0.0, 5.0]])
    assert torch.allclose(class_mean_distance(near, anchors), torch.tensor([0.0]))
    assert torch.allclose(class_mean_distance(far, anchors), torch.tensor([1.0]))
    assert features_term(near, far, anchors, m_in=0.1, m_out=0.5) == 0  # both margins hold
    # swapped: ID far from its class (1 - 0.1)^2, outlier at a class mean (0.5 - 0)^2
    assert torch.allclose(features_term(far, near, anchors, 0.1, 0.5), torch.tensor(0.81 + 0.25))


def test_anchored_term_forbids_any_rise_and_equals_the_hinge_above_the_outlier_margin():
    from watermark_ood.watermark.objectives import anchored_term, hinge_term

    z_in = torch.tensor([[4.0, 0.0], [5.0, 1.0]])
    quiet = torch.tensor([[0.0, 0.0], [0.5, 0.0]])  # logsumexp ~0.69 and ~0.97, below m_out = 2
    at_zero = torch.logsumexp(quiet, dim=1)
    # Unchanged outliers cost nothing; the hinge lets them rise to m_out for free, the anchored term does not.
    assert float(anchored_term(z_in, quiet, at_zero, m_in=3.0, m_out=2.0)) == 0.0
    risen = quiet + 1.0
    assert float(hinge_term(z_in, risen, 3.0, 2.0)) == 0.0
    rise = torch.logsumexp(risen, dim=1) - at_zero
    assert torch.isclose(anchored_term(z_in, risen, at_zero, 3.0, 2.0), rise.square().mean())
    # Outliers that start above m_out: exactly Liu et al.'s hinge.
    loud = torch.tensor([[6.0, 0.0], [7.0, 2.0]])
    assert torch.isclose(anchored_term(z_in, loud, torch.logsumexp(loud, 1) - 0.5, 3.0, 2.0),
                         hinge_term(z_in, loud, 3.0, 2.0))


def test_anchored_objective_without_scores_at_zero_is_a_user_error():
    import pytest

    from watermark_ood.core.errors import WatermarkOODError

    cfg = FitConfig(objective="anchored", m_in=3.0, m_out=1.0)
    with pytest.raises(WatermarkOODError, match="w = 0"):
        objective_loss(cfg, torch.zeros(2, 3), torch.tensor([0, 1]), torch.zeros(2, 3))


def test_objectives_doctests():
    import doctest

    from watermark_ood.watermark import objectives

    result = doctest.testmod(objectives)
    assert result.attempted > 0 and result.failed == 0
