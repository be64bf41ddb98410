"""WeiPer+KLD against a reference written the way the authors' OpenOOD postprocessor computes it (histograms by
comparison with bin edges, the smoothing as a replicate-padded Conv1d, their symmetric KL), on the same
perturbations."""

import torch
import torch.nn.functional as F

from watermark_ood.detection.weiper import WeiPer


def reference_outlier(detector: WeiPer, train: torch.Tensor, test: torch.Tensor) -> torch.Tensor:
    def histograms(values, low, high, bins):
        edges = torch.cat([torch.tensor([-float("inf")]), torch.linspace(float(low), float(high) + 1e-8, bins + 1),
                           torch.tensor([float("inf")])])
        inside = (values.T[None] < edges[1:, None, None]) & (values.T[None] >= edges[:-1, None, None])
        density = inside.float().mean(dim=1)  # (bins + 2) x N: shares of each image's values
        return (density[1:-1] / density.sum(dim=0)[None]).T

    def smooth(h, size):
        kernel = torch.nn.Conv1d(1, 1, size, padding="same", padding_mode="replicate", bias=False)
        kernel.weight.data[:] = 1.0 / size
        return kernel(h[:, None, :])[:, 0, :].detach()

    def kldiv(p, q, eps):
        q_, p_ = q + eps, p + eps
        p_, q_ = p_ / p_.sum(), q_ / q_.sum(dim=1, keepdim=True)
        q_p = q_.log() - p_.log()[None]
        return -(p_[None] * q_p).sum(dim=1) - (q_ * (-q_p)).sum(dim=1)

    head = detector.head
    wide = lambda h: h @ detector.perturbed_weight.T + head.bias.detach().repeat(detector.repeats)  # noqa: E731
    lo, hi, plo, phi = train.min(), train.max(), wide(train).min(), wide(train).max()
    p_train = histograms(train, lo, hi, detector.bins).mean(dim=0)
    q_train = histograms(wide(train), plo, phi, detector.bins).mean(dim=0)
    kl = kldiv(p_train, smooth(histograms(test, lo, hi, detector.bins), detector.smoothing), detector.eps)
    kl_w = kldiv(q_train, smooth(histograms(wide(test), plo, phi, detector.bins), detector.smoothing_perturbed),
                 detector.eps_perturbed)
    k = head.out_features
    msp = torch.stack([wide(test)[:, i * k:(i + 1) * k].softmax(1).max(1).values for i in range(detector.repeats)],
                      dim=1).mean(dim=1)
    return kl + detector.lambda_1 * kl_w - detector.lambda_2 * msp


def test_weiper_equals_the_reference_and_its_perturbations_follow_the_paper():
    torch.manual_seed(0)
    head = torch.nn.Linear(32, 5)
    train, test = torch.randn(400, 32).relu(), torch.randn(50, 32).relu() * 1.5
    detector = WeiPer(head, repeats=20).fit_features(train)
    ours = detector.predict_features(test)
    torch.testing.assert_close(ours, reference_outlier(detector, train, test), rtol=1e-4, atol=1e-5)
    # each perturbed class projection sits at delta * |W_k| from W_k, and the draws are seeded
    offsets = detector.perturbed_weight.reshape(20, 5, 32) - head.weight.detach()[None]
    torch.testing.assert_close(offsets.norm(dim=2), detector.delta * head.weight.detach().norm(dim=1).expand(20, 5))
    assert torch.equal(WeiPer(head, repeats=20).fit_features(train).perturbed_weight, detector.perturbed_weight)
    assert float(ours.std()) > 0


def test_histograms_count_values_outside_the_range_in_the_denominator():
    from watermark_ood.detection.weiper import value_histograms

    values = torch.tensor([[0.0, 0.5, 0.99, 5.0]])
    shares = value_histograms(values, torch.tensor(0.0), torch.tensor(1.0), 2)
    assert shares.tolist() == [[0.25, 0.5]]
    assert F.pad(shares, (0, 0)).sum() < 1
