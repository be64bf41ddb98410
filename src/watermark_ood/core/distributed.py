"""Data parallelism with torch.distributed (launched by ``torchrun``).

The watermark is one small tensor, so each process takes a contiguous shard of
every global batch (and the matching slice of the global batch's surrogate
noise), and the watermark's gradient is all-reduced in both stages of the
sharpness-aware step. Weighting each shard's loss by its share of the global
batch makes the summed gradient equal to the single-process gradient, so N
processes reproduce one process up to floating-point reduction order.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """Only rank 0 writes files and shows progress bars."""
    return rank() == 0


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_environment(device: str = "auto") -> str:
    """Join the process group torchrun describes in the environment; returns this rank's device name.

    NCCL for CUDA, gloo for CPU. A no-op (returning ``device``) outside torchrun.
    """
    if not launched_by_torchrun() or is_distributed():
        return device
    use_cuda = torch.cuda.is_available() and device in ("auto", "cuda") or device.startswith("cuda")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timedelta(minutes=30))
    return f"cuda:{local_rank}" if use_cuda else "cpu"


def shutdown() -> None:
    if is_distributed():
        dist.barrier()
        dist.destroy_process_group()


def shard(index: torch.Tensor) -> tuple[slice, int]:
    """This rank's contiguous slice of a global batch, and the global batch size."""
    total = len(index)
    if not is_distributed():
        return slice(0, total), total
    bounds = torch.linspace(0, total, world_size() + 1).round().long().tolist()
    return slice(bounds[rank()], bounds[rank() + 1]), total


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when any rank says so (all ranks stop together)."""
    if not is_distributed():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def _comm_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def gather_rows(local: torch.Tensor, total: int) -> torch.Tensor:
    """Concatenate every rank's rows in rank order (shards may differ in length by one); result on CPU."""
    if not is_distributed():
        return local
    device = _comm_device()
    sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(world_size())]
    dist.all_gather(sizes, torch.tensor([len(local)], device=device))
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros((longest, *local.shape[1:]), dtype=local.dtype, device=device)
    padded[: len(local)] = local.to(device)
    parts = [torch.zeros_like(padded) for _ in range(world_size())]
    dist.all_gather(parts, padded)
    out = torch.cat([p[: int(s.item())].cpu() for p, s in zip(parts, sizes)])
    if len(out) != total:
        raise RuntimeError(f"gathered {len(out)} rows, expected {total}")
    return out
