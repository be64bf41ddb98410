"""Scaling benchmark (issue: scale-out): images per second with 1 and N torchrun processes, and the cost of the
watermark all-reduce per step, measured on this machine.

    python benchmarks/scaling.py --nprocs 1 2 --out benchmarks/results/scaling-cpu.json

Each process uses --threads-per-proc threads (default: cores / max(nprocs)), so every run uses the same cores.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

COMM_PROBE = r"""
import os, time, torch, torch.distributed as dist
dist.init_process_group("gloo")
shape = tuple(int(v) for v in os.environ["PROBE_SHAPE"].split(","))
t = torch.randn(shape)
flag = torch.zeros(1)
for _ in range(10):
    dist.all_reduce(t); dist.all_reduce(flag)
dist.barrier()
n = 200
start = time.perf_counter()
for _ in range(n):
    dist.all_reduce(t); dist.all_reduce(t); dist.all_reduce(flag)   # one SAM step: g1, g2 and the stop flag
per_step = (time.perf_counter() - start) / n
if dist.get_rank() == 0:
    print("COMM", per_step)
dist.destroy_process_group()
"""


def torchrun(nproc: int, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)


def make_data(folder: Path, n: int, size: int) -> Path:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", n), ("test", 100)):
        np.savez(folder / f"{split}.npz", x=rng.integers(0, 256, (count, size, size, 3), dtype=np.uint8),
                 y=rng.integers(0, 10, count))
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nprocs", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--steps", type=int, default=20, help="SAM steps of 128 ID + 128 noise images")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--threads-per-proc", type=int, default=None)
    parser.add_argument("--out", default="benchmarks/results/scaling-cpu.json")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    threads = args.threads_per_proc or max(1, cores // max(args.nprocs))
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = make_data(Path(tmp) / "data", args.steps * 128, args.size)
        for nproc in args.nprocs:
            out = Path(tmp) / f"fit-{nproc}"
            t0 = time.perf_counter()
            proc = torchrun(nproc, ["-m", "watermark_ood", "fit", "--model", args.model, "--random-weights",
                                    "--id-data", str(data),
                                    "--epochs", "1", "--device", "cpu", "--threads", str(threads), "--no-progress",
                                    "--checkpoint-every", "100000", "--out", str(out)], env)
            wall = time.perf_counter() - t0
            if proc.returncode != 0:
                raise SystemExit(proc.stderr[-2000:])
            fit_seconds = float(re.search(r"fit ([0-9.]+)s", proc.stdout).group(1))
            ips = args.steps * 128 / fit_seconds
            comm = None
            if nproc > 1:
                probe_env = dict(env, PROBE_SHAPE=f"1,3,{args.size},{args.size}")
                probe = torchrun(nproc, ["--no-python", sys.executable, "-c", COMM_PROBE], probe_env)
                match = re.search(r"COMM ([0-9.e-]+)", probe.stdout)
                comm = float(match.group(1)) if match else None
            rows.append({"nproc": nproc, "threads_per_proc": threads, "fit_seconds": fit_seconds,
                         "wall_seconds_with_startup": wall, "id_images_per_second": ips,
                         "allreduce_seconds_per_step": comm})
            print(f"{nproc} process(es) x {threads} thread(s): {ips:.1f} ID img/s (fit {fit_seconds:.1f}s"
                  + (f", all-reduce {1000 * comm:.2f} ms/step" if comm else "") + ")", flush=True)
    base = rows[0]["fit_seconds"] / args.steps
    report = {"device": f"cpu, {cores} cores", "model": args.model, "steps": args.steps, "image_size": args.size,
              "command": " ".join(sys.argv), "rows": rows, "single_process_step_seconds": base}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
