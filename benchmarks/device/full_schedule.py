"""Time the paper's full schedule (50 epochs over CIFAR-10's training split) for one model on a GPU.

Writes one JSON line per epoch to OUT (so a run cut short still reports its pace) and a summary line at
the end. Random weights are fine for timing (no WRN-40-2 checkpoint is available offline):

    python benchmarks/device/full_schedule.py --model wrn40_2 --id-data /tmp/shared/data/cifar10 \
        --precision bf16 --cuda-graphs --out $OUT/wrn40_2-50ep.jsonl
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from watermark_ood.data.readers import load_id_data
from watermark_ood.models.registry import load_model
from watermark_ood.runtime.device import ExecutionConfig
from watermark_ood.watermark.config import get_preset
from watermark_ood.watermark.learner import WatermarkLearner


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="wrn40_2")
    parser.add_argument("--checkpoint")
    parser.add_argument("--id-data", required=True)
    parser.add_argument("--objective", default="msp", choices=["msp", "energy"])
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--cuda-graphs", action="store_true")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    torch.manual_seed(0)
    model = load_model(args.model, args.checkpoint, fallback_classes=10)
    train, _ = load_id_data(args.id_data)
    config = get_preset("cifar10", args.objective).config(epochs=args.epochs, seed=0)
    execution = ExecutionConfig(device=args.device, precision=args.precision, cuda_graphs=args.cuda_graphs)
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    log = open(args.out, "a")
    start = time.perf_counter()

    def on_epoch(record, _w) -> None:
        line = {"epoch": record.epoch, "epoch_seconds": record.seconds, "elapsed": time.perf_counter() - start,
                "loss": record.loss, "max_abs_w": record.max_abs}
        log.write(json.dumps(line) + "\n")
        log.flush()
        print(line, flush=True)

    result = WatermarkLearner(model.module, model.normalization, config, execution).fit(
        train, callback=on_epoch, progress=False)
    summary = {"model": args.model, "weights": args.checkpoint or "random", "device": name,
               "precision": args.precision, "cuda_graphs": args.cuda_graphs, "epochs": args.epochs,
               "id_images": len(train), "fit_seconds": result.fit_seconds,
               "images_per_second": result.images_per_second, "torch": torch.__version__}
    log.write(json.dumps({"summary": summary}) + "\n")
    print(summary, flush=True)


if __name__ == "__main__":
    main()
