"""Write the proving ground's data sets (issue 27) as .npz folders outside the checkout, from ../shared and Debian.

* ``cifar10-6v4/``: near-OOD split of CIFAR-10. ID = classes 0-5 (airplane, automobile, bird, cat, deer, dog),
  relabelled 0-5, train and test; ``ood/cifar10-unknown4.npz`` = the test images of classes 6-9 (frog, horse,
  ship, truck), the near-OOD set. The shared far sets stay the far suite.
  Other ``--classes`` write ``cifar10-k<classes>/`` (e.g. ``cifar10-k234567/``, the second near split).
* ``fashion-mnist-ood/``: grey 28x28 OOD sets for a Fashion-MNIST classifier: greyscale conversions of the shared
  CIFAR-10 test split, Textures and Tiny-ImageNet, and scikit-learn's handwritten digits (8x8, upscaled), the grey
  image set that ships inside a package on PyPI. Fashion-MNIST itself is read from Debian's idx files.

    python benchmarks/prepare_proving_ground.py --shared ../shared --out ~/wood-runs/data [--classes 0 1 2 3 4 5]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from torchvision.transforms.v2 import functional as TF

from watermark_ood.core.errors import WatermarkOODError
from watermark_ood.data.images import ImageSet, load_npz, split_classes

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def save_npz(path: Path, images: ImageSet) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial.npz")
    np.savez_compressed(partial, x=images.images.permute(0, 2, 3, 1).numpy(), y=images.labels.numpy())
    partial.replace(path)


def grey(images: torch.Tensor, size: int) -> torch.Tensor:
    """RGB uint8 NCHW -> one-channel uint8 at ``size`` x ``size`` (ITU-R 601 luma, antialiased resize)."""
    luma = TF.rgb_to_grayscale(images) if images.shape[1] == 3 else images
    return TF.resize(luma, [size, size], antialias=True)


def split_name(classes: list[int]) -> str:
    """``cifar10-6v4`` for the design split (classes 0-5), ``cifar10-k234567`` for any other known set.

    >>> split_name([0, 1, 2, 3, 4, 5]), split_name([2, 3, 4, 5, 6, 7])
    ('cifar10-6v4', 'cifar10-k234567')
    """
    return "cifar10-6v4" if classes == list(range(6)) else "cifar10-k" + "".join(map(str, classes))


def near_ood_split(shared: Path, out: Path, classes: list[int]) -> None:
    folder = out / split_name(classes)
    for split in ("train", "test"):
        data = load_npz(shared / "data/cifar10" / f"{split}.npz", f"cifar10-{split}", require_labels=True)
        known, unknown = split_classes(data, classes)
        save_npz(folder / f"{split}.npz", known)
        if split == "test":
            save_npz(folder / f"ood/cifar10-unknown{10 - len(classes)}.npz", unknown)
        print(f"{split}: {len(known)} known, {len(unknown)} unknown", flush=True)


def grey_ood_sets(shared: Path, out: Path, size: int = 28) -> None:
    from sklearn.datasets import load_digits

    for name, file in [("cifar10-grey", "cifar10/test.npz"), ("textures-grey", "ood/textures_partial.npz"),
                       ("tinyimagenet-grey", "ood/tinyimagenet_resize.npz")]:
        data = load_npz(shared / "data" / file)
        save_npz(out / "fashion-mnist-ood" / f"{name}.npz",
                 ImageSet(grey(data.images, size), torch.full((len(data),), -1), name))
    digits = load_digits().images  # 1797 x 8 x 8, values 0..16, white strokes on black like Fashion-MNIST
    pixels = torch.from_numpy((digits * (255 / 16)).round().astype(np.uint8)).unsqueeze(1)
    save_npz(out / "fashion-mnist-ood/digits.npz",
             ImageSet(TF.resize(pixels, [size, size], antialias=True), torch.full((len(digits),), -1), "digits"))
    print("grey OOD sets written", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shared", default="../shared")
    p.add_argument("--out", default=str(Path.home() / "wood-runs/data"))
    p.add_argument("--classes", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5], help="known CIFAR-10 classes")
    args = p.parse_args()
    shared, out = Path(args.shared), Path(args.out).expanduser()
    try:
        near_ood_split(shared, out, args.classes)
        grey_ood_sets(shared, out)
    except WatermarkOODError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    link = out / "fashion-mnist"
    if not link.exists() and FASHION_MNIST.is_dir():
        link.symlink_to(FASHION_MNIST)


if __name__ == "__main__":
    main()
