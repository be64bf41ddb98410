"""The class kinds of synthetic outliers (issue 27 item 5): made from ID images of different classes, only when
asked for, so that the default set is unchanged."""

import pytest
import torch

from watermark_ood.core.errors import WatermarkOODError
from watermark_ood.data.images import ImageSet
from watermark_ood.data.synthetic import (CLASS_KINDS, OUTLIER_KINDS, class_blend, class_mosaic, kind_rows,
                                          outlier_kind_parts, phase_scramble, synthesize_outliers, synthesized_kinds)


def constant_images(classes: int, per_class: int) -> ImageSet:
    """Every image of class c is flat with value 10 * (c + 1): a pixel tells which class it came from."""
    labels = torch.arange(classes).repeat_interleave(per_class)
    images = (10 * (labels + 1)).to(torch.uint8).view(-1, 1, 1, 1).expand(-1, 3, 8, 8).contiguous()
    return ImageSet(images, labels, "constant")


def test_class_blend_is_the_mean_of_two_images_of_different_classes():
    data = constant_images(5, 4)
    out = class_blend(data.images, data.labels, 200, torch.Generator().manual_seed(1))
    values = out[:, 0, 0, 0].long()
    pairs = {(a, b) for a in range(1, 6) for b in range(1, 6) if a != b}
    assert all(any(5 * (a + b) == v for a, b in pairs) for v in values.tolist())
    assert (out == out[:, :1, :1, :1]).all()  # a mean of two flat images is flat
    assert len(set(values.tolist())) > 3  # many different pairs are drawn


def test_class_mosaic_takes_its_four_quadrants_from_four_classes():
    data = constant_images(6, 3)
    out = class_mosaic(data.images, data.labels, 100, torch.Generator().manual_seed(2))
    quadrants = torch.stack([out[:, 0, 0, 0], out[:, 0, 0, 7], out[:, 0, 7, 0], out[:, 0, 7, 7]], dim=1)
    assert all(len(set(row.tolist())) == 4 for row in quadrants)
    assert (out[:, :, :4, :4] == out[:, :, :1, :1]).all()  # each quadrant is one whole image's quadrant


def test_with_fewer_classes_than_quadrants_classes_repeat_but_neighbours_differ():
    data = constant_images(3, 5)
    out = class_mosaic(data.images, data.labels, 50, torch.Generator().manual_seed(3))
    quadrants = torch.stack([out[:, 0, 0, 0], out[:, 0, 0, 7], out[:, 0, 7, 0]], dim=1)
    assert all(len(set(row.tolist())) == 3 for row in quadrants)
    with pytest.raises(WatermarkOODError, match="at least two classes"):
        class_blend(data.images[:5], data.labels[:5], 4, torch.Generator())


def test_the_default_set_is_unchanged_and_class_kinds_come_last():
    data = constant_images(4, 25)
    plain = synthesize_outliers(data, 0)
    assert torch.equal(plain.images, synthesize_outliers(data, 0, ()).images)
    assert synthesized_kinds() == OUTLIER_KINDS
    made = synthesized_kinds(CLASS_KINDS)
    assert made == OUTLIER_KINDS + CLASS_KINDS
    both = synthesize_outliers(data, 0, CLASS_KINDS)
    rows = kind_rows(len(both), ("class-blend",), made)
    assert rows.tolist() == outlier_kind_parts(len(both), made)["class-blend"].tolist()
    blended = both.images[rows, 0, 0, 0].long()
    means = {5 * (a + b) for a in range(1, 5) for b in range(1, 5) if a != b}  # of two different classes
    assert set(blended.tolist()) <= means
    with pytest.raises(ValueError, match="class-blend"):
        kind_rows(len(plain), ("class-blend",))  # not made unless asked for
    with pytest.raises(ValueError, match="got nope"):
        synthesized_kinds(("nope",))


def test_phase_scramble_keeps_the_amplitude_spectrum_and_removes_the_structure():
    """Low-contrast images (nothing clamped): the scrambled image's amplitude spectrum is its source's to the
    rounding to uint8, while the object (a bright square) is gone: scrambled and source barely correlate."""
    square = torch.full((8, 3, 16, 16), 100, dtype=torch.uint8)
    square[..., 4:12, 4:12] = 140
    out = phase_scramble(square, torch.Generator().manual_seed(0))
    amplitude = lambda x: torch.fft.fft2(x.double()).abs()  # noqa: E731
    assert (amplitude(out) - amplitude(square)).abs().max() < 0.02 * amplitude(square).max()
    a, b = (x.double().flatten(1) - x.double().flatten(1).mean(1, keepdim=True) for x in (out, square))
    correlation = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))
    assert correlation.abs().mean() < 0.5
    assert not torch.equal(out[0], out[1])  # each image its own phase field


def test_phase_scramble_is_made_only_when_asked_for_after_the_class_kinds():
    data = constant_images(4, 25)
    made = synthesized_kinds(("phase-scramble", "class-blend"))
    assert made == OUTLIER_KINDS + ("class-blend", "phase-scramble")
    both = synthesize_outliers(data, 0, ("class-blend", "phase-scramble"))
    rows = kind_rows(len(both), ("phase-scramble",), made)
    assert len(rows) == len(both) // len(made)
    # a flat image has only its mean (DC) term, whose phase is kept: scrambled, each is its own source image
    assert torch.equal(both.images[rows], data.images[rows])
    assert torch.equal(synthesize_outliers(data, 0).images, synthesize_outliers(data, 0, ()).images)
