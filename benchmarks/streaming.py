"""Issue 15: fitting a watermark on an ImageFolder too large for memory, streamed from disk.

1. Generates (once, outside the checkout) an ImageFolder of ``--images`` 224x224 JPEGs in 100 classes: decoded
   as uint8 they take images x 150,528 bytes (20,000: 3.0 GB).
2. Streams it: ``torchvision:resnet18`` (random weights) fitted for ``--steps`` steps with ``--workers``
   decoding processes; peak RSS of the whole process tree (main + DataLoader workers, sampled every 0.2 s
   from /proc) and of the main process alone (getrusage).
3. Throughput on a subset that fits in memory (``--compare-images``): the same steps streamed vs in memory,
   in this one run (decoding the in-memory copy is timed separately).

    python benchmarks/streaming.py --data ~/wood-runs/stream-data --out benchmarks/results/streaming/cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

from watermark_ood.data.readers import DataOptions, load_id_data
from watermark_ood.models.registry import load_model
from watermark_ood.runtime.device import ExecutionConfig, device_name
from watermark_ood.watermark.config import FitConfig
from watermark_ood.watermark.learner import WatermarkLearner

SIZE, CLASSES = 224, 100


def _write_class(args: tuple[Path, int, int]) -> None:
    from PIL import Image

    root, label, count = args
    rng = np.random.default_rng(label)
    for split, n in (("train", count), ("val", max(1, count // 20))):
        folder = root / split / f"n{label:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            path = folder / f"{i:05d}.JPEG"
            if path.exists():
                continue
            coarse = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)  # smooth colours plus grain, like photos
            image = Image.fromarray(coarse).resize((SIZE, SIZE), Image.BICUBIC)
            grain = rng.normal(0, 12, (SIZE, SIZE, 3))
            pixels = np.clip(np.asarray(image, dtype=np.float32) + grain, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(path, quality=90)


def make_folder(root: Path, images: int) -> None:
    per_class = images // CLASSES
    with ProcessPoolExecutor(2) as pool:
        list(pool.map(_write_class, [(root, k, per_class) for k in range(CLASSES)]))


class TreeRss:
    """Peak memory of this process and its children, sampled from /proc (Linux).

    ``peak``: summed RSS, which counts pages shared by the forked DataLoader workers once per process (an upper
    bound); ``peak_pss``: summed proportional set size, each shared page split among its sharers (the real total).
    """

    def __init__(self, every: float = 0.2) -> None:
        self.peak, self.peak_pss, self.every, self.running = 0, 0, every, True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    @staticmethod
    def _rss(pid: int) -> int:
        try:
            with open(f"/proc/{pid}/statm") as handle:
                return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            return 0

    @staticmethod
    def _pss(pid: int) -> int:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as handle:
                for line in handle:
                    if line.startswith("Pss:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def _children(self, pid: int) -> list[int]:
        try:
            with open(f"/proc/{pid}/task/{pid}/children") as handle:
                kids = [int(x) for x in handle.read().split()]
        except OSError:
            return []
        return kids + [g for k in kids for g in self._children(k)]

    def _run(self) -> None:
        me = os.getpid()
        while self.running:
            tree = [me, *self._children(me)]
            self.peak = max(self.peak, sum(self._rss(p) for p in tree))
            self.peak_pss = max(self.peak_pss, sum(self._pss(p) for p in tree))
            time.sleep(self.every)

    def stop(self) -> int:
        self.running = False
        self.thread.join()
        return self.peak


def fit_steps(model, normalization, train, steps: int, batch: int, execution) -> dict[str, float]:
    config = FitConfig(epochs=1, batch_size=batch, sigma=0.4, rho=1.0, beta=3.5)
    learner = WatermarkLearner(model, normalization, config, execution)
    t0 = time.perf_counter()
    result = learner.fit(train, progress=False, max_steps=steps)
    seconds = time.perf_counter() - t0
    return {"steps": steps, "id_images": result.images_seen, "seconds": seconds,
            "id_images_per_second": result.images_seen / seconds,
            "watermark_max_abs": float(result.watermark.tensor.abs().max())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="where the generated ImageFolder lives (made once)")
    p.add_argument("--images", type=int, default=20000)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--compare-images", type=int, default=2000)
    p.add_argument("--compare-steps", type=int, default=30)
    p.add_argument("--stream-above-gib", type=float, default=2.0, help="the automatic streaming threshold [2]")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()

    t0 = time.perf_counter()
    make_folder(args.data, args.images)
    generate_seconds = time.perf_counter() - t0
    files = sorted(args.data.glob("train/*/*.JPEG"))
    execution = ExecutionConfig(device=args.device, threads=None if args.device != "cpu" else 2)
    model = load_model("torchvision:resnet18", None, None, 3, fallback_classes=CLASSES)
    options = DataOptions(stream=None, workers=args.workers,  # automatic: this set is above the threshold
                          stream_above_bytes=int(args.stream_above_gib * 1024 ** 3))

    rss = TreeRss()
    train, val = load_id_data(args.data, SIZE, options=options)
    assert train.is_streaming, "the generated set should be streamed automatically"
    streamed = fit_steps(model.module, model.normalization, train, args.steps, args.batch_size, execution)
    tree_peak = rss.stop()
    main_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    children_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024

    subset = train.sample(args.compare_images, 0)
    stream_small = fit_steps(model.module, model.normalization, subset, args.compare_steps, args.batch_size, execution)
    t0 = time.perf_counter()
    in_memory = subset.materialize()
    decode_seconds = time.perf_counter() - t0
    memory_small = fit_steps(model.module, model.normalization, in_memory, args.compare_steps, args.batch_size,
                             execution)
    decoded_bytes = len(files) * 3 * SIZE * SIZE
    out = {
        "device": device_name(execution.torch_device()), "threads": torch.get_num_threads(), "workers": args.workers,
        "model": "torchvision:resnet18 (random weights)", "batch_size": args.batch_size,
        "dataset": {"train_images": len(files), "val_images": len(val), "size": SIZE,
                    "decoded_bytes": decoded_bytes, "jpeg_bytes": sum(f.stat().st_size for f in files),
                    "generate_seconds": generate_seconds},
        "streamed_fit": {**streamed, "peak_rss_tree_bytes": tree_peak, "peak_pss_tree_bytes": rss.peak_pss,
                         "peak_rss_main_bytes": main_peak, "peak_rss_largest_child_bytes": children_peak,
                         "target_peak_rss_under_3_gib": tree_peak < 3 * 1024 ** 3},
        "compare": {"images": args.compare_images, "streamed": stream_small, "in_memory": memory_small,
                    "in_memory_decode_seconds": decode_seconds,
                    "streamed_over_in_memory": stream_small["id_images_per_second"]
                    / memory_small["id_images_per_second"]},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
