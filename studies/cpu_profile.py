"""Where a fast-learner gradient pass spends its time on the CPU (issue: speed: why not 4x on 2 cores).

One pass = forward + input-gradient over 256 images (a SAM step is two). Profiles the library's
prepared model (BN folded, channels-last) under bf16 autocast with torch.profiler and groups the
time into convolutions (oneDNN forward and backward) and everything else.

    python studies/cpu_profile.py --checkpoint-dir ../shared/models/cifar10_resnet --out benchmarks/results/cpu-profile.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from watermark_ood.models.registry import load_model
from watermark_ood.runtime.device import ExecutionConfig, prepare_model
from watermark_ood.watermark.config import get_preset
from watermark_ood.watermark.objectives import objective_loss

CONV_OPS = ("aten::convolution_backward", "aten::mkldnn_convolution")


def profile_model(name: str, checkpoint: str | None, precision: str, passes: int) -> dict:
    torch.manual_seed(0)
    loaded = load_model(name, checkpoint, fallback_classes=10)
    exe = ExecutionConfig(device="cpu", precision=precision)
    module = prepare_model(loaded.module, exe, torch.device("cpu"))
    cfg = get_preset("cifar10", "msp").config()
    x = torch.randn(256, 3, 32, 32)
    y = torch.randint(0, 10, (128,))

    def grad_pass() -> torch.Tensor:
        point = torch.zeros(1, 3, 32, 32, requires_grad=True)
        with exe.autocast(torch.device("cpu")):
            logits = module((x + point).contiguous(memory_format=torch.channels_last))
        return torch.autograd.grad(objective_loss(cfg, logits[:128], y, logits[128:]), point)[0]

    for _ in range(3):
        grad_pass()
    t = time.perf_counter()
    for _ in range(passes):
        grad_pass()
    seconds = (time.perf_counter() - t) / passes
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(passes):
            grad_pass()
    ops = {e.key: e.self_cpu_time_total for e in prof.key_averages()}
    total = sum(ops.values())
    conv = sum(ops.get(k, 0) for k in CONV_OPS)
    top = sorted(ops.items(), key=lambda kv: -kv[1])[:8]
    share = conv / total
    result = {"model": name, "precision": precision, "seconds_per_pass": seconds, "conv_share": share,
              "ceiling_if_everything_else_were_free": 1 / share,
              "top_ops_share": {k: v / total for k, v in top}}
    print(f"{name:9s} {precision}: {seconds * 1e3:.0f} ms per pass; convolutions {100 * share:.0f}% of op time, so "
          f"removing every other cost would give at most x{1 / share:.2f}; top: "
          + ", ".join(f"{k.replace('aten::', '')} {100 * v / total:.0f}%" for k, v in top[:5]), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["resnet20", "resnet56"])
    parser.add_argument("--checkpoint-dir")
    parser.add_argument("--precisions", nargs="+", default=["bf16", "fp32"])
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument("--out", default="benchmarks/results/cpu-profile.json")
    args = parser.parse_args()
    rows = []
    for name in args.models:
        found = sorted(Path(args.checkpoint_dir).glob(f"{name}-*.th")) if args.checkpoint_dir else []
        for precision in args.precisions:
            rows.append(profile_model(name, str(found[0]) if found else None, precision, args.passes))
    Path(args.out).write_text(json.dumps({"command": " ".join(sys.argv), "torch": torch.__version__,
                                          "threads": torch.get_num_threads(), "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
