"""Carry ../shared's CIFAR-10 suite to a lent GPU machine within its 64 MiB transfer limit.

The device tool copies only the repository (64 MiB in all); ../shared's CIFAR-10
train split alone is 136 MiB. Its images were decoded from JPEG quality 75 (see
../shared/README.md), so re-encoding them at quality 75 with 4:2:0 chroma is almost
idempotent: the packer reports the mean absolute pixel difference (about 0.25 grey
levels, against the ~6 the JPEG copy already differs from CIFAR-10). All images of a
split share one JPEG header, stored once; only the entropy-coded bodies are kept.
OOD sets are kept losslessly, as the seeded subset the protocol uses (|ID test|/5).

    python benchmarks/device/pack_shared.py pack ../shared .devdata      # here
    python benchmarks/device/pack_shared.py unpack .devdata /tmp/shared  # on the device
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

SOS = b"\xff\xda"


def encode(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=75, subsampling=2)
    return buffer.getvalue()


def split(jpeg: bytes) -> tuple[bytes, bytes]:
    """Header up to and including the SOS segment, then the entropy-coded body."""
    at = jpeg.index(SOS)
    length = int.from_bytes(jpeg[at + 2: at + 4], "big")
    return jpeg[: at + 2 + length], jpeg[at + 2 + length:]


def pack_split(src: Path, dst: Path) -> dict:
    data = np.load(src)
    x, y = data["x"], data["y"]
    header, bodies, diffs = None, [], []
    for image in x:
        head, body = split(encode(image))
        if header is None:
            header = head
        elif head != header:
            raise SystemExit(f"{src}: JPEG headers differ between images; cannot share one header")
        bodies.append(body)
        decoded = np.asarray(Image.open(io.BytesIO(head + body)).convert("RGB"))
        diffs.append(np.abs(decoded.astype(np.int16) - image).mean())
    offsets = np.cumsum([0] + [len(b) for b in bodies]).astype(np.int64)
    np.savez(dst, header=np.frombuffer(header, np.uint8), bodies=np.frombuffer(b"".join(bodies), np.uint8),
             offsets=offsets, y=y)
    return {"file": src.name, "images": len(x), "bytes": dst.stat().st_size,
            "mean_abs_pixel_diff": float(np.mean(diffs)), "max_image_mean_abs_diff": float(np.max(diffs))}


def unpack_split(src: Path, dst: Path) -> None:
    data = np.load(src)
    header, bodies, offsets = data["header"].tobytes(), data["bodies"].tobytes(), data["offsets"]
    x = np.stack([np.asarray(Image.open(io.BytesIO(header + bodies[a:b])).convert("RGB"))
                  for a, b in zip(offsets[:-1], offsets[1:])])
    np.savez(dst, x=x, y=data["y"])


def pack(shared: Path, out: Path, ood_images: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    manifest = {"note": __doc__.split("\n\n")[1], "cifar10": [], "ood": []}
    for name in ("train", "test"):
        manifest["cifar10"].append(pack_split(shared / "data/cifar10" / f"{name}.npz", out / f"cifar10-{name}.jpg.npz"))
        print(manifest["cifar10"][-1], flush=True)
    for path in sorted((shared / "data/ood").glob("*.npz")):
        data = np.load(path)
        keep = np.sort(np.random.default_rng(0).permutation(len(data["x"]))[:ood_images])
        np.savez_compressed(out / f"ood-{path.name}", x=data["x"][keep], y=data["y"][keep])
        manifest["ood"].append({"file": path.name, "images": len(keep), "of": len(data["x"])})
    models = out / "models"
    models.mkdir(exist_ok=True)
    for path in sorted((shared / "models/cifar10_resnet").iterdir()):
        shutil.copy(path, models / path.name)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"packed into {out}: {total / 2**20:.1f} MiB")


def unpack(src: Path, shared: Path) -> None:
    (shared / "data/cifar10").mkdir(parents=True, exist_ok=True)
    (shared / "data/ood").mkdir(parents=True, exist_ok=True)
    for name in ("train", "test"):
        unpack_split(src / f"cifar10-{name}.jpg.npz", shared / "data/cifar10" / f"{name}.npz")
    for path in sorted(src.glob("ood-*.npz")):
        shutil.copy(path, shared / "data/ood" / path.name.removeprefix("ood-"))
    shutil.copytree(src / "models", shared / "models/cifar10_resnet", dirs_exist_ok=True)
    print(f"unpacked {src} into {shared}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["pack", "unpack"])
    parser.add_argument("src", type=Path)
    parser.add_argument("dst", type=Path)
    parser.add_argument("--ood-images", type=int, default=2000, help="images kept per OOD set (|ID test|/5)")
    args = parser.parse_args()
    if args.action == "pack":
        pack(args.src, args.dst, args.ood_images)
    else:
        unpack(args.src, args.dst)


if __name__ == "__main__":
    sys.exit(main())
