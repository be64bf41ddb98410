"""CombOOD against a direct computation of the authors' formula (scikit-learn scaler and power transform, scipy's
Mahalanobis distance, scikit-learn's nearest neighbours), its saved state, and its refusals."""

import numpy as np
import pytest
import torch
from conftest import assert_ships

from watermark_ood.core.errors import WatermarkOODError
from watermark_ood.data.images import ImageSet
from watermark_ood.data.preprocessing import Normalization
from watermark_ood.detection.combood import yeo_johnson
from watermark_ood.detection.detector import Detector
from watermark_ood.models.architectures import cifar_resnet
from watermark_ood.runtime.device import ExecutionConfig

CPU = ExecutionConfig(device="cpu")


def _authors_score(model, norm, train, test, k):
    """-sqrt(D) log r_k^2 - d_M^2 as the authors' test_ood.square_log_probability computes it."""
    from scipy.spatial.distance import mahalanobis
    from sklearn.neighbors import NearestNeighbors
    from sklearn.preprocessing import PowerTransformer, StandardScaler

    def parts(images):
        maps = []
        hooks = [layer.register_forward_hook(lambda m, i, o: maps.append(o.detach()))
                 for layer in (model.layer1, model.layer2, model.layer3)]
        with torch.no_grad():
            logits = model(norm(images))
        for hook in hooks:
            hook.remove()
        columns = [logits.max(1).values, -logits.min(1).values]
        for out in maps:
            columns += [out.flatten(1).max(1).values, -out.flatten(1).min(1).values]
        pooled = torch.nn.functional.normalize(maps[-1].mean(dim=(2, 3)), dim=1)
        return torch.stack(columns, 1).double().numpy(), pooled.double().numpy()

    x_train, f_train = parts(train)
    x_test, f_test = parts(test)
    keep = x_train.std(0) > 1e-6 * (1 + np.abs(x_train).mean(0))  # constant extremes (ReLU minima) left out
    scaler = StandardScaler().fit(x_train[:, keep])
    power = PowerTransformer().fit(scaler.transform(x_train[:, keep]))
    moved = power.transform(scaler.transform(x_train[:, keep]))
    inverse = np.linalg.inv(np.cov(moved, rowvar=False) + np.identity(keep.sum()))
    t = power.transform(scaler.transform(x_test[:, keep]))
    d_m = np.array([mahalanobis(row, np.zeros(len(row)), inverse) for row in t])
    r_k = NearestNeighbors(n_neighbors=k).fit(f_train).kneighbors(f_test)[0][:, -1]
    return -np.sqrt(f_train.shape[1]) * np.log(r_k ** 2) - d_m ** 2, keep


def test_combood_equals_the_authors_formula_and_round_trips(tmp_path):
    torch.manual_seed(0)
    model, norm = cifar_resnet(8).eval(), Normalization((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    train = ImageSet((torch.rand(300, 3, 16, 16) * 255).to(torch.uint8), torch.arange(300) % 10, "train")
    test = (torch.rand(40, 3, 16, 16) * 255).to(torch.uint8)
    test[:10] = (torch.rand(10, 3, 16, 16) * 40).to(torch.uint8)  # darker images: a spread of scores
    detector = Detector(model, norm, None, "combood", execution=CPU).fit(train)
    assert detector.layers == ("layer1", "layer2", "layer3") and detector.scorer.widths == (18, 34, 66)
    expected, keep = _authors_score(model, norm, train.images, test, k=50)
    assert 0 < keep.sum() < len(keep)  # the stage outputs' minima (ReLU, 0) are constant and left out
    ours = detector.scores(test)
    assert np.allclose(ours, expected, rtol=1e-4, atol=1e-3) and float(np.std(ours)) > 1.0
    assert_ships(detector, model, test, ours, tmp_path, "combood reads intermediate layers and cannot be part",
                 exports=True)


def test_yeo_johnson_equals_scikit_learn_on_both_signs_and_special_lambdas():
    from sklearn.preprocessing import PowerTransformer

    x = torch.linspace(-4, 4, 81, dtype=torch.float64)[:, None].repeat(1, 4)
    lambdas = torch.tensor([0.0, 2.0, 0.5, -1.3], dtype=torch.float64)
    power = PowerTransformer(standardize=False).fit(x.numpy())
    power.lambdas_ = lambdas.numpy()
    assert np.allclose(yeo_johnson(x, lambdas).numpy(), power.transform(x.numpy()), rtol=1e-12, atol=1e-12)


def test_combood_refuses_constant_extremes_and_mismatched_widths():
    from watermark_ood.detection.combood import CombOOD

    logits = torch.ones(10, 3)
    features = torch.zeros(10, 4)  # one layer of 2 channels: means, max, min all constant
    with pytest.raises(WatermarkOODError, match="every extreme value is constant"):
        CombOOD((4,)).fit_structured(logits, features, torch.zeros(10, dtype=torch.long))
    with pytest.raises(WatermarkOODError, match="do not match the tapped layers' widths"):
        CombOOD((5,)).fit_structured(logits, features, torch.zeros(10, dtype=torch.long))
