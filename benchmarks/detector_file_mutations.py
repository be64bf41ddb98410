"""Issue 33's target: mutants of real detector files of every kind, and what loading them did.

For each detector kind (every single score, two combinations, two watermarked files) on a real model, a file is
fitted and calibrated, then mutated ``--mutants`` times: one to three JSON fields at once replaced by an object, a
list, a string, a number (-1, 0, 1e308, -1e308, 0.5, 2**63), true, null, NaN or infinity, or deleted; or one
tensor given a NaN, another shape or dtype, dropped or joined by a stray one. Each mutant is loaded with
``Detector.load`` and asked to predict four images. Outcomes: ``refused`` (one-line WatermarkOODError),
``unchanged`` (predictions equal the original's), ``edited`` (loaded, finite scores, decisions that follow its
threshold: a legitimate hand edit such as another threshold), or ``traceback`` (any other exception, a
non-finite score or a warning). The target is 0 tracebacks. Also timed: loading a valid file with the schema
checks and with them switched off (the checks' cost).

    python benchmarks/detector_file_mutations.py --model resnet20 \\
        --checkpoint ../shared/models/cifar10_resnet/resnet20-12fca82f.th --id-data ../shared/data/cifar10 \\
        --mutants 2000 --out benchmarks/results/detector-file-mutations.json
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save as save_bytes

import watermark_ood.detection.detector as detector_module
from watermark_ood.core.errors import WatermarkOODError
from watermark_ood.core.fileio import read_safetensors
from watermark_ood.data.readers import load_id_data
from watermark_ood.detection.detector import Detector
from watermark_ood.detection.registry import SCORE_NAMES
from watermark_ood.models.registry import load_model
from watermark_ood.runtime.device import ExecutionConfig
from watermark_ood.watermark.file import Watermark

DELETE = "<delete>"
VALUES = [{}, [], "x", -1, 0, 1e308, -1e308, 0.5, 2 ** 63, True, None, float("nan"), float("inf"), DELETE]
KINDS = [*SCORE_NAMES, "knn+vim+energy", "pnml+knn+vim", "watermarked-energy", "watermarked-knn"]


def paths(value, prefix=()):
    if prefix:
        yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from paths(item, (*prefix, key))
    elif isinstance(value, list):
        for i, item in enumerate(value[:3]):
            yield from paths(item, (*prefix, i))


def set_path(meta, path, value):
    target = meta
    for key in path[:-1]:
        target = target[key]
    if value == DELETE and isinstance(value, str):
        del target[path[-1]]
    else:
        target[path[-1]] = value


def mutant(tensors, meta, rng: random.Random):
    tensors, meta = dict(tensors), copy.deepcopy(meta)
    if rng.random() < 0.2:
        name = rng.choice(sorted(tensors))
        change = rng.choice(["nan", "shape", "dtype", "drop", "extra"])
        t = tensors[name]
        if change == "nan":
            flat = t.clone().flatten()
            flat[rng.randrange(len(flat))] = float("nan")
            tensors[name] = flat.view(t.shape)
        elif change == "shape":
            tensors[name] = torch.zeros(t.numel() + 1)
        elif change == "dtype":
            tensors[name] = t.to(torch.int64)
        elif change == "drop":
            del tensors[name]
        else:
            tensors[name + ".extra"] = torch.zeros(2)
        return tensors, meta
    for _ in range(rng.randint(1, 3)):
        options = list(paths(meta))
        if not options:
            break
        try:
            set_path(meta, rng.choice(options), rng.choice(VALUES))
        except (KeyError, IndexError, TypeError):
            pass  # an earlier mutation of this draw removed the path
    return tensors, meta


def classify(model, tensors, meta, original, images, folder: Path) -> str:
    path = folder / "mutant.safetensors"
    path.write_bytes(save_bytes(tensors, metadata={"detector": json.dumps(meta)}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            result = Detector.load(path, model, ExecutionConfig(device="cpu")).predict(images)
        except WatermarkOODError as error:
            return "refused" if "\n" not in str(error) else "traceback"
        except Exception:  # noqa: BLE001 - exactly what this benchmark counts
            return "traceback"
    if not np.isfinite(result.scores).all() or not np.array_equal(result.is_ood, result.scores < meta["threshold"]):
        return "traceback"
    same = np.array_equal(result.scores, original.scores) and np.array_equal(result.is_ood, original.is_ood)
    return "unchanged" if same else "edited"


def load_seconds(path: Path, model, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        Detector.load(path, model)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet20")
    p.add_argument("--checkpoint")
    p.add_argument("--id-data", required=True)
    p.add_argument("--mutants", type=int, default=2000)
    p.add_argument("--fit-images", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    torch.manual_seed(args.seed)
    train, test = load_id_data(args.id_data)
    model = load_model(args.model, args.checkpoint)
    images = test.images[:4]
    mark = Watermark(torch.randn(1, *test.image_shape) * 0.02, {"objective": "energy", "preset": "benchmark"})
    report = {"command": "python benchmarks/detector_file_mutations.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None), "kinds": {}}
    fit, holdout = train.split(0.1, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for kind in KINDS:
            score, watermark = (kind.split("-", 1)[1], mark) if kind.startswith("watermarked") else (kind, None)
            detector = Detector(model.module, model.normalization, watermark, score, model_id=model.model_id)
            detector.fit(fit, limit=args.fit_images).calibrate(holdout.sample(1000, args.seed))
            path = detector.save(folder / f"{kind}.safetensors")
            tensors, header = read_safetensors(path.read_bytes())
            meta = json.loads(header["detector"])
            original = Detector.load(path, model.module).predict(images)
            rng = random.Random(f"{args.seed}-{kind}")
            counts = {"refused": 0, "unchanged": 0, "edited": 0, "traceback": 0}
            t0 = time.perf_counter()
            for _ in range(args.mutants):
                counts[classify(model.module, *mutant(tensors, meta, rng), original, images, folder)] += 1
            checked = load_seconds(path, model.module, 30)
            saved = detector_module.check_metadata, detector_module.check_score_state
            detector_module.check_metadata = lambda meta, tensors: detector_module.Normalization(
                tuple(meta["normalization"]["mean"]), tuple(meta["normalization"]["std"]))
            detector_module.check_score_state = lambda *a: None
            unchecked = load_seconds(path, model.module, 30)
            detector_module.check_metadata, detector_module.check_score_state = saved
            report["kinds"][kind] = {**counts, "mutants": args.mutants, "seconds": time.perf_counter() - t0,
                                     "load_ms_checked": 1000 * checked, "load_ms_unchecked": 1000 * unchecked}
            print(kind, report["kinds"][kind], flush=True)
    report["tracebacks"] = sum(k["traceback"] for k in report["kinds"].values())
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(f"tracebacks: {report['tracebacks']} over {args.mutants * len(KINDS)} mutants; wrote {args.out}")


if __name__ == "__main__":
    main()
