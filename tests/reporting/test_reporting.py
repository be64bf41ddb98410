import json

import pytest
import torch

from watermark_ood.core.errors import WatermarkOODError
from watermark_ood.data.synthetic import gaussian_set, uniform_set
from watermark_ood.evaluation.protocol import evaluate
from watermark_ood.reporting.plots import plot_histograms, plot_roc, plot_watermark
from watermark_ood.reporting.results import build_run, validate_run, write_results
from watermark_ood.reporting.tables import format_markdown, format_terminal_table
from watermark_ood.runtime.device import ExecutionConfig
from watermark_ood.watermark.file import Watermark


@pytest.fixture
def evaluation(toy_model, toy_test, norm3):
    sets = [gaussian_set(30, (3, 8, 8), 0, name="gaussian"), uniform_set(30, (3, 8, 8), 1, name="uniform")]
    return evaluate(toy_model, norm3, toy_test, sets, Watermark(torch.randn(1, 3, 8, 8) * 0.1),
                    ExecutionConfig(device="cpu"), protocol=False)


def test_results_json_schema(evaluation, tmp_path):
    run = build_run("msp", "msp", {"sigma": 0.4}, evaluation, 1.5, 100.0, model="toy")
    path = write_results(tmp_path / "results.json", [run])
    data = json.loads(path.read_text())
    (r,) = data["runs"]
    assert r["objective"] == "msp" and r["score"] == "msp" and r["hyperparameters"] == {"sigma": 0.4}
    assert set(r["accuracy"]) == {"baseline", "watermarked"}
    for condition in ("baseline", "watermarked"):
        assert set(r[condition]) == {"gaussian", "uniform", "mean"}
        for metrics in r[condition].values():
            assert set(metrics) == {"fpr95", "auroc", "aupr_in", "aupr_out"}
            assert all(0.0 <= v <= 1.0 for v in metrics.values())
    assert r["timing"] == {"fit_seconds": 1.5, "images_per_second": 100.0}
    assert r["model"] == "toy"


def test_schema_violations_are_caught(evaluation):
    run = build_run("msp", "msp", {}, evaluation, 0.0, 0.0)
    broken = dict(run, baseline={"x": {"fpr95": 95.0, "auroc": 0.5, "aupr_in": 0.5, "aupr_out": 0.5}, "mean": {}})
    with pytest.raises(WatermarkOODError):
        validate_run(broken)
    with pytest.raises(WatermarkOODError):
        validate_run({k: v for k, v in run.items() if k != "timing"})


def test_tables_show_percentages_before_and_after(evaluation):
    run = build_run("energy", "energy", {}, evaluation, 0.0, 0.0)
    text = format_terminal_table(run)
    assert "gaussian" in text and "mean" in text and "->" in text
    base = run["baseline"]["mean"]["fpr95"] * 100
    assert f"{base:.2f}" in text
    md = format_markdown([run])
    assert md.count("| gaussian |") == 1 and "| mean |" in md


def test_plots_are_png(evaluation, tmp_path):
    for path in (plot_watermark(torch.randn(1, 3, 8, 8), tmp_path / "w.png"),
                 plot_watermark(torch.randn(1, 1, 8, 8), tmp_path / "w1.png"),
                 plot_histograms(evaluation, "msp", tmp_path / "h.png"),
                 plot_roc(evaluation, "energy", tmp_path / "r.png")):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
