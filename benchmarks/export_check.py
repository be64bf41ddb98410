"""Issue 13: every exportable detector, exported to ONNX, against the library on real images, and its speed.

For one model: each detector is fitted on 5,000 ID training images (as `calibrate` does), calibrated on a
held-out split, exported (raw [0, 1] images in), and run in onnxruntime on real images (ID test and each OOD
set, 500 each). Reports the largest difference to the library's scores, relative to the score's range
(max |score|), the decision agreement, and onnxruntime CPU throughput (batch 256, intra-op threads = 2) next to
the plain classifier's, exported the same way (``detection_overhead``: how many times slower detection is).

    python benchmarks/export_check.py --model resnet20 --checkpoint ../shared/models/cifar10_resnet/resnet20-*.th \
        --id-data ../shared/data/cifar10 --ood-data ../shared/data/ood/*.npz \
        --out benchmarks/results/detectors/resnet20-export.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from watermark_ood.core.errors import WatermarkOODError
from watermark_ood.data.images import ImageSet
from watermark_ood.data.readers import load_id_data, load_ood_data
from watermark_ood.detection.detector import Detector
from watermark_ood.detection.export import export_onnx
from watermark_ood.detection.registry import SCORE_NAMES
from watermark_ood.models.registry import load_model
from watermark_ood.runtime.device import ExecutionConfig


class _Classifier(torch.nn.Module):
    """The model alone on raw [0, 1] images (normalization inside), as the exported detectors take them."""

    def __init__(self, model) -> None:
        super().__init__()
        self.module = model.module
        self.register_buffer("mean", torch.tensor(model.normalization.mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(model.normalization.std).view(1, -1, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.module((images - self.mean) / self.std)


def classifier_images_per_second(model, x: np.ndarray, path: Path, options) -> float:
    """onnxruntime throughput of the plain classifier, timed like the detectors (batch 256, after one pass)."""
    example = torch.from_numpy(x[:2])
    with torch.no_grad():
        torch.onnx.export(_Classifier(model).eval(), (example,), str(path), input_names=["images"],
                          output_names=["logits"], dynamic_axes={"images": {0: "batch"}}, dynamo=False)
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    session.run(None, {"images": x[:256]})
    t0 = time.perf_counter()
    for i in range(0, len(x), 256):
        session.run(None, {"images": x[i:i + 256]})
    return len(x) / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--id-data", required=True)
    p.add_argument("--ood-data", nargs="+", required=True)
    p.add_argument("--scores", nargs="+", default=list(SCORE_NAMES) + ["knn+vim+energy"])
    p.add_argument("--per-set", type=int, default=500)
    p.add_argument("--out", required=True)
    args = p.parse_args()

    execution = ExecutionConfig(device="cpu")
    train, test = load_id_data(args.id_data)
    model = load_model(args.model, args.checkpoint)
    sets = [test.sample(args.per_set, 0)] + [load_ood_data(s, test.image_shape).sample(args.per_set, 0)
                                             for s in args.ood_data]
    images = ImageSet(torch.cat([s.images for s in sets]), torch.full((sum(map(len, sets)),), -1), "real")
    fit_split, holdout = train.split(0.1, 0)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    results = []
    x = (images.images.float() / 255).numpy()
    with tempfile.TemporaryDirectory() as tmp:
        plain = classifier_images_per_second(model, x, Path(tmp) / "classifier.onnx", options)
        print(f"{'classifier':16s} onnxruntime {plain:.0f} img/s (the model alone: the yardstick of overhead)")
        for name in args.scores:
            row = {"detector": name, "measured": time.strftime("%Y-%m-%d")}
            try:
                detector = Detector(model.module, model.normalization, None, name, execution=execution,
                                    model_id=model.model_id).fit(fit_split).calibrate(holdout.sample(2000, 0))
            except WatermarkOODError as error:  # mcd on a model without dropout
                results.append({**row, "exported": False, "reason": str(error)})
                print(f"{name:16s} not made: {error}", flush=True)
                continue
            try:
                t0 = time.perf_counter()
                path = export_onnx(detector, Path(tmp) / "d.onnx")
                row["export_seconds"] = time.perf_counter() - t0
            except WatermarkOODError as error:
                row["exported"] = False
                row["reason"] = str(error)
                results.append(row)
                print(f"{name:16s} not exported: {error}", flush=True)
                continue
            lib = detector.scores(images)
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            onnx_scores = np.concatenate([session.run(None, {"images": x[i:i + 256]})[1] for i in range(0, len(x), 256)])
            onnx_ood = np.concatenate([session.run(None, {"images": x[i:i + 256]})[2] for i in range(0, len(x), 256)])
            t0 = time.perf_counter()
            for i in range(0, len(x), 256):
                session.run(None, {"images": x[i:i + 256]})
            seconds = time.perf_counter() - t0
            scale = float(np.abs(lib).max())
            diff = np.abs(onnx_scores - lib)
            row.update(exported=True, max_abs_diff=float(diff.max()), score_scale=scale,
                       max_rel_diff_to_scale=float(diff.max() / scale),
                       within_1e4_relative=bool(diff.max() <= 1e-4 * scale),
                       decisions_agree=float(np.mean(onnx_ood == (lib < detector.threshold))),
                       onnx_images_per_second=len(x) / seconds, onnx_bytes=path.stat().st_size,
                       images=len(x), classifier_images_per_second=plain,
                       detection_overhead=plain / (len(x) / seconds))  # > 1: slower than the classifier alone
            results.append(row)
            print(f"{name:16s} max |diff| {row['max_abs_diff']:.2e} (rel. to range {row['max_rel_diff_to_scale']:.1e}) "
                  f"decisions agree {100 * row['decisions_agree']:.2f}%  onnxruntime {row['onnx_images_per_second']:.0f} "
                  "img/s", flush=True)
    previous = json.loads(Path(args.out).read_text()).get("detectors", []) if Path(args.out).is_file() else []
    measured = {row["detector"] for row in results}
    kept = [row for row in previous if row["detector"] not in measured]  # rows of detectors not re-measured now
    order = {name: i for i, name in enumerate([r["detector"] for r in previous] + sorted(measured))}
    out = {"model": model.model_id, "onnxruntime": ort.__version__, "torch": torch.__version__, "threads": 2,
           "classifier_images_per_second": plain,
           "detectors": sorted(kept + results, key=lambda r: order[r["detector"]])}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
