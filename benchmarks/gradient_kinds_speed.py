"""Speed of the per-image-gradient detectors (graduncertainty, gradnorm-all) beside pytorch-ood's own classes,
and what they cost a leaderboard of every detector, in one process on one machine.

Part 1: the same batches of real CIFAR-10 test images scored by the library's class (``GradUncertainty``,
``GradNorm`` with its defaults: ``torch.func.vmap`` per image) and by ours (one batched backward pass,
:mod:`watermark_ood.detection.image_gradients`); images per second of each, their ratio and the largest relative
difference of the scores. Part 2: ``evaluate_scores`` (the leaderboard of ``evaluate --scores``) over every kind
that runs on the model, then over the same kinds without the two gradient kinds; the ratio of the two times.

The model is a torchvision ResNet-18 with 10 outputs on 32x32 images (its ImageNet stem): seeded random
convolutions, BatchNorm statistics of CIFAR-10 images and a last layer fitted on their features. Time does not
depend on the weights; the FPRs of part 2 would mean little and are not reported. Targets (detector-units redesign): ours >= 10x the library per image; the leaderboard with the
gradient kinds <= 3x the one without.

    python benchmarks/gradient_kinds_speed.py --id-data ../shared/data/cifar10 \
        --ood-data ../shared/data/ood/*.npz --out benchmarks/results/detectors/gradient-kinds-speed.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from pytorch_ood import detector as pod

from watermark_ood.data.preprocessing import Normalization
from watermark_ood.data.readers import load_id_data, load_ood_data
from watermark_ood.detection.image_gradients import GRADNORM_ALL, UNCERTAINTY
from watermark_ood.detection.image_scores import parameter_gradient_scores
from watermark_ood.detection.registry import DETECTOR_KINDS
from watermark_ood.evaluation.protocol import evaluate_scores
from watermark_ood.runtime.device import ExecutionConfig

GRADIENT_KINDS = {"graduncertainty": ("GradUncertainty", UNCERTAINTY), "gradnorm-all": ("GradNorm", GRADNORM_ALL)}
CIFAR = Normalization((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))


def model(train) -> torch.nn.Module:
    """Seeded random convolutions with BatchNorm statistics of real images, and a last layer fitted to CIFAR-10's
    labels on their features (a linear probe, L2-penalised: without it the softmax saturates to exact zeros, where
    GradUncertainty's clamped loss scores half the images 0): detectors that need every class predicted right
    somewhere (she) can then be fitted."""
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10)
    probe = train.sample(2000, 2)
    net.train()
    with torch.no_grad():
        for i in range(0, len(probe), 250):  # BatchNorm's running statistics from real images
            net(CIFAR(probe.images[i:i + 250]))
    net.eval()
    head, net.fc = net.fc, torch.nn.Identity()
    with torch.no_grad():
        features = torch.cat([net(CIFAR(probe.images[i:i + 250])) for i in range(0, len(probe), 250)])
    net.fc = head
    optimizer = torch.optim.LBFGS(head.parameters(), max_iter=200)

    def loss():
        optimizer.zero_grad()
        value = torch.nn.functional.cross_entropy(head(features), probe.labels) + 1e-2 * head.weight.square().sum()
        value.backward()
        return value

    optimizer.step(loss)
    return net


def side_by_side(net, images, batch: int) -> list[dict]:
    rows = []
    x = CIFAR(images.images)
    execution = ExecutionConfig(device="cpu", eval_batch_size=batch)
    for name, (library, norm) in GRADIENT_KINDS.items():
        reference = getattr(pod, library)(net)
        t0 = time.perf_counter()
        expected = np.concatenate([-reference.predict(x[i:i + batch]).numpy() for i in range(0, len(x), batch)])
        library_seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        ours = parameter_gradient_scores(library, norm)(net, images, CIFAR, None, execution)
        ours_seconds = time.perf_counter() - t0
        rows.append({"detector": name, "library_class": library, "images": len(x), "batch": batch,
                     "library_images_per_second": len(x) / library_seconds,
                     "ours_images_per_second": len(x) / ours_seconds, "speedup": library_seconds / ours_seconds,
                     "max_relative_difference": relative_difference(ours, expected),
                     "images_scored_zero": int(np.sum(expected == 0))})
        print(f"{name:16s} library {rows[-1]['library_images_per_second']:7.1f} img/s  ours "
              f"{rows[-1]['ours_images_per_second']:7.1f} img/s  {rows[-1]['speedup']:5.1f}x  max rel diff "
              f"{rows[-1]['max_relative_difference']:.1e}", flush=True)
    return rows


def relative_difference(ours: np.ndarray, expected: np.ndarray) -> float:
    """The largest |ours - expected| / |expected|; an image both score exactly 0 differs by 0 (a softmax saturated
    in float32 has every per-image gradient 0: GradUncertainty's loss is clamped where a probability is 0)."""
    both_zero = (ours == 0) & (expected == 0)
    return float(np.max(np.where(both_zero, 0.0, np.abs(ours - expected) / np.maximum(np.abs(expected), 1e-30))))


def leaderboards(net, fit, test, ood) -> dict:
    kinds = [n for n, k in DETECTOR_KINDS.items() if k.reads != "sampling"]  # mcd: the model has no dropout
    without = [n for n in kinds if n not in GRADIENT_KINDS]
    seconds = {}
    for label, names in (("without_gradient_kinds", without), ("every_kind", kinds)):
        t0 = time.perf_counter()
        evaluate_scores(net, CIFAR, fit, test, ood, None, names, ExecutionConfig(device="cpu"))
        seconds[label] = time.perf_counter() - t0
        print(f"leaderboard {label}: {len(names)} detectors in {seconds[label]:.0f}s", flush=True)
    return {"detectors": len(kinds), "seconds": seconds,
            "ratio": seconds["every_kind"] / seconds["without_gradient_kinds"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--id-data", required=True)
    p.add_argument("--ood-data", nargs="+", required=True)
    p.add_argument("--images", type=int, default=512, help="images of part 1 [512]")
    p.add_argument("--batch", type=int, default=64, help="images per batch of part 1 [64]")
    p.add_argument("--leaderboard-images", type=int, default=1000,
                   help="ID fit and ID test images of part 2, each; every OOD set a fifth of it [1000]")
    p.add_argument("--skip-leaderboard", action="store_true")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    train, test = load_id_data(args.id_data)
    net = model(train)
    out = {"command": "python benchmarks/gradient_kinds_speed.py " + " ".join(
               f"--{k.replace('_', '-')} {' '.join(v) if isinstance(v, list) else v}" for k, v in vars(args).items()
               if v not in (None, False)),
           "model": "torchvision resnet18(num_classes=10): seeded random convolutions, BatchNorm statistics of 2,000 "
                    "CIFAR-10 training images, last layer fitted on their features; 32x32 inputs",
           "machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
           "torch": torch.__version__, "side_by_side": side_by_side(net, test.sample(args.images, 0), args.batch)}
    if not args.skip_leaderboard:
        n = args.leaderboard_images
        ood = [load_ood_data(s, test.image_shape).sample(n // 5, 0) for s in args.ood_data]
        out["leaderboard"] = leaderboards(net, train.sample(n, 0), test.sample(n, 1), ood)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
