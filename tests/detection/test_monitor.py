"""The stream monitor: its p-values and martingale equal a direct computation of their formulas (the semi-online
smoothed p-values and ALRW's Simple Jumper, as crepes writes them), its false-alarm rate stays at most 1/C on
exchangeable streams (and does not when the bag is frozen: what the semi-online p-values are for), it finds a change,
and its state resumes exactly and refuses another detector's or an edited file; `predict --monitor` drives it."""

import json
import math

import numpy as np
import pytest
from scipy.integrate import quad
from conftest import CLI_TOY, calibrated_toy_detector
from safetensors.torch import load_file, save_file

from watermark_ood.cli import main
from watermark_ood.core.errors import WatermarkOODError
from watermark_ood.detection.monitor import BETS, StreamMonitor, _rewards, calibrator


def _direct(calibration: np.ndarray, stream: np.ndarray, thetas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Semi-online p-values (calibration first, ties smoothed) and the jumper's capital, from the formulas."""
    seq = np.concatenate([calibration, stream])
    n = len(calibration)
    p = np.array([((seq[:n + i] < s).sum() + thetas[i] * (1 + (seq[:n + i] == s).sum())) / (n + i + 1)
                  for i, s in enumerate(stream)])
    def bets(q):  # the accounts' calibrators, written out: 1, then 1 - a + a k q^(k-1) (low), then on 1 - q (high)
        low = [1 - a + a * k * q ** (k - 1) for a in (0.1, 0.3, 1.0) for k in (0.1, 0.5)]
        return np.array([1.0, *low, 1 - 0.3 + 0.3 * 0.5 * (1 - q) ** -0.5, 0.5 * (1 - q) ** -0.5])

    accounts, capital = np.full(9, 1 / 9), []
    for value in p:  # crepes' SimpleJumper.apply: bet, record the sum, then spread J of it evenly
        accounts = accounts * bets(value)
        capital.append(accounts.sum())
        accounts = 0.99 * accounts + 0.01 / 9 * accounts.sum()
    return p, np.log10(capital)


def test_p_values_and_martingale_equal_their_formulas_with_ties():
    rng = np.random.default_rng(0)
    calibration = rng.integers(0, 20, 300).astype(float)  # many exact ties, in the bag and between the bag and s
    stream = np.concatenate([rng.integers(0, 20, 200), rng.integers(-5, 8, 300)]).astype(float)
    monitor = StreamMonitor(calibration, alarm=1e6, seed=3)
    thetas = np.array([monitor._theta(i) for i in range(len(stream))])
    ours, log10 = [], []
    for s in stream:
        ours.append(monitor.update(s))
        log10.append(monitor.status().log10_martingale)
    p, expected = _direct(np.sort(calibration), stream, thetas)
    assert np.allclose(ours, p, rtol=0, atol=1e-15)
    assert np.allclose(log10, expected, rtol=1e-12, atol=1e-12)
    assert 0 < min(ours) and max(ours) < 1


def test_every_bet_is_a_calibrator_and_the_written_out_rewards_are_the_bets():
    """f >= 0 with integral 1 on [0, 1] is what keeps each account a martingale (quadrature with the pole's
    algebraic weight: the integral of g(q) q^(k-1))."""
    for side, a, k in BETS:
        f = calibrator(side, a, k)
        if side == 0:
            assert f(0.3) == 1.0
            continue
        q = (lambda x: x) if side < 0 else (lambda x: 1.0 - x)
        smooth = quad(lambda x: f(x) * q(x) ** (1.0 - k) if q(x) > 0 else a * k, 0.0, 1.0, weight="alg",
                      wvar=(k - 1.0, 0.0) if side < 0 else (0.0, k - 1.0))[0]
        assert abs(smooth - 1.0) < 1e-6 and min(f(x) for x in (1e-12, 0.5, 1 - 1e-12)) >= 0, (side, a, k)
    weights = list(np.random.default_rng(0).dirichlet(np.ones(len(BETS))))
    for p in (1e-9, 0.01, 0.3, 0.5, 0.97, 1 - 1e-9):
        assert np.allclose(_rewards(weights, p), [w * calibrator(*bet)(p) for w, bet in zip(weights, BETS)], rtol=1e-12)


def test_false_alarms_stay_under_one_over_c_and_a_frozen_bag_breaks_it():
    """200 exchangeable streams of 2,000 inputs with 50 calibration scores at C = 10: at most 1/C raise the alarm.
    Ranking against the calibration scores alone (the bag frozen) shares one calibration draw across the stream and
    loses the guarantee."""
    rng = np.random.default_rng(1)
    alarms, frozen_alarms = 0, 0
    for repeat in range(200):
        values = rng.normal(size=2050)
        monitor = StreamMonitor(values[:50], alarm=10.0, seed=repeat)
        alarms += monitor.update_many(values[50:]).alarm_at is not None
        frozen = StreamMonitor(values[:50], alarm=10.0, seed=repeat)
        for s in values[50:]:
            frozen.update(s)
            frozen.bag = sorted(values[:50].tolist())  # undo the semi-online step
        frozen_alarms += frozen.status().alarm_at is not None
    assert alarms / 200 <= 0.1 + 3 * math.sqrt(0.1 * 0.9 / 200)
    assert frozen_alarms / 200 > 0.2


def test_a_change_raises_the_alarm_soon_after_it_and_says_where_and_which_way():
    rng = np.random.default_rng(2)
    monitor = StreamMonitor(rng.normal(size=1000), alarm=100.0)
    status = monitor.update_many(np.concatenate([rng.normal(size=3000), rng.normal(-2.0, 1.0, size=1000)]))
    assert status.alarm_at is not None and 3000 <= status.alarm_at < 3100
    assert 2800 <= status.evidence_from <= 3000 and "OOD-like" in status.direction
    assert "ALARM at input" in status.message() and "1/C = 0.01" in status.message()
    easier = StreamMonitor(rng.normal(size=1000), alarm=100.0).update_many(rng.normal(2.0, 0.2, size=500))
    assert easier.alarm_at is not None and "more ID-like" in easier.direction
    quiet = StreamMonitor(rng.normal(size=1000), alarm=100.0)
    assert math.isnan(quiet.update(float("nan"))) and quiet.inputs == 0  # unreadable inputs are skipped


def test_state_resumes_exactly_and_refuses_another_detector_or_an_edit(tmp_path):
    rng = np.random.default_rng(4)
    calibration, stream = rng.normal(size=400), np.concatenate([rng.normal(size=5000), rng.normal(-1.5, 1, 300)])
    whole = StreamMonitor(calibration, alarm=50.0, seed=7)
    whole_p = [whole.update(s) for s in stream]
    first = StreamMonitor(calibration, alarm=50.0, seed=7)
    first_p = [first.update(s) for s in stream[:4500]]  # crosses a block of smoothing draws
    state = first.save(tmp_path / "monitor.safetensors")
    resumed = StreamMonitor.resume(state, calibration)
    assert first_p + [resumed.update(s) for s in stream[4500:]] == whole_p
    assert resumed.status() == whole.status() and resumed.status().alarm_at is not None
    with pytest.raises(WatermarkOODError, match="another detector"):
        StreamMonitor.resume(state, calibration + 1e-9)
    tensors = load_file(str(state))
    with open(state, "rb") as handle:
        data = handle.read()
    header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])["__metadata__"]
    record = json.loads(header["monitor"])
    edited = tmp_path / "edited.safetensors"
    save_file(tensors, str(edited), metadata={**header, "monitor": json.dumps({**record, "alarm": 1e9})})
    with pytest.raises(WatermarkOODError, match="checksum"):
        StreamMonitor.resume(edited, calibration)
    save_file({"stream": tensors["stream"][:-1]}, str(edited), metadata=header)
    with pytest.raises(WatermarkOODError, match="checksum"):
        StreamMonitor.resume(edited, calibration)
    (tmp_path / "junk.safetensors").write_bytes(b"not a state")
    with pytest.raises(WatermarkOODError, match="not a watermark-ood monitor state"):
        StreamMonitor.resume(tmp_path / "junk.safetensors", calibration)
    for level in (1.0, 0.5, float("inf")):
        with pytest.raises(WatermarkOODError, match="alarm level C"):
            StreamMonitor(calibration, alarm=level)


def test_predict_monitor_extends_one_stream_across_calls(tmp_path, capsys):
    common = CLI_TOY
    data, det = calibrated_toy_detector(tmp_path)
    ids = np.load(data / "test.npz")["x"]
    np.savez(tmp_path / "a.npz", x=ids[:20])
    np.savez(tmp_path / "b.npz", x=ids[20:])
    state = tmp_path / "stream.safetensors"
    run = ["predict", *common, "--detector", str(det), "--monitor", str(state)]
    assert main([*run, "--alarm", "20", "--input", str(tmp_path / "a.npz"), "--out", str(tmp_path / "a.json")]) == 0
    assert "stream monitor: no alarm after 20 inputs" in capsys.readouterr().err
    assert main([*run, "--input", str(tmp_path / "b.npz"), "--out", str(tmp_path / "b.json")]) == 0
    assert "no alarm after 30 inputs" in capsys.readouterr().err
    written = json.loads((tmp_path / "b.json").read_text())["monitor"]
    assert written["inputs"] == 30 and written["alarm_level"] == 20.0 and written["alarm_at"] is None
    detector_scores = np.sort(load_file(str(det))["calibration/scores"].numpy())
    again = StreamMonitor(detector_scores, alarm=20.0)
    again.update_many([r["score"] for name in "ab" for r in json.loads((tmp_path / f"{name}.json").read_text())["rows"]])
    assert again.status().log10_martingale == pytest.approx(written["log10_martingale"], rel=1e-9)
    before = state.read_bytes()
    out = tmp_path / "never.json"
    assert main([*run, "--alarm", "50", "--input", str(tmp_path / "b.npz"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "not --alarm 50" in err and len(err.splitlines()) == 1 and not out.exists() and state.read_bytes() == before
    assert main(["predict", *common, "--detector", str(det), "--input", str(tmp_path / "b.npz"), "--out", str(out),
                 "--alarm", "5"]) == 2
    assert "give --monitor STATE" in capsys.readouterr().err and not out.exists()
    noise = np.random.default_rng(0).integers(0, 256, (300, *ids.shape[1:]), dtype=np.uint8)
    np.savez(tmp_path / "noise.npz", x=noise)
    code = main([*run, "--input", str(tmp_path / "noise.npz"), "--out", str(tmp_path / "n.csv")])
    alarmed = StreamMonitor.resume(state, detector_scores).status()
    assert (code == 3) == (alarmed.alarm_at is not None)
