import json
import subprocess
import sys

import pytest
import torch
from conftest import TINY_NET, write_npz_dataset

from watermark_ood.cli import main
from watermark_ood.watermark.file import Watermark

FAST = ["--model", "small_cnn", "--random-weights", "--epochs", "2", "--batch-size", "16", "--device", "cpu", "--no-progress"]


@pytest.fixture
def data(tmp_path):
    root = write_npz_dataset(tmp_path / "toy", n_train=48, n_test=30)
    import numpy as np

    np.savez(tmp_path / "noise.npz", x=np.random.default_rng(0).integers(0, 256, (40, 8, 8, 3), dtype=np.uint8))
    return root, tmp_path / "noise.npz"


def test_help_explains_commands(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for command in ("demo", "fit", "evaluate", "bench", "calibrate", "predict", "export"):
        assert f"    {command} " in text or f"    {command}\n" in text  # each command is listed with its help


def test_fit_then_evaluate(data, tmp_path, capsys):
    id_data, noise = data
    out = tmp_path / "fit"
    assert main(["fit", *FAST, "--id-data", str(id_data), "--objective", "energy", "--out", str(out)]) == 0
    for name in ("watermark.safetensors", "watermark.json", "history.json", "watermark.png", "checkpoint.safetensors"):
        assert (out / name).is_file(), name
    w = Watermark.load(out / "watermark.safetensors")
    assert w.metadata["objective"] == "energy" and w.metadata["hyperparameters"]["sigma"] == 1.5
    assert len(json.loads((out / "history.json").read_text())) == 2
    # Running the same command again resumes from the finished checkpoint: same watermark, no new work.
    assert main(["fit", *FAST, "--id-data", str(id_data), "--objective", "energy", "--out", str(out)]) == 0
    assert torch.equal(Watermark.load(out / "watermark.safetensors").tensor, w.tensor)

    ev = tmp_path / "eval"
    assert main(["evaluate", "--model", "small_cnn", "--random-weights", "--device", "cpu", "--no-progress",
                 "--watermark", str(out / "watermark.safetensors"), "--id-data", str(id_data),
                 "--ood-data", str(noise), "synthetic:uniform", "--out", str(ev)]) == 0
    results = json.loads((ev / "results.json").read_text())
    run = results["runs"][0]
    assert run["score"] == "energy" and set(run["baseline"]) == {"noise", "uniform", "mean"}
    assert (ev / "report.md").is_file() and (ev / "roc-energy.png").is_file()
    assert "noise" in capsys.readouterr().out


def test_bench_runs_both_objectives_and_resumes(data, tmp_path):
    id_data, noise = data
    out = tmp_path / "bench"
    args = ["bench", *FAST, "--id-data", str(id_data), "--ood-data", str(noise), "synthetic:gaussian",
            "--out", str(out)]
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert [r["objective"] for r in results["runs"]] == ["msp", "energy"]
    assert all(r["hyperparameters"]["epochs"] == 2 for r in results["runs"])
    for run in results["runs"]:  # where and how it ran, for comparing timings across machines
        assert run["device"] == "cpu" and "CPU" in run["device_name"]
        assert run["execution"]["precision"] == "fp32" and run["execution"]["cuda_graphs"] is True
    for objective in ("msp", "energy"):
        for name in (f"watermark-{objective}.safetensors", f"hist-{objective}.png", f"roc-{objective}.png"):
            assert (out / name).is_file()
    assert "| mean |" in (out / "report.md").read_text()
    before = (out / "runs" / "msp.json").read_text()
    assert main(args) == 0  # finished objectives are reused, not refitted
    assert (out / "runs" / "msp.json").read_text() == before
    assert json.loads((out / "results.json").read_text())["runs"] == results["runs"]


@pytest.mark.parametrize("extra, message", [
    (["--preset", "imagenet"], "unknown preset"),
    (["--epochs", "0"], "epochs"),
    (["--objective", "energy", "--t-in", "1e6", "--t-out", "1e6"], "loss became"),
])
def test_bad_fit_settings_exit_2_with_one_line(data, tmp_path, capsys, extra, message):
    id_data, _ = data
    out = tmp_path / "never"
    code = main(["fit", *FAST, "--id-data", str(id_data), "--out", str(out), *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1
    assert not (out / "watermark.safetensors").exists()


@pytest.mark.parametrize("value", ["-1", "nan", "inf"])
def test_a_bad_auto_tolerance_exits_2_before_any_work(data, tmp_path, capsys, value):
    id_data, noise = data
    out = tmp_path / "never"
    code = main(["bench", *FAST, "--id-data", str(id_data), "--ood-data", str(noise), "--preset", "auto",
                 "--auto-tolerance", value, "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--auto-tolerance" in err and len(err.splitlines()) == 1
    assert not (out / "results.json").exists()


def test_missing_inputs_leave_nothing_behind(data, tmp_path, capsys):
    id_data, noise = data
    out = tmp_path / "out"
    assert main(["fit", *FAST, "--id-data", str(tmp_path / "nope"), "--out", str(out)]) == 2
    assert "nope" in capsys.readouterr().err and not out.exists()
    assert main(["bench", *FAST, "--id-data", str(id_data), "--ood-data", str(tmp_path / "gone.npz"),
                 "--out", str(out)]) == 2
    assert "gone.npz" in capsys.readouterr().err and not out.exists()


def test_wrong_shape_watermark_is_refused(data, tmp_path, capsys):
    id_data, noise = data
    Watermark(torch.zeros(1, 3, 32, 32)).save(tmp_path / "w32.safetensors")
    code = main(["evaluate", "--model", "small_cnn", "--random-weights", "--device", "cpu", "--watermark", str(tmp_path / "w32.safetensors"),
                 "--id-data", str(id_data), "--ood-data", str(noise), "--out", str(tmp_path / "e")])
    assert code == 2 and "shape" in capsys.readouterr().err


def test_subprocess_error_is_one_line_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "watermark_ood", "evaluate", "--model", "resnet20", "--random-weights",
                           "--watermark", str(tmp_path / "missing.safetensors"), "--id-data", str(tmp_path),
                           "--ood-data", "synthetic:gaussian", "--out", str(tmp_path / "o")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_demo_end_to_end(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--epochs", "2", "--no-progress", "--device", "cpu"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert [r["objective"] for r in results["runs"]] == ["msp", "energy"]
    run = results["runs"][0]
    assert set(run["baseline"]) == {"digits6-9", "photo-patches", "gaussian-noise", "uniform-noise", "mean"}
    assert run["accuracy"]["baseline"] > 0.9  # the demo classifier really learned the digits
    for name in ("report.md", "watermark-msp.png", "hist-energy.png", "roc-msp.png", "watermark-energy.safetensors",
                 "detector.safetensors", "leaderboard.md", "leaderboard.png", "detector.md"):
        assert (out / name).is_file(), name
    shipped = results["shipped_detector"]
    report = (out / "report.md").read_text()
    assert report.index("## What to ship") < report.index("objective=msp")  # the report starts with what to do
    assert f"`{shipped['score']}` detector" in report
    assert 0 <= shipped["real"]["mean"]["fpr95"] <= 1
    assert "from every detector" not in report and "from its default pool" in report
    board = [line.split(" | ") for line in (out / "leaderboard.md").read_text().splitlines()
             if line.startswith("| ") and line[2].isdigit() and "shipped file" not in line]
    rows = [(frozenset(cells[1].split("+")), cells[2]) for cells in board]
    assert len(rows) == len(set(rows))  # a combination is one row, whatever order its parts were ranked in


def test_help_leads_with_the_detector_and_lists_only_options_that_apply(capsys):
    """The top-level help starts from shipping a detector (calibrate, predict, export); predict and export do not
    list the watermark's step options, which stay accepted; every option has a help text."""
    from watermark_ood.cli import build_parser

    parser = build_parser()
    top = parser.format_help()
    assert top.index("calibrate --score auto") < top.index("watermark-ood fit")
    assert "mynet.py:MyNet" in top
    commands = parser._subparsers._group_actions[0].choices
    for name in ("predict", "export"):
        text = commands[name].format_help()
        assert "--compile" not in text and "--cuda-graphs" not in text and "forward/backward" not in text
    assert "--eval-batch-size" not in commands["export"].format_help()
    assert "forward/backward" in commands["fit"].format_help() and "--compile" in commands["fit"].format_help()
    for name, command in commands.items():
        for action in command._actions:
            assert action.help, f"{name} {action.option_strings} has no help"
    assert "auto (recommended)" in " ".join(commands["calibrate"].format_help().split())
    args = parser.parse_args(["predict", "--model", "m", "--detector", "d", "--input", "i", "--out", "o",
                              "--compile", "--no-cuda-graphs"])  # hidden, still accepted
    assert args.compile and not args.cuda_graphs


def test_history_caption_gives_the_range_of_this_runs_ood_term():
    from watermark_ood.pipelines.demo import history_caption

    caption = history_caption("energy", "energy", [None, 3.4e11, 2e13, 8.9e14])
    assert "spans 3.4e+11 to 8.9e+14 here" in caption
    assert history_caption("msp", "msp", [1e15]) == "msp training history"


def test_cuda_graphs_are_the_default_and_can_be_switched_off():
    from watermark_ood.cli import build_parser
    from watermark_ood.cli.commands import execution as _execution
    from watermark_ood.runtime.device import ExecutionConfig

    assert ExecutionConfig().cuda_graphs
    args = build_parser().parse_args(["fit", "--model", "small_cnn", "--id-data", "x", "--out", "o", "--no-cuda-graphs"])
    assert not _execution(args).cuda_graphs


def test_debug_is_accepted_after_the_command(data, tmp_path):
    id_data, _ = data
    from watermark_ood.core.errors import WatermarkOODError

    with pytest.raises(WatermarkOODError, match="ID data not found"):  # --debug raises instead of the one line
        main(["fit", *FAST, "--id-data", str(tmp_path / "nope"), "--out", str(tmp_path / "o"), "--debug"])
    assert main(["fit", *FAST, "--id-data", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2


def test_a_signal_after_the_work_finished_still_exits_130(data, tmp_path, monkeypatch, capsys):
    from watermark_ood import cli
    from watermark_ood.runtime.stop import STOP

    def finishes_then_signalled(args):
        STOP.set()  # as the SIGINT handler does, arriving after the last step
        return 0

    monkeypatch.setitem(cli.COMMANDS, "fit", finishes_then_signalled)
    id_data, _ = data
    assert main(["fit", *FAST, "--id-data", str(id_data), "--out", str(tmp_path / "o")]) == 130
    assert "interrupted" in capsys.readouterr().err


def test_resumed_fit_says_so_and_logs_plain_epoch_lines(data, tmp_path, capsys):
    id_data, _ = data
    out = tmp_path / "fit"
    args = ["fit", "--model", "small_cnn", "--random-weights", "--batch-size", "16", "--device", "cpu", "--id-data", str(id_data),
            "--objective", "energy", "--out", str(out)]
    assert main([*args, "--epochs", "1"]) == 0
    first = capsys.readouterr().err
    # stderr is not a terminal here: one plain line per epoch with the objective's two parts, no bar updates
    assert "epoch 1/1: loss" in first and "cross-entropy" in first and "OOD term" in first and "\r" not in first
    (out / "watermark.safetensors").unlink()
    assert main([*args, "--epochs", "1"]) == 0
    assert "resuming from epoch 2, step 0" in capsys.readouterr().err


@pytest.mark.parametrize("objective", ["hinge", "anchored"])
def test_margin_objectives_from_the_command_line(data, tmp_path, objective):
    id_data, _ = data
    out = tmp_path / "h"
    assert main(["fit", *FAST, "--id-data", str(id_data), "--objective", objective, "--surrogate", "mixed",
                 "--out", str(out)]) == 0
    hp = json.loads((out / "watermark.json").read_text())["hyperparameters"]
    assert hp["objective"] == objective and hp["m_out"] < hp["m_in"] and hp["surrogate"] == "mixed"
    history = json.loads((out / "history.json").read_text())
    assert all(abs(h["loss"] - h["ce"] - h["ood_term"]) < 1e-3 * max(1.0, h["loss"]) for h in history)


@pytest.mark.parametrize("content, message", [
    (b"not a checkpoint", "a text file"), (b"", "an empty file"), (b"PK\x03\x04broken", "truncated or damaged zip")])
def test_checkpoint_messages_say_what_the_file_is(data, tmp_path, capsys, content, message):
    id_data, _ = data
    bad = tmp_path / "model.th"
    bad.write_bytes(content)
    weighted = [x for x in FAST if x != "--random-weights"]
    code = main(["fit", *weighted, "--checkpoint", str(bad), "--id-data", str(id_data), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "weights_only" not in err and len(err.strip().splitlines()) == 1


def test_unknown_score_names_are_one_line_errors(data, tmp_path, capsys):
    id_data, noise = data
    code = main(["bench", *FAST, "--id-data", str(id_data), "--ood-data", str(noise), "--scores", "knn", "kmeans",
                 "--out", str(tmp_path / "b")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "kmeans" in err and "known scores: msp" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("command, extra, message", [
    ("calibrate", ["--tpr", "-0.5"], "--tpr"),
    ("calibrate", ["--tpr", "1.5"], "--tpr"),
    ("calibrate", ["--score", "knnn"], "unknown score 'knnn'"),
    ("calibrate", ["--eval-batch-size", "0"], "--eval-batch-size"),
    ("calibrate", ["--watermark", "missing.safetensors"], "watermark file not found"),
    ("calibrate", ["--score", "energy", "--layers", "bn1"], "--layers is for the detectors on intermediate layers"),
    ("calibrate", ["--score", "multimahalanobis+msp"], "cannot be part of a combination"),
    ("fit", ["--epochs", "0"], "--epochs"),
    ("evaluate", ["--scores", "knn", "kmeans", "--ood-data", "synthetic:uniform"], "unknown score 'kmeans'"),
])
def test_options_are_checked_before_any_work(tmp_path, capsys, monkeypatch, command, extra, message):
    """A bad option is refused before the data is read: the readers are trapped and must not be called."""
    import sys

    import watermark_ood.cli.commands  # noqa: F401 - every pipeline is imported, so every reference is trapped

    def trap(*args, **kwargs):
        raise AssertionError("data was read before the options were checked")

    users = [m for name, m in list(sys.modules.items()) if name.startswith("watermark_ood") and
             getattr(m, "load_id_data", None) is not None]
    assert any(m.__name__ == "watermark_ood.pipelines.calibrate" for m in users)
    for module in users:
        monkeypatch.setattr(module, "load_id_data", trap)
    data = write_npz_dataset(tmp_path / "toy", n_train=20, n_test=10)
    out = tmp_path / ("never.safetensors" if command == "calibrate" else "never")
    code = main([command, "--model", "small_cnn", "--random-weights", "--device", "cpu", "--no-progress", "--id-data", str(data),
                 *extra, "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1 and not out.exists()


def test_calibrate_and_predict_with_tapped_layers(data, tmp_path, capsys):
    import json

    from safetensors.torch import save_file

    from watermark_ood.models.architectures import SmallCNN

    id_data, noise = data
    save_file(SmallCNN(num_classes=3, in_channels=3).state_dict(), str(tmp_path / "m.safetensors"))
    model = ["--model", "small_cnn", "--checkpoint", str(tmp_path / "m.safetensors"), "--device", "cpu",
             "--no-progress"]
    base = ["calibrate", *model, "--id-data", str(id_data), "--score", "multimahalanobis", "--split", "test"]
    never = tmp_path / "never.safetensors"
    assert main([*base, "--layers", "bn9", "--out", str(never)]) == 2
    err = capsys.readouterr().err.strip()
    assert "SmallCNN has no layer 'bn9'; it has e.g. conv1, bn1" in err and len(err.splitlines()) == 1
    assert not never.exists() and not never.with_suffix(".json").exists()
    out = tmp_path / "d.safetensors"
    assert main([*base, "--layers", "bn2", "bn3", "--out", str(out)]) == 0
    assert json.loads(out.with_suffix(".json").read_text())["layers"] == ["bn2", "bn3"]
    assert main(["predict", *model, "--detector", str(out),
                 "--input", str(noise), "--out", str(tmp_path / "p.json")]) == 0
    assert len(json.loads((tmp_path / "p.json").read_text())["rows"]) == 40


def test_evaluate_taps_the_named_layers_and_refuses_them_where_no_score_reads_layers(data, tmp_path, capsys):
    import json

    from safetensors.torch import save_file

    from watermark_ood.models.architectures import SmallCNN

    id_data, noise = data
    save_file(SmallCNN(num_classes=3, in_channels=3).state_dict(), str(tmp_path / "m.safetensors"))
    base = ["evaluate", "--model", "small_cnn", "--checkpoint", str(tmp_path / "m.safetensors"), "--device", "cpu",
            "--no-progress", "--id-data", str(id_data), "--ood-data", str(noise)]
    for extra, message in ((["--scores", "energy", "knn", "--layers", "bn2"], "--layers is for the detectors on "
                            "intermediate layers"), (["--scores", "gram", "--layers", "bn9"], "no layer 'bn9'")):
        out = tmp_path / "never"
        assert main([*base, *extra, "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1 and not out.exists()
    out = tmp_path / "run"
    assert main([*base, "--scores", "multimahalanobis", "ash-map", "energy", "--layers", "bn2", "bn3",
                 "--out", str(out)]) == 0
    run = json.loads((out / "results.json").read_text())["runs"][0]
    assert run["layers"] == ["bn2", "bn3"] and set(run["scores"]) == {"multimahalanobis", "ash-map", "energy"}
    plain = tmp_path / "plain"
    assert main([*base, "--scores", "multimahalanobis", "--out", str(plain)]) == 0
    default = json.loads((plain / "results.json").read_text())["runs"][0]["scores"]["multimahalanobis"]["cost"]
    named = run["scores"]["multimahalanobis"]["cost"]  # bn1-3 by default: a larger fitted state than bn2-3's
    assert default["baseline"]["file_bytes"] > named["baseline"]["file_bytes"]


@pytest.mark.parametrize("command, extra", [
    ("fit", []), ("calibrate", []), ("evaluate", ["--ood-data", "synthetic:uniform"]),
    ("bench", ["--ood-data", "synthetic:uniform"]), ("predict", ["--detector", "D", "--input", "D"]),
    ("export", ["--detector", "D"]),
])
def test_every_command_with_a_model_refuses_it_without_weights(tmp_path, capsys, command, extra):
    """A forgotten --checkpoint is one line, exit 2, nothing written; --random-weights says it is meant."""
    data = write_npz_dataset(tmp_path / "toy", n_train=20, n_test=10)
    (tmp_path / "D").write_bytes(b"")
    extra = [str(tmp_path / "D") if x == "D" else x for x in extra]
    data_args = [] if command in ("predict", "export") else ["--id-data", str(data)]
    out = tmp_path / "out"
    code = main([command, "--model", "resnet8", "--device", "cpu", "--no-progress", *data_args, *extra,
                 "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and not out.exists()
    assert "--model resnet8 without --checkpoint: give its trained weights with --checkpoint FILE, or " \
           "--random-weights" in err
    (tmp_path / "w.th").write_bytes(b"")
    assert main([command, "--model", "resnet8", "--checkpoint", str(tmp_path / "w.th"), "--random-weights",
                 *data_args, *extra, "--out", str(out)]) == 2
    assert "exclude each other" in capsys.readouterr().err and not out.exists()


def test_a_model_of_ones_own_ships_end_to_end_from_its_file(data, tmp_path, capsys, monkeypatch):
    """A user's nn.Module in a .py file with a state_dict saved by torch.save: calibrate (refused without its
    normalization), predict and export in both formats, from another working directory, no PYTHONPATH."""
    import numpy as np
    import onnxruntime as ort

    id_data, noise = data
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "mynet.py").write_text(TINY_NET)
    sys.path.insert(0, str(tmp_path / "mine"))
    try:
        import mynet
    finally:
        sys.path.remove(str(tmp_path / "mine"))
        sys.modules.pop("mynet", None)
    torch.manual_seed(0)
    torch.save(mynet.TinyNet().state_dict(), tmp_path / "mine" / "weights.pt")
    monkeypatch.chdir(tmp_path / "mine")
    model = ["--model", "mynet.py:TinyNet", "--checkpoint", "weights.pt", "--device", "cpu", "--no-progress"]
    det = tmp_path / "det.safetensors"
    assert main(["calibrate", *model, "--id-data", str(id_data), "--score", "knn", "--split", "test",
                 "--out", str(det)]) == 2
    err = capsys.readouterr().err.strip()
    assert "--model mynet.py:TinyNet: give the input normalization it was trained with, --mean" in err
    assert len(err.splitlines()) == 1 and not det.exists()
    model += ["--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25"]
    assert main(["calibrate", *model, "--id-data", str(id_data), "--score", "knn", "--split", "test",
                 "--out", str(det)]) == 0
    monkeypatch.chdir(tmp_path)
    model[1:4] = [f"{tmp_path / 'mine' / 'mynet.py'}:TinyNet", "--checkpoint", str(tmp_path / "mine" / "weights.pt")]
    assert main(["predict", *model, "--detector", str(det), "--input", str(noise), "--out", "p.json"]) == 0
    expected = np.array([row["score"] for row in json.loads((tmp_path / "p.json").read_text())["rows"]])
    assert main(["export", *model, "--detector", str(det), "--out", "exp"]) == 0
    pixels = np.load(noise)["x"].transpose(0, 3, 1, 2).astype(np.float32) / 255
    onnx_scores = ort.InferenceSession(str(tmp_path / "exp" / "detector.onnx")).run(None, {"images": pixels})[1]
    with torch.no_grad():
        ts_scores = torch.jit.load(str(tmp_path / "exp" / "detector.torchscript.pt"))(torch.from_numpy(pixels))[1]
    # both formats measure KNN's distance in float32 matrix products, the library in scikit-learn's float64
    assert np.abs(onnx_scores - expected).max() <= 1e-5 and np.abs(ts_scores.numpy() - expected).max() <= 1e-5


def test_a_detector_for_another_architecture_names_the_detectors_model(data, tmp_path, capsys):
    """The file's model is checked before the model is built: the message names it, not a checkpoint mismatch."""
    from safetensors.torch import save_file

    from watermark_ood.models.registry import build_model

    id_data, noise = data
    det = tmp_path / "d.safetensors"
    assert main(["calibrate", "--model", "small_cnn", "--random-weights", "--device", "cpu", "--no-progress",
                 "--id-data", str(id_data), "--score", "energy", "--split", "test", "--out", str(det)]) == 0
    save_file(build_model("resnet20")[0].state_dict(), str(tmp_path / "r20.safetensors"))
    capsys.readouterr()
    assert main(["predict", "--model", "resnet20", "--checkpoint", str(tmp_path / "r20.safetensors"), "--device",
                 "cpu", "--detector", str(det), "--input", str(noise), "--out", str(tmp_path / "p.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{det} was made for model 'small_cnn'" in err and "--model resnet20 was given" in err
    assert "does not fit the architecture" not in err and len(err.splitlines()) == 1
