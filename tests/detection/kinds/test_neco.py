"""NECO equals the authors' computation (their release's ``neco``: sklearn's StandardScaler fitted on the ID
training features, a full PCA of the standardised features, the norm of the d first principal coordinates divided
by the norm of the standardised vector), saves and loads as tensors + JSON, and exports."""

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler

from watermark_ood.detection.posthoc import PosthocScore, check_state
from watermark_ood.detection.registry import AUTO_CANDIDATES, DETECTOR_KINDS


def _features(n: int, dim: int = 12, classes: int = 4, seed: int = 0):
    """Class clusters plus a dead (constant) unit, as ReLU features have: the scaler must keep it finite."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    centres = torch.randn(classes, dim, generator=g) * 3
    z = (centres[labels] + torch.randn(n, dim, generator=g)).relu()
    z[:, 0] = 0.0
    return z, labels


def _authors(fit: torch.Tensor, test: torch.Tensor, d: int) -> np.ndarray:
    scaler = StandardScaler()
    train = scaler.fit_transform(fit.double().numpy())
    pca = PCA(train.shape[1]).fit(train)
    scaled = scaler.transform(test.double().numpy())
    return np.linalg.norm(pca.transform(scaled)[:, :d], axis=1) / np.linalg.norm(scaled, axis=1)


def test_neco_equals_the_authors_formula_with_d_the_simplex_dimension():
    fit, labels = _features(400)
    test, _ = _features(80, seed=1)
    test = torch.cat([test, torch.rand(20, 12, generator=torch.Generator().manual_seed(2)) * 5])
    head = torch.nn.Linear(12, 4)
    score = PosthocScore("neco", head).fit(None, fit, labels)
    assert score.impl.d == 3  # K - 1
    ours = score(None, test).double().numpy()
    assert np.allclose(ours, _authors(fit, test, 3), rtol=1e-5, atol=1e-6)  # float32 against float64
    assert not np.allclose(ours, _authors(fit, test, 2), rtol=1e-3)  # another d is another score
    assert np.isfinite(ours).all() and ((ours > 0) & (ours <= 1 + 1e-6)).all()


def test_neco_d_is_bounded_by_the_feature_width():
    fit, labels = _features(100, dim=3, classes=2)
    assert PosthocScore("neco", torch.nn.Linear(3, 10)).fit(None, fit, labels).impl.d == 2  # D - 1, not K - 1


def test_neco_state_round_trips_and_is_checked():
    fit, labels = _features(200)
    test, _ = _features(30, seed=3)
    head = torch.nn.Linear(12, 4)
    score = PosthocScore("neco", head).fit(None, fit, labels)
    tensors, values = score.state()
    assert set(tensors) == {"mean", "scale", "components"} and values["d"] == 3
    check_state("neco", values, tensors, head)
    loaded = PosthocScore.from_state("neco", head, tensors, values)
    assert torch.equal(loaded(None, test), score(None, test))
    with pytest.raises(Exception, match="components"):
        check_state("neco", values, {**tensors, "components": tensors["components"][:2]}, head)


def test_neco_exports_and_stays_out_of_the_default_pool():
    fit, labels = _features(200)
    score = PosthocScore("neco", torch.nn.Linear(12, 4)).fit(None, fit, labels)
    test, _ = _features(10, seed=4)
    traced = torch.jit.trace(lambda z: score.outlier(None, z, traceable=True), (test,))
    assert torch.allclose(-traced(test), score(None, test))
    kind = DETECTOR_KINDS["neco"]
    assert kind.fitted and kind.exports and kind.reads == "features" and "neco" not in AUTO_CANDIDATES
