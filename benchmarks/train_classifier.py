"""Train a CIFAR classifier by the Outlier-Exposure baseline recipe (issue 14 item 5; a third model for issue 13).

The paper's WRN-40-2 checkpoint cannot be obtained here, so this trains the closest thing on ../shared's
CIFAR-10 copy: Hendrycks et al.'s baseline recipe (SGD, Nesterov momentum 0.9, lr 0.1 with per-step cosine decay,
weight decay 5e-4, batch 128, dropout 0.3 inside the WRN blocks, random crop with 4 pixels of zero padding and
horizontal flips, CIFAR normalization), 100 epochs by default. The whole training set lives on the device as uint8
and is augmented there batch by batch, so a GPU is never waiting on a data loader.

Writes the weights as safetensors (load with ``--model wrn40_2 --checkpoint FILE``) and a JSON beside them with
the command, the sha256 of the weights, test accuracy and wall time. Commit the JSON, not the weights.

    python benchmarks/train_classifier.py --model wrn40_2 --id-data ../shared/data/cifar10 \\
        --device cuda --precision bf16 --out ~/wood-runs/wrn40_2-oe/wrn40_2.safetensors
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from watermark_ood.data.readers import load_id_data
from watermark_ood.evaluation.metrics import accuracy
from watermark_ood.models.registry import build_model
from watermark_ood.runtime.device import ExecutionConfig
from watermark_ood.runtime.inference import predict_logits


def augment(pixels: torch.Tensor, rng: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop of the zero-padded images (torchvision's RandomCrop(padding=4)) and a random flip, on uint8."""
    n, _, h, w = pixels.shape
    padded = F.pad(pixels, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n, 1), generator=rng, device=pixels.device)
    dx = torch.randint(0, 2 * pad + 1, (n, 1), generator=rng, device=pixels.device)
    rows = (dy + torch.arange(h, device=pixels.device)).view(n, 1, h, 1)
    cols = (dx + torch.arange(w, device=pixels.device)).view(n, 1, 1, w)
    out = padded.gather(2, rows.expand(n, padded.shape[1], h, padded.shape[3]))
    out = out.gather(3, cols.expand(n, padded.shape[1], h, w))
    flip = torch.rand(n, generator=rng, device=pixels.device) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), out.flip(3), out)


def save_resume(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, rng: torch.Generator,
                epochs_done: int, seconds: float) -> None:
    """Weights, momentum buffers, the augmentation RNG and the epoch count after each epoch: a killed run resumes
    where it stopped (safetensors, written beside the weights and replaced atomically; nothing is unpickled)."""
    from safetensors.torch import save_file

    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    for i, p in enumerate(optimizer.param_groups[0]["params"]):
        tensors[f"momentum.{i}"] = optimizer.state[p]["momentum_buffer"].detach().cpu().contiguous()
    tensors["rng"] = rng.get_state()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    save_file(tensors, str(partial), metadata={"epochs_done": str(epochs_done), "seconds": f"{seconds:.3f}"})
    partial.replace(path)


def load_resume(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                rng: torch.Generator) -> tuple[int, float]:
    """Restore what :func:`save_resume` wrote; returns (epochs done, seconds spent)."""
    from safetensors import safe_open

    device = next(model.parameters()).device
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        model.load_state_dict({k[len("model."):]: f.get_tensor(k).to(device) for k in f.keys()
                               if k.startswith("model.")})
        for i, p in enumerate(optimizer.param_groups[0]["params"]):
            optimizer.state[p]["momentum_buffer"] = f.get_tensor(f"momentum.{i}").to(device)
        rng.set_state(f.get_tensor("rng"))
    return int(meta["epochs_done"]), float(meta["seconds"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="wrn40_2")
    p.add_argument("--id-data", required=True)
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="bf16 autocast (GPUs)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (GPU runs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stop-after", type=int, help="leave after this many epochs (resume later with the same command)")
    p.add_argument("--out", required=True, help="weights file (.safetensors), outside the checkout")
    p.add_argument("--record", help="JSON record [beside --out]")
    args = p.parse_args()

    from safetensors.torch import save_file

    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    train, test = load_id_data(args.id_data)
    model, normalization = build_model(args.model, int(train.labels.max()) + 1, train.image_shape[0])
    model = model.to(device).to(memory_format=torch.channels_last)
    step_model = torch.compile(model) if args.compile else model
    images, labels = train.images.to(device), train.labels.to(device)
    steps_per_epoch = math.ceil(len(train) / args.batch_size)
    total = args.epochs * steps_per_epoch
    optimizer = torch.optim.SGD(model.parameters(), args.lr, momentum=0.9, nesterov=True,
                                weight_decay=args.weight_decay)
    # The OE baseline's LambdaLR: cosine from lr to ~0 over every step.
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / total)))
    rng = torch.Generator(device).manual_seed(args.seed)
    autocast = torch.autocast(device.type, torch.bfloat16, enabled=args.precision == "bf16")
    out = Path(args.out).expanduser()
    resume = out.with_suffix(".resume.safetensors")
    start, spent = load_resume(resume, model, optimizer, rng) if resume.exists() else (0, 0.0)
    if start:
        schedule.last_epoch = start * steps_per_epoch - 1
        schedule.step()
        print(f"resuming after epoch {start} ({resume})", flush=True)
    t0 = time.perf_counter() - spent
    for epoch in range(start, args.epochs):
        model.train()
        order = torch.randperm(len(train), generator=rng, device=device)
        running = torch.zeros((), device=device)
        for step in range(steps_per_epoch):
            index = order[step * args.batch_size: (step + 1) * args.batch_size]
            x = normalization(augment(images[index], rng)).contiguous(memory_format=torch.channels_last)
            with autocast:
                loss = F.cross_entropy(step_model(x), labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            running += loss.detach()
        print(f"epoch {epoch + 1}/{args.epochs}: loss {float(running) / steps_per_epoch:.4f}, "
              f"{time.perf_counter() - t0:.0f}s", flush=True)
        save_resume(resume, model, optimizer, rng, epoch + 1, time.perf_counter() - t0)
        if args.stop_after is not None and epoch + 1 >= args.stop_after and epoch + 1 < args.epochs:
            print(f"stopping after epoch {epoch + 1}; run the same command to resume", flush=True)
            return
    seconds = time.perf_counter() - t0
    model.eval()
    test_accuracy = accuracy(predict_logits(model, test, normalization, None, ExecutionConfig(device=args.device)),
                             test.labels)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(out))
    record = {"model": args.model, "command": " ".join([Path(sys.executable).name, *sys.argv]),
              "weights": out.name, "sha256": hashlib.sha256(out.read_bytes()).hexdigest(),
              "test_accuracy": test_accuracy, "train_seconds": seconds, "epochs": args.epochs,
              "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "threads": torch.get_num_threads(), "precision": args.precision}
    Path(args.record or out.with_suffix(".json")).write_text(json.dumps(record, indent=1))
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
