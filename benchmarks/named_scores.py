"""What the decision benchmarks (``fdr_control.py``, ``stream_monitor.py``) share: one detector fitted on ID
training images by the named-score data policy, and its scores of the ID test images and of every OOD set, computed
once so that hundreds of re-splits or streams cost seconds."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from watermark_ood.data.readers import load_id_data, load_ood_data
from watermark_ood.detection.data_policy import NAMED
from watermark_ood.detection.detector import Detector
from watermark_ood.models.registry import load_model
from watermark_ood.runtime.device import ExecutionConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--id-data", required=True)
    parser.add_argument("--ood-data", nargs="+", required=True)
    parser.add_argument("--score", default="knn", help="the detector [knn]")


@dataclass
class NamedScores:
    model_id: str
    id_test_images: int
    id_scores: np.ndarray  # float64, of the ID test images
    ood_scores: dict[str, np.ndarray]  # by the OOD set's name (its file's stem)


def named_scores(args: argparse.Namespace) -> NamedScores:
    train, test = load_id_data(args.id_data)
    model = load_model(args.model, args.checkpoint)
    fit_split, _ = train.split(NAMED.holdout_fraction, 0)
    detector = Detector(model.module, model.normalization, score=args.score, execution=ExecutionConfig(device="cpu"))
    detector.fit(fit_split)
    ood = {Path(s).stem: detector.scores(load_ood_data(s, test.image_shape)).astype(np.float64) for s in args.ood_data}
    return NamedScores(model.model_id, len(test), detector.scores(test).astype(np.float64), ood)
