"""How a detector's ID training data is shared out: what fits the score, what gives a combination's parts their
z-scores, what is held out to set the threshold (and, for ``--score auto``, to rank the candidates). One policy
for a named score and for ``--score auto``; the two differ only in the hold-out, for the reason given at ``AUTO``.

Every part is a seeded, disjoint split of the ID training images, so a file is reproducible from (data, seed) and
no image that fitted a score also sets its threshold.

    >>> NAMED.holdout_fraction, NAMED.fit_images, NAMED.z_images, AUTO.holdout_fraction
    (0.1, 5000, 1250, 0.12)
"""

from __future__ import annotations

from dataclasses import dataclass

from watermark_ood.data.images import ImageSet


Z_FRACTION = 0.2  # of a fit split: held out for the z-scores of a combination's parts


@dataclass(frozen=True)
class DataPolicy:
    """Sizes and fractions of the parts; the splits are seeded (``ImageSet.split`` / ``sample``)."""

    holdout_fraction: float  # of the ID training images: never fitted on; ranks (auto) and calibrates
    calibration_images: int  # at most this many held-out images set the threshold
    fit_images: int = 5000  # at most this many of the rest fit a score
    z_fraction: float = Z_FRACTION  # a combination's parts fit on the rest of the fit split, z-scores from this

    @property
    def z_images(self) -> int:
        """At most this many images give a combination's z-scores (a quarter of the fit sample)."""
        return max(1, self.fit_images // 4)

    def fit_and_z(self, images: ImageSet, seed: int, fit_images: int | None = None) -> tuple[ImageSet, ImageSet]:
        """The seeded fit sample and z-score sample of ``images`` (disjoint: a KNN scored on its own bank is biased).
        ``fit_images`` overrides the policy's size (a caller's ``limit``)."""
        count = self.fit_images if fit_images is None else fit_images
        fit_part, z_part = z_split(images, seed, self.z_fraction)
        return fit_part.sample(count, seed), z_part.sample(max(1, count // 4), seed)


def z_split(images: ImageSet, seed: int, fraction: float = Z_FRACTION) -> tuple[ImageSet, ImageSet]:
    """The whole fit split and the whole z-score split (a leaderboard fits on all it is given); a set too small to
    split (at most 4 images) gives both parts."""
    return images.split(fraction, seed) if len(images) > 4 else (images, images)


NAMED = DataPolicy(holdout_fraction=0.1, calibration_images=5000)  # calibrate --score NAME
# --score auto halves its hold-out: one half ranks the candidates (3,000 images, as many synthetic outliers), the
# other calibrates the winner; 12% of CIFAR-10's 50,000 gives both halves 3,000. The ranking's bootstrap and the
# calibration each need far fewer than a named score's 5,000, and every image held out is one fewer to fit on.
AUTO = DataPolicy(holdout_fraction=0.12, calibration_images=2000)
