"""Mahalanobis++ equals the authors' computation (mueller-mp/maha-norm: L2-normalised features, class means, the
empirical covariance of the class-centred features, the largest negative distance) up to pytorch-ood's scale."""

import numpy as np
import sklearn.covariance
import torch

from watermark_ood.detection.posthoc import PosthocScore
from watermark_ood.detection.registry import AUTO_CANDIDATES, DETECTOR_KINDS


def _features(n: int = 300, dim: int = 16, classes: int = 3, seed: int = 0):
    """Class clusters whose norms differ by class and within it (what the normalisation is for)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    centres = torch.randn(classes, dim, generator=g) * 3
    scale = torch.rand(n, 1, generator=g) * 4 + 0.5 * (1 + labels[:, None])
    return (centres[labels] + torch.randn(n, dim, generator=g)) * scale, labels


def _authors(fit: torch.Tensor, labels: torch.Tensor, test: torch.Tensor) -> np.ndarray:
    fit = fit / fit.norm(dim=-1, keepdim=True)
    means = torch.stack([fit[labels == c].mean(0) for c in range(int(labels.max()) + 1)])
    centred = torch.cat([fit[labels == c] - means[c] for c in range(len(means))])
    precision = torch.from_numpy(sklearn.covariance.EmpiricalCovariance(assume_centered=False).fit(
        centred.numpy().astype(np.float64)).precision_)
    test = (test / test.norm(dim=-1, keepdim=True)).double()
    diffs = test[:, None, :] - means.double()[None]
    return (-(diffs @ precision * diffs).sum(-1)).max(dim=1).values.numpy()


def test_mahalanobis_pp_equals_the_authors_formula():
    fit, labels = _features()
    test, _ = _features(60, seed=1)
    score = PosthocScore("mahalanobis-pp").fit(None, fit, labels)
    ours = score(None, test).double().numpy()  # -(1/2) d / N in pytorch-ood's scale (a centred sum, not a mean)
    expected = _authors(fit, labels, test)
    # 1e-4: float32 features and a 1e-6 ridge against float64; a wrong mean, covariance or norm moves them by > 1e-2
    assert np.allclose(2 * len(fit) * ours, expected, rtol=1e-4)
    plain = PosthocScore("mahalanobis").fit(None, fit, labels)(None, test).numpy()
    assert not np.allclose(np.argsort(plain), np.argsort(ours))  # the normalisation changes the ranking here
    traced = -score.outlier(None, test, traceable=True)  # export's torch formula: the same scores
    assert torch.allclose(traced.float(), torch.as_tensor(ours).float(), rtol=1e-5)


def test_mahalanobis_pp_is_registered_outside_the_default_pool():
    kind = DETECTOR_KINDS["mahalanobis-pp"]
    assert kind.fitted and kind.exports and kind.reads == "features"
    assert "mahalanobis-pp" not in AUTO_CANDIDATES
