"""The stream monitor of ``predict --monitor``, measured: its false-alarm rate on ID streams against its bound 1/C, how
many inputs it needs to raise the alarm after a stream starts to carry OOD inputs, and the cost of one update.

The detector is fitted once on ID training images (the named-score data policy) and scores the ID test images and
every OOD set once. Each ID stream then draws a calibration set and 20,000 inputs i.i.d. from the ID test scores
(with replacement: calibration and stream are exactly exchangeable, the assumption of the guarantee, with the real
scores' distribution and ties); each changed stream is ID up to input 5,000, then each input is OOD with probability
5% or 20% (one OOD set). An alarm before the change counts as a false alarm; the delay is the alarm's input minus
5,000 (streams that never alarm are counted, not given a delay).

    python benchmarks/stream_monitor.py --model resnet20 \
        --checkpoint ../shared/models/cifar10_resnet/resnet20-12fca82f.th --id-data ../shared/data/cifar10 \
        --ood-data ../shared/data/ood/*.npz --out benchmarks/results/monitor/resnet20.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from named_scores import add_arguments, named_scores

from watermark_ood.detection.monitor import StreamMonitor

CHANGE_AT = 5000


def run_stream(calibration: np.ndarray, stream: np.ndarray, alarm: float, seed: int) -> tuple[int | None, float]:
    """The alarm's input (None if it never fired) and the seconds spent in updates."""
    monitor = StreamMonitor(calibration, alarm, seed)
    t0 = time.perf_counter()
    for start in range(0, len(stream), 500):  # stop at the alarm, as a service would
        status = monitor.update_many(stream[start:start + 500].tolist())
        if status.alarm_at is not None:
            break
    return monitor.status().alarm_at, time.perf_counter() - t0


def id_streams(id_scores: np.ndarray, args: argparse.Namespace) -> dict[str, float]:
    rng = np.random.default_rng(0)
    alarms, seconds, updates = 0, 0.0, 0
    for repeat in range(args.streams):
        draw = rng.choice(id_scores, args.calibration + args.length, replace=True)
        at, spent = run_stream(draw[:args.calibration], draw[args.calibration:], args.alarm, repeat)
        alarms += at is not None
        seconds += spent
        updates += args.length if at is None else at + 1
    rate = alarms / args.streams
    return {"streams": args.streams, "length": args.length, "false_alarms": alarms, "false_alarm_rate": rate,
            "bound": 1 / args.alarm, "within_bound": bool(rate <= 1 / args.alarm + 2 * np.sqrt(
                (1 / args.alarm) * (1 - 1 / args.alarm) / args.streams)),
            "microseconds_per_update": 1e6 * seconds / updates}


def changed_streams(id_scores: np.ndarray, ood_scores: np.ndarray, share: float,
                    args: argparse.Namespace) -> dict[str, float]:
    rng = np.random.default_rng(1)
    delays, early, never = [], 0, 0
    for repeat in range(args.streams):
        calibration = rng.choice(id_scores, args.calibration, replace=True)
        stream = rng.choice(id_scores, args.length, replace=True)
        after = np.arange(args.length) >= CHANGE_AT
        ood = after & (rng.random(args.length) < share)
        stream[ood] = rng.choice(ood_scores, int(ood.sum()), replace=True)
        at, _ = run_stream(calibration, stream, args.alarm, 10_000 + repeat)
        if at is None:
            never += 1
        elif at < CHANGE_AT:
            early += 1
        else:
            delays.append(at - CHANGE_AT + 1)
    return {"ood_share": share, "streams": args.streams, "alarm_before_change": early, "never": never,
            "median_delay": float(np.median(delays)) if delays else None,
            "p90_delay": float(np.percentile(delays, 90)) if delays else None}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.add_argument("--streams", type=int, default=200)
    p.add_argument("--length", type=int, default=20000, help="inputs per stream [20000]")
    p.add_argument("--calibration", type=int, default=2000, help="calibration scores per stream [2000]")
    p.add_argument("--alarm", type=float, default=100.0, help="the alarm level C [100]")
    p.add_argument("--shares", type=float, nargs="+", default=[0.05, 0.2])
    p.add_argument("--out", required=True)
    args = p.parse_args()
    t0 = time.perf_counter()
    scored = named_scores(args)
    id_scores = scored.id_scores
    ood = scored.ood_scores
    print(f"scores ready in {time.perf_counter() - t0:.0f}s", flush=True)
    quiet = id_streams(id_scores, args)
    print(f"ID streams: {quiet['false_alarms']} of {quiet['streams']} raised the alarm (bound 1/C = {quiet['bound']:g}); "
          f"{quiet['microseconds_per_update']:.2f} us per update", flush=True)
    changed = []
    for name, scores in ood.items():
        for share in args.shares:
            row = {"ood_set": name, **changed_streams(id_scores, scores, share, args)}
            changed.append(row)
            print(f"{name:22s} {100 * share:4.0f}% OOD after input {CHANGE_AT}: median delay {row['median_delay']} "
                  f"inputs (p90 {row['p90_delay']}), never {row['never']}, before the change {row['alarm_before_change']}",
                  flush=True)
    out = {"model": scored.model_id, "score": args.score, "alarm": args.alarm, "calibration": args.calibration,
           "change_at": CHANGE_AT, "machine": platform.processor() or platform.machine(),
           "id_test_images": scored.id_test_images, "id_streams": quiet, "changed_streams": changed,
           "seconds": time.perf_counter() - t0}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
