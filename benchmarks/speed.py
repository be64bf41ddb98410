"""Speed benchmark (issue: speed): the plain reference loop vs the library's fast learner, in one process.

For ResNet-20, ResNet-56 and WRN-40-2 it runs the same number of SAM steps with
the same seed through the reference loop and through the fast learner in each
execution mode, and prints / writes as JSON: ID images per second, the ratio to
the reference, peak extra memory, the watermark difference, FPR95/AUROC of both
on a held-out set, and evaluation throughput.

    python benchmarks/speed.py --steps 12 --out benchmarks/results/speed-cpu.json \
        [--id-data ../shared/data/cifar10 --ood-data ../shared/data/ood/tinyimagenet_resize.npz \
         --checkpoint-dir ../shared/models/cifar10_resnet]

Without data options it uses random images (timing only; metrics then mean little).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch
from reference_loop import reference_fit, reference_logits  # a script beside this one (its folder is on sys.path)

from watermark_ood.data.images import ImageSet, load_npz
from watermark_ood.data.readers import load_id_data
from watermark_ood.detection.logit_scores import msp_score
from watermark_ood.evaluation.metrics import auroc, fpr_at_tpr
from watermark_ood.models.registry import load_model
from watermark_ood.runtime.device import ExecutionConfig
from watermark_ood.runtime.inference import predict_logits
from watermark_ood.watermark.config import get_preset
from watermark_ood.watermark.file import Watermark
from watermark_ood.watermark.learner import WatermarkLearner


class PeakRSS:
    """Polls this process's resident memory in a thread; reports the peak above the starting level."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval, self.peak, self.start, self._stop = interval, 0, 0, threading.Event()

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self):
        self.start = self.peak = self.rss()
        self.cuda_peak = 0
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(self.interval)

    def __exit__(self, *exc) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            self.cuda_peak = torch.cuda.max_memory_allocated()
        self._stop.set()
        self._thread.join()

    @property
    def extra_mib(self) -> float:
        return (self.peak - self.start) / 2**20


def modes(device: str) -> dict[str, ExecutionConfig]:
    """The fast learner's execution modes worth timing on ``device``."""
    found = {  # plain modes step eagerly; the -graphs modes replay CUDA graphs (the library's default on CUDA)
        "fast-fp32": ExecutionConfig(device=device, precision="fp32", cuda_graphs=False),
        "fast-bf16": ExecutionConfig(device=device, precision="bf16", cuda_graphs=False),
        "fast-bf16-compile": ExecutionConfig(device=device, precision="bf16", compile=True),
    }
    if device.startswith("cuda"):
        found["fast-fp32-graphs"] = ExecutionConfig(device=device, precision="fp32", cuda_graphs=True)
        found["fast-bf16-graphs"] = ExecutionConfig(device=device, precision="bf16", cuda_graphs=True)
    return found


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def detection(model, normalization, id_set, ood_set, w: torch.Tensor, device: str = "cpu") -> dict[str, float]:
    exe = ExecutionConfig(device=device, eval_batch_size=500)
    mark = Watermark(w)
    s_id = msp_score(predict_logits(model, id_set, normalization, mark, exe)).numpy()
    s_ood = msp_score(predict_logits(model, ood_set, normalization, mark, exe)).numpy()
    return {"fpr95": fpr_at_tpr(s_id, s_ood), "auroc": auroc(s_id, s_ood)}


def time_eval(model, normalization, images: ImageSet, execution: ExecutionConfig) -> float:
    predict_logits(model, images.subset(torch.arange(min(200, len(images)))), normalization, None, execution)
    sync()
    t = time.perf_counter()
    predict_logits(model, images, normalization, None, execution)
    sync()
    return len(images) / (time.perf_counter() - t)


def bench_model(name: str, args, train: ImageSet, test: ImageSet, held_id: ImageSet, held_ood: ImageSet) -> dict:
    ckpt = None
    if args.checkpoint_dir and name.startswith("resnet"):
        found = sorted(Path(args.checkpoint_dir).glob(f"{name}-*.th"))
        ckpt = found[0] if found else None
    loaded = load_model(name, ckpt, fallback_classes=10)
    if ckpt is None:
        torch.manual_seed(0)
    model, norm = loaded.module, loaded.normalization
    config = get_preset("cifar10", args.objective).config(seed=args.seed)
    n = args.steps * config.batch_size
    subset = train.subset(torch.arange(n))
    ids = n  # ID images processed per run (plus as many noise images)
    result = {"model": name, "checkpoint": str(ckpt) if ckpt else "random weights", "steps": args.steps,
              "id_images_per_run": ids, "modes": {}}

    dev = args.device
    # Warm-up for both paths (allocator, oneDNN primitive caches, CUDA context).
    reference_fit(model, subset.images, subset.labels, norm, config, 1, device=dev)
    with PeakRSS() as mem:
        t = time.perf_counter()
        w_ref = reference_fit(model, subset.images, subset.labels, norm, config, args.steps, args.workers, dev)
        sync()
        ref_seconds = time.perf_counter() - t
    ref_ips = ids / ref_seconds
    result["reference"] = {"seconds": ref_seconds, "images_per_second": ref_ips, "peak_extra_mib": mem.extra_mib,
                           "peak_cuda_mib": mem.cuda_peak / 2**20,
                           **detection(model, norm, held_id, held_ood, w_ref, dev)}
    print(f"{name:9s} reference          {ref_ips:7.1f} img/s  {ref_seconds:6.1f}s  "
          f"fpr95 {result['reference']['fpr95']:.4f} auroc {result['reference']['auroc']:.4f}", flush=True)

    # Noise floor: the same reference loop with other conv kernels (oneDNN off on the CPU; on CUDA, deterministic
    # cuDNN algorithms in full fp32 instead of the default TF32, since PyTorch's own CUDA convolutions are far slower). Sign descent amplifies rounding
    # differences, so this is what "the same result" can mean.
    other = (torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True, allow_tf32=False)
             if dev.startswith("cuda") else torch.backends.mkldnn.flags(enabled=False))
    with other:
        w_floor = reference_fit(model, subset.images, subset.labels, norm, config, args.steps, args.workers, dev)
    floor = detection(model, norm, held_id, held_ood, w_floor, dev)
    diff = (w_floor - w_ref).abs()
    result["reference_other_kernels"] = {
        **floor, "watermark_max_abs_diff": float(diff.max()),
        "watermark_fraction_pixels_differing": float((diff > 1e-6).float().mean()),
        "fpr95_diff_points": 100 * (floor["fpr95"] - result["reference"]["fpr95"]),
        "auroc_diff_points": 100 * (floor["auroc"] - result["reference"]["auroc"]),
    }
    print(f"{name:9s} reference, other kernels (noise floor): fpr95 {floor['fpr95']:.4f} auroc {floor['auroc']:.4f}  "
          f"|dw|max {float(diff.max()):.3f} ({100 * float((diff > 1e-6).float().mean()):.1f}% px)", flush=True)

    for mode, execution in modes(dev).items():
        if (mode.endswith("compile") and args.no_compile) or (args.modes and mode not in args.modes):
            continue
        learner_cfg = config.replace(epochs=1)
        warm = time.perf_counter()
        WatermarkLearner(model, norm, learner_cfg.replace(train_limit=config.batch_size), execution).fit(
            subset, progress=False)
        sync()
        warm_seconds = time.perf_counter() - warm
        with PeakRSS() as mem:
            t = time.perf_counter()
            fit = WatermarkLearner(model, norm, learner_cfg, execution).fit(subset, progress=False)
            sync()
            seconds = time.perf_counter() - t
        w = fit.watermark.tensor.cpu()
        diff = (w - w_ref).abs()
        entry = {"seconds": seconds, "images_per_second": ids / seconds, "ratio_to_reference": ref_seconds / seconds,
                 "peak_extra_mib": mem.extra_mib, "peak_cuda_mib": mem.cuda_peak / 2**20,
                 "warmup_seconds": warm_seconds,
                 "watermark_max_abs_diff": float(diff.max()),
                 "watermark_fraction_pixels_differing": float((diff > 1e-6).float().mean()),
                 **detection(model, norm, held_id, held_ood, w, dev)}
        # The paper's full schedule (50 epochs over CIFAR-10's 50,000 images = 19,550 steps) at this speed.
        entry["projected_50_epoch_cifar10_seconds"] = 19550 * seconds / args.steps
        entry["fpr95_diff_points"] = 100 * (entry["fpr95"] - result["reference"]["fpr95"])
        entry["auroc_diff_points"] = 100 * (entry["auroc"] - result["reference"]["auroc"])
        result["modes"][mode] = entry
        print(f"{name:9s} {mode:18s} {entry['images_per_second']:7.1f} img/s  x{entry['ratio_to_reference']:.2f}  "
              f"fpr95 {entry['fpr95']:.4f} auroc {entry['auroc']:.4f}  |dw|max {entry['watermark_max_abs_diff']:.3f} "
              f"({100 * entry['watermark_fraction_pixels_differing']:.1f}% px)  mem +{entry['peak_extra_mib']:.0f} MiB",
              flush=True)

    eval_set = test.subset(torch.arange(min(len(test), args.eval_images)))
    t = time.perf_counter()
    reference_logits(model, eval_set.images, norm, None, device=dev)
    sync()
    ref_eval = len(eval_set) / (time.perf_counter() - t)
    result["evaluation_images_per_second"] = {
        "reference": ref_eval,
        "fast-fp32": time_eval(model, norm, eval_set, ExecutionConfig(device=dev)),
        "fast-bf16": time_eval(model, norm, eval_set, ExecutionConfig(device=dev, precision="bf16")),
    }
    print(f"{name:9s} evaluation img/s: " + ", ".join(f"{k} {v:.0f}" for k, v in
                                                      result["evaluation_images_per_second"].items()), flush=True)
    return result


def full_data_memory(args) -> dict | None:
    """Peak RSS of a separate process fitting a few steps on the whole ID training set."""
    if not args.id_data or args.device != "cpu":
        return None
    code = (
        "import resource; from watermark_ood import *; from watermark_ood.datasets import load_id_data\n"
        f"train, _ = load_id_data({args.id_data!r})\n"
        "m = load_model('resnet20', fallback_classes=10)\n"
        "cfg = get_preset('cifar10', 'msp').config(epochs=1)\n"
        "WatermarkLearner(m.module, m.normalization, cfg, ExecutionConfig(device='cpu')).fit(train, progress=False, "
        "max_steps=5)\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    mib = float(out.stdout.strip().splitlines()[-1])
    print(f"peak RSS fitting on the full ID training set ({args.id_data}): {mib:.0f} MiB", flush=True)
    return {"id_data": args.id_data, "peak_rss_mib": mib}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["resnet20", "resnet56", "wrn40_2"])
    parser.add_argument("--steps", type=int, default=12, help="SAM steps per run (128 ID + 128 noise each)")
    parser.add_argument("--objective", default="msp", choices=["msp", "energy"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=0, help="reference DataLoader workers")
    parser.add_argument("--id-data", help="ID data folder (else random images)")
    parser.add_argument("--ood-data", help="an OOD .npz for the held-out check (else uniform noise)")
    parser.add_argument("--checkpoint-dir", help="folder with resnet20-*.th / resnet56-*.th")
    parser.add_argument("--eval-images", type=int, default=2000)
    parser.add_argument("--held-out", type=int, default=1000)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--modes", nargs="+", help="time only these fast-learner modes (e.g. fast-fp32 fast-bf16)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]: where both loops run [cpu]")
    parser.add_argument("--out", default="benchmarks/results/speed-cpu.json")
    args = parser.parse_args()

    if args.id_data:
        train, test = load_id_data(args.id_data)
    else:
        g = torch.Generator().manual_seed(0)
        train = ImageSet(torch.randint(0, 256, (8192, 3, 32, 32), generator=g, dtype=torch.uint8),
                         torch.randint(0, 10, (8192,), generator=g), "random-train")
        test = ImageSet(torch.randint(0, 256, (2000, 3, 32, 32), generator=g, dtype=torch.uint8),
                        torch.randint(0, 10, (2000,), generator=g), "random-test")
    held_id = test.sample(args.held_out, 1)
    if args.ood_data:
        held_ood = load_npz(args.ood_data).sample(args.held_out, 2)
    else:
        from watermark_ood.data.synthetic import uniform_set

        held_ood = uniform_set(args.held_out, test.image_shape, 2)

    device = (f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
              f"{torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()}")
    if args.device.startswith("cuda"):
        device = f"{args.device}: {torch.cuda.get_device_name(torch.device(args.device))}; host {device}"
    print(f"torch {torch.__version__}, {device}", flush=True)
    report = {
        "device": device,
        "torch": torch.__version__, "command": " ".join(sys.argv), "objective": args.objective,
        "models": [bench_model(m, args, train, test, held_id, held_ood) for m in args.models],
        "full_data_memory": full_data_memory(args),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
