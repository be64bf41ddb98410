"""A stream monitor with a guaranteed false-alarm rate: a conformal test martingale over a detector's scores.

The per-batch shift alarm tests one batch; repeated on a stream it raises false alarms without bound. A conformal
test martingale (Vovk, Nouretdinov & Gammerman, "Testing exchangeability on-line", ICML 2003; Vovk, "Testing
randomness online", Statistical Science 2021; Algorithmic Learning in a Random World, 2nd ed., ch. 8) bets on each
new p-value and raises the alarm when its capital S_n reaches C. While the calibration images and the stream are
exchangeable (ID inputs, as calibration), S is a non-negative martingale with S_0 = 1, and Ville's inequality gives

    P(S_n >= C for some n, ever) <= 1 / C

over an unbounded stream. Two parts make it one:

- **Semi-online smoothed p-values.** The n-th input's score s is ranked among the calibration scores and every
  earlier input's (the bag B): p_n = (#{b in B: b < s} + theta_n (1 + #{b in B: b = s})) / (|B| + 1), theta_n
  uniform on [0, 1]; then s joins B. Under exchangeability these p-values are independent and uniform (ALRW
  Theorem 11.1), which a fixed calibration set alone does not give: its p-values share one calibration draw. Low
  scores (OOD-like) give small p-values. ``crepes.martingales.semi_online_p_values`` computes the same p-values
  with the calibration scores leading the sequence.
- **A jumper over calibrator bets** (the Simple Jumper of ALRW Algorithm 8.1, crepes' ``SimpleJumper``, with
  other betting functions): each account multiplies its capital by f(p_n) for its own calibrator f (f >= 0,
  integral 1 on [0, 1], so every account and their sum stay martingales), and before each bet a share J of the total
  is spread evenly over the accounts, so the capital follows a change at any time. The accounts: f = 1 (keeps the
  capital), f(p) = 1 - a + a k p^(k-1) for a in {0.1, 0.3, 1} and k in {0.1, 0.5} (small p-values: inputs scored
  as less ID than the calibration images; a < 1 bets a part only, which is what wins when a few percent of the
  inputs are OOD), and f(p) = 1 - a + a k (1 - p)^(k-1) for a in {0.3, 1}, k = 0.5 (inputs more ID-like than the
  calibration images: also a change). ALRW's linear bets 1 + e (p - 1/2), e in {-1, 1}, win at most 1.5x per input:
  in a simulation (normal scores, 1,000 calibration scores, 20 streams) they needed a median 322 inputs after a change
  to 20% far-OOD inputs (these bets: 53), and did not find 5% within 4,000 inputs (these: a median 482).

It reports the input at which the alarm fired and the input from which the evidence grew (the one after the
martingale's lowest value before the alarm). Its state (the bag, the accounts, the counters) saves to a file and
resumes, checked against the detector it was started for and against hand edits (a checksum).

    >>> import numpy as np
    >>> monitor = StreamMonitor(np.linspace(0.0, 1.0, 500), alarm=100.0)
    >>> status = monitor.update_many(np.full(60, -1.0))   # every input scores below every calibration image
    >>> status.alarm_at is not None and status.alarm_at < 60, status.direction
    (True, 'lower scores than the calibration images (OOD-like)')
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import save as save_bytes

from watermark_ood.core.errors import WatermarkOODError
from watermark_ood.core.fileio import atomic_write_bytes, read_safetensors
from watermark_ood.core.randomness import derived_seed
from watermark_ood.core.schema import check_float, check_int, fail

FORMAT, FORMAT_VERSION = "watermark-ood-monitor", 1
# the accounts' calibrators (side, a, k): side -1 bets on small p-values, +1 on large ones, 0 keeps the capital
BETS = ((0, 0.0, 1.0), *((-1, a, k) for a in (0.1, 0.3, 1.0) for k in (0.1, 0.5)), (1, 0.3, 0.5), (1, 1.0, 0.5))
JUMP = 0.01  # ALRW's jumping rate
THETA_BLOCK = 4096  # smoothing draws made at a time, from (seed, block): resumable without saving a generator
THETA_TAG = 0x30E1


def calibration_id(scores: np.ndarray) -> str:
    """What ties a monitor to its detector: the sha256 of the detector's calibration scores (float64 bytes)."""
    return hashlib.sha256(np.ascontiguousarray(scores, dtype=np.float64).tobytes()).hexdigest()


def calibrator(side: int, a: float, k: float) -> Callable[[float], float]:
    """f(p) = 1 - a + a k q^(k-1) with q = p (side -1) or 1 - p (side 1); f = 1 for side 0. Integral 1 on [0, 1]."""
    if side == 0:
        return lambda p: 1.0
    power = k - 1.0
    if side < 0:
        return lambda p: 1.0 - a + a * k * p ** power
    return lambda p: 1.0 - a + a * k * (1.0 - p) ** power


def _rewards(weights: list[float], p: float) -> list[float]:
    """Each account's share times its bet f(p), for BETS in order, written out (this runs per input; a test holds
    it equal to :func:`calibrator` of each bet): three powers, then the mixtures 1 - a + a k q^(k-1)."""
    low1, low5, high5 = 0.1 * p ** -0.9, 0.5 * p ** -0.5, 0.5 * (1.0 - p) ** -0.5
    w0, w1, w2, w3, w4, w5, w6, w7, w8 = weights
    return [w0, w1 * (0.9 + 0.1 * low1), w2 * (0.9 + 0.1 * low5), w3 * (0.7 + 0.3 * low1), w4 * (0.7 + 0.3 * low5),
            w5 * low1, w6 * low5, w7 * (0.7 + 0.3 * high5), w8 * high5]


def check_alarm_level(alarm: float) -> float:
    """The threshold C: the false-alarm probability over the whole stream is at most 1/C, so C must exceed 1."""
    return check_float("alarm level C", alarm, low=1.0, low_open=True)


@dataclass
class MonitorStatus:
    """Where the stream stands: inputs seen, the martingale (log10), and the alarm, if it fired."""

    inputs: int
    log10_martingale: float
    alarm_level: float
    alarm_at: int | None  # 0-based index of the input at which S first reached C
    evidence_from: int | None  # 0-based index of the first input after the lowest S before the alarm
    direction: str | None  # which bet holds most of the capital, when the alarm fired

    def message(self) -> str:
        bound = f"false-alarm probability over the whole stream at most 1/C = {1 / self.alarm_level:.3g}"
        if self.alarm_at is None:
            return (f"stream monitor: no alarm after {self.inputs} inputs (martingale 10^{self.log10_martingale:.2f}, "
                    f"alarm at C = {self.alarm_level:g}; {bound})")
        return (f"stream monitor: ALARM at input {self.alarm_at + 1} (martingale reached C = {self.alarm_level:g}; "
                f"{bound}); the evidence grew from input {self.evidence_from + 1} on: {self.direction}")


class StreamMonitor:
    """The conformal test martingale of one calibrated detector; ``update(score)`` per input, in stream order."""

    def __init__(self, calibration_scores: np.ndarray, alarm: float = 100.0, seed: int = 0) -> None:
        calibration = np.sort(np.asarray(calibration_scores, dtype=np.float64))
        if calibration.size == 0 or np.isnan(calibration).any():
            raise WatermarkOODError("a stream monitor needs the detector's calibration scores (none, or NaN, given)")
        self.alarm, self.seed = check_alarm_level(alarm), int(seed)
        self.calibration = calibration_id(calibration)
        self.bag: list[float] = calibration.tolist()
        self.stream: list[float] = []  # the scores added, in arrival order (saved; the bag is rebuilt from them)
        self.weights = [1.0 / len(BETS)] * len(BETS)  # the accounts' shares of the capital
        self.log_s = 0.0  # natural log of the capital S
        self.min_log, self.min_at = 0.0, 0  # lowest log S so far, and the number of inputs seen then
        self.alarm_at: int | None = None
        self.evidence_from: int | None = None
        self._block, self._thetas = -1, []
        self._log_alarm = math.log(self.alarm)

    @property
    def inputs(self) -> int:
        return len(self.stream)

    def _theta(self, index: int) -> float:
        block, offset = divmod(index, THETA_BLOCK)
        if block != self._block:
            thetas = np.random.default_rng(derived_seed(self.seed, THETA_TAG, block)).random(THETA_BLOCK)
            thetas[thetas == 0.0] = 0.5  # (0, 1) open, so that p is never 0 or 1 (an event of chance 2^-53 per draw)
            self._block, self._thetas = block, thetas.tolist()
        return self._thetas[offset]

    def _rank(self, score: float) -> tuple[float, int]:
        """The next input's smoothed p-value against the bag, and where the score goes in it."""
        below, upto = bisect.bisect_left(self.bag, score), bisect.bisect_right(self.bag, score)
        return (below + self._theta(self.inputs) * (1 + upto - below)) / (len(self.bag) + 1), upto

    def p_value(self, score: float) -> float:
        """The next input's smoothed p-value against the bag (without adding it)."""
        return self._rank(score)[0]

    def update(self, score: float) -> float:
        """Add one input's score (higher = more ID; NaN for an unreadable input, which is skipped); returns its
        p-value (NaN when skipped)."""
        score = float(score)
        if math.isnan(score):
            return math.nan
        p, upto = self._rank(score)
        self.bag.insert(upto, score)
        self.stream.append(score)
        rewards = _rewards(self.weights, p)
        total = sum(rewards)
        self.log_s += math.log(total)
        keep, share = (1.0 - JUMP) / total, JUMP / len(rewards)
        self.weights = [r * keep + share for r in rewards]
        if self.alarm_at is None:
            if self.log_s < self.min_log:
                self.min_log, self.min_at = self.log_s, self.inputs
            if self.log_s >= self._log_alarm:
                self.alarm_at, self.evidence_from = self.inputs - 1, self.min_at
        return p

    def update_many(self, scores: Iterable[float]) -> MonitorStatus:
        for score in scores:
            self.update(score)
        return self.status()

    def status(self) -> MonitorStatus:
        direction = None
        if self.alarm_at is not None:
            low = sum(w for w, bet in zip(self.weights, BETS) if bet[0] < 0)
            high = sum(w for w, bet in zip(self.weights, BETS) if bet[0] > 0)
            direction = ("lower scores than the calibration images (OOD-like)" if low >= high else
                         "higher scores than the calibration images (more ID-like than them)")
        return MonitorStatus(self.inputs, self.log_s / math.log(10), self.alarm, self.alarm_at, self.evidence_from,
                             direction)

    # ---------------------------------------------------------------- save / resume
    def _record(self) -> dict[str, Any]:
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "calibration_sha256": self.calibration,
                "alarm": self.alarm, "seed": self.seed, "inputs": self.inputs, "log_martingale": self.log_s,
                "weights": self.weights, "min_log": self.min_log, "min_at": self.min_at, "alarm_at": self.alarm_at,
                "evidence_from": self.evidence_from}

    def save(self, path: str | Path) -> Path:
        """The state as safetensors (the stream's scores) with the counters as JSON metadata and a checksum."""
        stream = torch.tensor(self.stream, dtype=torch.float64)
        record = self._record()
        record["checksum"] = _checksum(record, stream)
        status = asdict(self.status())
        return atomic_write_bytes(Path(path), save_bytes({"stream": stream}, metadata={
            "monitor": json.dumps(record), "status": json.dumps(status)}))

    @classmethod
    def resume(cls, path: str | Path, calibration_scores: np.ndarray) -> "StreamMonitor":
        """A saved monitor for this detector (its calibration scores); refuses another detector's or an edited file."""
        record, stream = _read(Path(path))
        monitor = cls(calibration_scores, record["alarm"], record["seed"])
        if record["calibration_sha256"] != monitor.calibration:
            raise WatermarkOODError(f"{path}: this monitor state was started for another detector (its calibration "
                                    "scores differ); start a new state file for this detector")
        monitor.stream = stream.tolist()
        monitor.bag = sorted(monitor.bag + monitor.stream)
        monitor.weights, monitor.log_s = [float(w) for w in record["weights"]], float(record["log_martingale"])
        monitor.min_log, monitor.min_at = float(record["min_log"]), int(record["min_at"])
        monitor.alarm_at, monitor.evidence_from = record["alarm_at"], record["evidence_from"]
        return monitor


def _checksum(record: dict[str, Any], stream: torch.Tensor) -> str:
    body = json.dumps({k: v for k, v in record.items() if k != "checksum"}, sort_keys=True).encode()
    return hashlib.sha256(body + stream.numpy().tobytes()).hexdigest()


def _read(path: Path) -> tuple[dict[str, Any], torch.Tensor]:
    """The record and stream of a state file, every field checked (one line on the first that is wrong)."""
    if not path.is_file():
        raise WatermarkOODError(f"{path}: monitor state not found")
    try:
        tensors, metadata = read_safetensors(path.read_bytes())
        record = json.loads(metadata["monitor"])
    except (SafetensorError, ValueError, KeyError, TypeError):  # json's decode error is a ValueError
        raise WatermarkOODError(f"{path}: not a watermark-ood monitor state (expected safetensors with a 'monitor' "
                                "record)") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise fail(f"{path}: format", repr(FORMAT), record.get("format") if isinstance(record, dict) else record)
    if record.get("format_version") != FORMAT_VERSION:
        raise fail(f"{path}: format_version", str(FORMAT_VERSION), record.get("format_version"))
    stream = tensors.get("stream")
    if stream is None or stream.dtype != torch.float64 or stream.ndim != 1 or torch.isnan(stream).any():
        raise WatermarkOODError(f"{path}: stream: expected a 1-D float64 tensor of scores without NaN")
    if record.get("checksum") != _checksum(record, stream):
        raise WatermarkOODError(f"{path}: the monitor state does not match its checksum (edited by hand or damaged); "
                                "a monitor's guarantee holds only for the state it computed: start a new state file")
    check_int(f"{path}: inputs", record.get("inputs"), len(stream), len(stream))
    check_alarm_level(record.get("alarm"))
    weights = record.get("weights")
    if not isinstance(weights, list) or len(weights) != len(BETS) or not all(
            isinstance(w, float) and 0.0 <= w <= 1.0 for w in weights):
        raise fail(f"{path}: weights", f"{len(BETS)} account shares in [0, 1]", weights)
    return record, stream
