"""Issue 14: why do watermarks hurt Fashion-MNIST (grey objects on black) most? Measure before tuning.

For each watermark given and each set (ID test, every OOD set; 1,000 images each), reports
- where the set's pixels lie in the model's normalized space relative to the Gaussian surrogates N(0, sigma^2)
  the watermark was trained against (share of pixels beyond 2 sigma; mean normalized value),
- the mean logsumexp (negative energy) without and with the watermark, and its change,
- within each OOD set, the correlation between an image's mean brightness and its logsumexp change,
so the question "does w raise the score of dark, flat images more than of ID images?" gets a number;
- pooled over every image of every set, the slope and correlation of the logsumexp change against the logsumexp
  without the watermark (a negative slope: w pulls every score toward one value, the contraction hypothesis),
  and the logsumexp of the watermark alone on the mean image (normalized zeros + w).

    python studies/why_grey_hurts.py --model resnet20 --checkpoint ../shared/models/cifar10_resnet/resnet20-*.th \
        --id-data ../shared/data/cifar10 --ood-data ../shared/data/ood/*.npz \
        --watermark benchmarks/results/detectors/resnet20-bench/watermark-energy.safetensors \
        --out benchmarks/results/why-grey-hurts-resnet20.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from watermark_ood.data.images import ImageSet
from watermark_ood.data.readers import load_id_data, load_ood_data
from watermark_ood.evaluation.metrics import fpr_at_tpr
from watermark_ood.models.registry import load_model
from watermark_ood.runtime.device import ExecutionConfig
from watermark_ood.runtime.inference import predict_logits
from watermark_ood.watermark.file import Watermark


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--id-data", required=True)
    p.add_argument("--ood-data", nargs="+", required=True)
    p.add_argument("--watermark", nargs="+", required=True)
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--out", required=True)
    args = p.parse_args()

    exe = ExecutionConfig(device="cpu")
    _, test = load_id_data(args.id_data)
    model = load_model(args.model, args.checkpoint)
    norm = model.normalization
    sets = [test.sample(args.count, 0)] + [load_ood_data(s, test.image_shape).sample(args.count, 0)
                                           for s in args.ood_data]
    # Flat images (one random grey level each, and one random colour each): no texture at all, to separate
    # "flat" from "dark" as the property the watermark reacts to.
    g = torch.Generator().manual_seed(0)
    grey = torch.randint(0, 256, (args.count, 1, 1, 1), generator=g, dtype=torch.uint8).expand(-1, *test.image_shape)
    colour = torch.randint(0, 256, (args.count, 3, 1, 1), generator=g, dtype=torch.uint8).expand(-1, -1,
                                                                                              *test.image_shape[1:])
    sets += [ImageSet(grey.contiguous(), torch.full((args.count,), -1), "flat-grey"),
             ImageSet(colour.contiguous(), torch.full((args.count,), -1), "flat-colour")]
    report = {"model": model.model_id, "watermarks": {}}
    for path in args.watermark:
        mark = Watermark.load(path, expected_shape=test.image_shape)
        sigma = float(mark.metadata.get("hyperparameters", {}).get("sigma", 1.0))
        rows = {}
        lse_id = None
        pooled: list[tuple[np.ndarray, np.ndarray]] = []
        for s in sets:
            x = norm(s.images)
            lse0 = torch.logsumexp(predict_logits(model.module, s, norm, None, exe), 1).numpy()
            lse1 = torch.logsumexp(predict_logits(model.module, s, norm, mark, exe), 1).numpy()
            brightness = s.images.float().mean(dim=(1, 2, 3)).numpy() / 255
            if lse_id is None:
                lse_id = (lse0, lse1)
            pooled.append((lse0, lse1 - lse0))
            row = {"mean_brightness": float(brightness.mean()),
                   "mean_normalized_value": float(x.mean()),
                   "share_pixels_beyond_2_sigma": float((x.abs() > 2 * sigma).float().mean()),
                   "lse_without": float(lse0.mean()), "lse_with": float(lse1.mean()),
                   "lse_change": float((lse1 - lse0).mean())}
            if s is not sets[0]:
                row["fpr95_without"] = fpr_at_tpr(lse_id[0], lse0)
                row["fpr95_with"] = fpr_at_tpr(lse_id[1], lse1)
                row["corr_brightness_vs_lse_change"] = float(np.corrcoef(brightness, lse1 - lse0)[0, 1])
            rows[s.name] = row
            print(f"{Path(path).parent.name}/{Path(path).name} {s.name:22s} brightness {row['mean_brightness']:.2f} "
                  f"beyond 2 sigma {100 * row['share_pixels_beyond_2_sigma']:5.1f}%  LSE {row['lse_without']:6.2f} -> "
                  f"{row['lse_with']:6.2f} (change {row['lse_change']:+.2f})"
                  + (f"  FPR95 {100 * row['fpr95_without']:.1f} -> {100 * row['fpr95_with']:.1f}, corr(brightness, "
                     f"change) {row['corr_brightness_vs_lse_change']:+.2f}" if "fpr95_with" in row else ""), flush=True)
        before, change = (np.concatenate(parts) for parts in zip(*pooled))
        with torch.no_grad():
            alone = float(torch.logsumexp(model.module(mark.tensor.float()), 1).item())
        contraction = {"slope_change_vs_lse": float(np.polyfit(before, change, 1)[0]),
                       "corr_change_vs_lse": float(np.corrcoef(before, change)[0, 1]),
                       "lse_of_watermark_on_mean_image": alone}
        print(f"{Path(path).parent.name}/{Path(path).name} pooled: change = {contraction['slope_change_vs_lse']:+.3f} x LSE "
              f"+ c (r {contraction['corr_change_vs_lse']:+.2f}); LSE of w on the mean image {alone:.2f}", flush=True)
        report["watermarks"][path] = {"sigma": sigma, "sets": rows, "contraction": contraction,
                                      "max_abs_w": float(mark.tensor.abs().max()),
                                      "hyperparameters": mark.metadata.get("hyperparameters", {})}
    Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
