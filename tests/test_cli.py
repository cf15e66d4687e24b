"""End-to-end tests of `lrcore train` and `lrcore schedule`: the default run, a user's CSV and
NPZ, checkpoints (bitwise resume, also after Ctrl-C), plots, progress bars, bad input."""
import re
import subprocess
import sys

import numpy as np
import pytest

from lrcore import checkpoint
from lrcore.demo import models
from lrcore.cli import main


def train(capsys, *argv):
    """Run `lrcore train ...` in this process (stderr is no terminal here, so no bar unless
    --progress); return (exit code, stdout, stderr)."""
    try:
        code = main(["train", *argv])
    except SystemExit as exc:          # argparse errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def final_accuracy(out):
    return float(re.search(r"final val_acc ([0-9.]+)", out).group(1))


def params_in(path):
    arrays, _ = checkpoint.read(path)
    return [arrays[k] for k in sorted(k for k in arrays if k.startswith("param/"))]


@pytest.fixture
def user_csv(tmp_path):
    """Three well separated classes in 4 features, label in the middle column."""
    rng = np.random.default_rng(5)
    y = rng.integers(0, 3, size=240)
    X = rng.normal(size=(240, 4)) + 3.0 * np.eye(3, 4)[y]
    path = tmp_path / "user.csv"
    lines = ["f1,f2,species,f3,f4"] + [f"{a},{b},{c},{d},{e}" for (a, b, d, e), c in zip(X, y)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_default_run_as_a_console_command():
    """`python -m lrcore train` with no arguments: the built-in digits, good accuracy."""
    proc = subprocess.run([sys.executable, "-m", "lrcore", "train"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("MLP 64-64-10 on digits (built-in): 1438 train / 359 val")
    epochs = [line for line in lines if line.startswith("epoch ")]
    assert len(epochs) == 10 and all(" val_acc " in e and " lr 0.001 " in e for e in epochs)
    assert re.search(r"completed: 450 steps, 14,380 samples in .* samples/s\)", proc.stdout)
    assert final_accuracy(proc.stdout) > 0.9


def test_user_csv_end_to_end(capsys, user_csv, tmp_path):
    code, out, err = train(capsys, "--data", str(user_csv), "--target", "species",
                           "--epochs", "5", "--no-progress", "--optimizer", "sgd",
                           "--momentum", "0.9",
                           "--lr", "0.05")
    assert code == 0, err
    assert "MLP 4-64-3 on user.csv: 192 train / 48 val samples; SGD lr 0.05" in out
    assert final_accuracy(out) > 0.85


def test_user_npz_with_softmax_and_a_schedule(capsys, tmp_path):
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, size=100)
    X = rng.normal(size=(100, 3)) + 4.0 * y[:, None]
    np.savez(tmp_path / "d.npz", X=X, y=y)
    code, out, err = train(capsys, "--data", str(tmp_path / "d.npz"), "--model", "softmax",
                           "--schedule", "cosine", "floor=0.0001", "--lr", "0.01")
    assert code == 0, err
    assert "softmax regression 3-2" in out and "Cosine(initial=0.01, steps=30, floor=0.0001)" in out
    assert final_accuracy(out) > 0.9


def test_save_and_resume_is_bitwise_an_uninterrupted_run(capsys, tmp_path):
    whole, half = tmp_path / "whole.lrc", tmp_path / "half.lrc"
    args = ["--epochs", "4", "--schedule", "warmup_cosine", "warmup_steps=20", "steps=160",
            "--seed", "3"]
    assert train(capsys, *args, "--save", str(whole))[0] == 0
    assert train(capsys, *args[2:], "--epochs", "2", "--save", str(half))[0] == 0
    code, out, err = train(capsys, "--resume", str(half), "--epochs", "4", "--save", str(half))
    assert code == 0, err
    assert "resuming at epoch 3" in out and out.count("\nepoch ") == 2
    assert all(a.tobytes() == b.tobytes() for a, b in zip(params_in(whole), params_in(half)))
    code, out, _ = train(capsys, "--resume", str(half))
    assert code == 0 and "nothing to do" in out


def test_ctrl_c_writes_a_checkpoint_that_resumes_bitwise(capsys, tmp_path, monkeypatch):
    whole, cut = tmp_path / "whole.lrc", tmp_path / "cut.lrc"
    assert train(capsys, "--epochs", "2", "--save", str(whole))[0] == 0
    original = models.MLP.loss_and_grad
    calls = {"n": 0}

    def interrupted(self, X, y, grads):
        calls["n"] += 1
        if calls["n"] == 60:
            raise KeyboardInterrupt
        return original(self, X, y, grads)

    monkeypatch.setattr(models.MLP, "loss_and_grad", interrupted)
    code, out, err = train(capsys, "--epochs", "2", "--save", str(cut))
    assert code == 130 and "interrupted in epoch 2 after 14 of 45 mini-batches" in err
    assert f"--resume {cut}" in err and "Traceback" not in err
    monkeypatch.setattr(models.MLP, "loss_and_grad", original)
    assert train(capsys, "--resume", str(cut), "--save", str(cut))[0] == 0
    assert all(a.tobytes() == b.tobytes() for a, b in zip(params_in(whole), params_in(cut)))


def test_a_failing_step_is_one_line(capsys, monkeypatch):
    def broken(self, X, y, grads):
        raise FloatingPointError("overflow in exp")

    monkeypatch.setattr(models.MLP, "loss_and_grad", broken)
    code, _, err = train(capsys, "--epochs", "1")
    assert code == 2 and len(err.splitlines()) == 1
    assert "training failed at epoch 1, mini-batch 1: FloatingPointError: overflow in exp" in err


def test_plot_is_written(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "curves.png"
    code, out, err = train(capsys, "--epochs", "2", "--plot", str(png))
    assert code == 0, err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"wrote plot {png}" in out


def test_plot_without_matplotlib_is_a_clear_error(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    code, _, err = train(capsys, "--plot", str(tmp_path / "x.png"))
    assert code == 2 and "pip install 'lrcore[plot]'" in err and len(err.splitlines()) == 1


def test_progress_bar_with_and_without_tqdm(capsys, monkeypatch):
    pytest.importorskip("tqdm")
    code, out, err = train(capsys, "--epochs", "1", "--progress")
    assert code == 0 and "step" in err and "epoch 1/1" in out
    monkeypatch.setitem(sys.modules, "tqdm", None)
    code, out, err = train(capsys, "--epochs", "1")          # plain output without tqdm
    assert code == 0 and err == "" and "epoch 1/1" in out
    code, _, err = train(capsys, "--progress")
    assert code == 2 and "pip install 'lrcore[cli]'" in err


@pytest.mark.parametrize("argv, message", [
    (["--optimizer", "lbfgs"], "invalid choice: 'lbfgs'"),
    (["--schedule", "nope"], "unknown schedule 'nope'; expected one of"),
    (["--schedule", "cosine", "bogus=1"], "unknown argument(s) ['bogus']"),
    (["--data", "/no/such/file.csv"], "does not exist"),
    (["--data", "{bad_csv}"], "line 3 column 'b' holds non-numeric value 'x'"),
    (["--data", "{good_csv}", "--target", "nope"], "no column named 'nope'"),
    (["--target", "label"], "--target needs --data"),
    (["--lr", "-0.1"], "--lr must be a number >= 0, got -0.1"),
    (["--lr", "abc"], "argument --lr: invalid float value: 'abc'"),
    (["--momentum", "0.9"], "--momentum does not apply to --optimizer adam"),
    (["--beta1", "1.5"], "--beta1 must be a number in [0, 1), got 1.5"),
    (["--epochs", "0"], "--epochs must be an integer >= 1, got 0"),
    (["--val-fraction", "1.5"], "--val-fraction must be a number strictly between 0 and 1"),
    (["--resume", "{bad_csv}"], "not an lrcore checkpoint"),
    (["--resume", "/no/such.lrc"], "file does not exist"),
    (["--save", "/no/such/dir/x.lrc"], "does not exist"),
    (["--bogus-option"], "unrecognized arguments: --bogus-option"),
])
def test_bad_input_is_one_line_and_exit_code_2(capsys, tmp_path, argv, message):
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("a,b\n1,2\n3,x\n")
    good_csv = tmp_path / "good.csv"
    good_csv.write_text("a,b\n1,0\n2,1\n3,0\n4,1\n5,0\n")
    argv = [a.format(bad_csv=bad_csv, good_csv=good_csv) for a in argv]
    code, out, err = train(capsys, *argv)
    assert code == 2 and out == ""
    assert message in err and "Traceback" not in err
    if "unrecognized" not in message:   # that one comes from the top-level parser
        assert len(err.strip().splitlines()) == 1, err


def test_resume_conflicts(capsys, tmp_path):
    path = tmp_path / "c.lrc"
    assert train(capsys, "--epochs", "1", "--save", str(path))[0] == 0
    code, _, err = train(capsys, "--resume", str(path), "--optimizer", "sgd")
    assert code == 2 and "trained with adam" in err
    code, _, err = train(capsys, "--resume", str(path), "--hidden", "8")
    assert code == 2 and "--hidden 8 conflicts with the checkpoint's 64" in err


# -------------------------------------------------------------------- lrcore schedule


def schedule(capsys, *argv):
    try:
        code = main(["schedule", *argv])
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def test_schedule_table(capsys):
    code, out, _ = schedule(capsys, "multistep", "initial=1", "milestones=2,4", "gamma=0.5",
                            "--steps", "6")
    assert code == 0
    rows = [line.split() for line in out.splitlines()[2:]]
    assert rows == [["0", "1"], ["1", "1"], ["2", "0.5"], ["3", "0.5"], ["4", "0.25"],
                    ["5", "0.25"]]


def test_schedule_fills_steps_and_samples_rows(capsys):
    code, out, _ = schedule(capsys, "cosine", "initial=0.1", "--steps", "1000", "--rows", "3")
    assert code == 0 and out.splitlines()[0] == "Cosine(initial=0.1, steps=1000)"
    assert [line.split()[0] for line in out.splitlines()[2:]] == ["0", "500", "999"]


def test_schedule_plot(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "s.png"
    code, out, _ = schedule(capsys, "onecycle", "max_value=0.1", "--steps", "50", "--plot",
                            str(png))
    assert code == 0 and png.read_bytes()[:4] == b"\x89PNG" and str(png) in out


@pytest.mark.parametrize("argv, message", [
    (["nope", "--steps", "3"], "unknown schedule 'nope'; expected one of constant, cosine"),
    (["cosine", "--steps", "3"], "missing required argument(s) ['initial']"),
    (["cosine", "initial=-1", "--steps", "3"], "initial=-1.0 is out of range"),
    (["cosine", "initial", "--steps", "3"], "'initial' is not key=value"),
    (["cosine", "initial=0.1"], "the following arguments are required: --steps"),
    (["cosine", "initial=0.1", "--steps", "0"], "--steps must be an integer >= 1, got 0"),
])
def test_schedule_bad_input(capsys, argv, message):
    code, out, err = schedule(capsys, *argv)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_bench_command_prints_a_table_and_writes_json(tmp_path):
    """`lrcore bench` works end to end (a smoke test: no timing is asserted)."""
    import json
    import lrcore
    if lrcore.backend() != "native":
        pytest.skip("benchmarks need the compiled backend")
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, "-m", "lrcore", "bench", "--quick", "--optimizer", "sgd",
                        "--threads", "1", "--json", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "of probe" in r.stdout and "sgd" in r.stdout
    rows = json.loads(out.read_text())["rows"]
    assert [row["elements"] for row in rows] == [1 << 20, 1 << 22]
    assert all(row["gbps"] > 0 and row["fraction"] > 0 for row in rows)


def test_bench_command_rejects_bad_threads():
    r = subprocess.run([sys.executable, "-m", "lrcore", "bench", "--threads", "0"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
