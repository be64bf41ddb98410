"""Our DenseNet-BC-100 definition against the release's architecture file, on the shared weights.

Loads ``densenet_bc100-6f65cb34.pt`` into ``watermark_ood``'s ``densenet_bc100`` and into the third-party
``reference_densenet.py`` kept beside the weights (imported from there, run side by side, never copied), then
compares their logits on the shared CIFAR-10 test copy and reports both accuracies. Writes JSON.

    python studies/densenet_reference_check.py --shared ../shared --limit 2000 --out benchmarks/results/densenet/reference-check.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from watermark_ood.models.registry import load_model, read_state_dict


def reference_model(folder: Path, state: dict) -> torch.nn.Module:
    spec = importlib.util.spec_from_file_location("reference_densenet", folder / "reference_densenet.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.DenseNet3(100, 10)
    model.load_state_dict({**{k: v for k, v in model.state_dict().items() if k.endswith("num_batches_tracked")},
                           **state})
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=Path("../shared"))
    parser.add_argument("--limit", type=int, default=2000, help="every (10000 / limit)-th test image")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    folder = args.shared / "models" / "cifar10_densenet"
    checkpoint = folder / "densenet_bc100-6f65cb34.pt"
    ours = load_model("densenet_bc100", checkpoint)
    theirs = reference_model(folder, read_state_dict(checkpoint))
    data = np.load(args.shared / "data" / "cifar10" / "test.npz")
    step = max(1, len(data["y"]) // args.limit)
    images = torch.from_numpy(data["x"][::step]).permute(0, 3, 1, 2).contiguous()
    labels = torch.from_numpy(data["y"][::step])
    start = time.perf_counter()
    a, b = [], []
    with torch.no_grad():
        for chunk in images.split(250):
            x = ours.normalization(chunk)
            a.append(ours.module(x))
            b.append(theirs(x.clone()))
    a, b = torch.cat(a), torch.cat(b)
    result = {
        "images": len(labels), "checkpoint": checkpoint.name, "machine": platform.processor() or platform.machine(),
        "max_abs_logit_difference": float((a - b).abs().max()),
        "same_predictions": float((a.argmax(1) == b.argmax(1)).float().mean()),
        "accuracy_ours": float((a.argmax(1) == labels).float().mean()),
        "accuracy_reference": float((b.argmax(1) == labels).float().mean()),
        "seconds": round(time.perf_counter() - start, 1),
    }
    print(json.dumps(result, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
