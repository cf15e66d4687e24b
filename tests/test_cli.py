"""End-to-end tests of the `lrcore` commands: the default run, a user's CSV and NPZ,
checkpoints (bitwise resume, also after Ctrl-C; schedules re-fit when a run is extended),
divergence, the report figure, progress bars, closed pipes, bad input (one line, checked
before any work)."""
import os
import platform
import re
import subprocess
import sys

import numpy as np
import pytest

import lrcore
from lrcore import checkpoint
from lrcore.cli import main, train as train_cmd
from lrcore.cli.paths import PLOT_HINT
from lrcore.cli.report import History
from lrcore.demo import models
from lrcore.rules import PRESETS
from lrcore.task import OPTIMIZERS


def lrcore_cmd(*argv, **kwargs):
    """`python -m lrcore ARGV` in a subprocess (as the console script runs it)."""
    return subprocess.run([sys.executable, "-m", "lrcore", *argv], capture_output=True,
                          text=True, timeout=300, **kwargs)


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
    assert proc.stderr == ""            # no bar (stderr is no terminal), no warnings
    lines = proc.stdout.splitlines()
    assert lines[0] == "MLP 64-64-10 on digits (built-in): 1438 train / 359 val samples"
    assert lines[1] == "Adam lr 0.001; 10 epochs of 45 mini-batches of 32"
    epochs = [line for line in lines if line.startswith("epoch ")]
    assert len(epochs) == 10 and all(" val_acc " in e and " lr 0.001 " in e for e in epochs)
    assert re.search(r"^completed: 450 steps, 14,380 samples in .* samples/s\)$", proc.stdout,
                     re.M)
    assert final_accuracy(proc.stdout) > 0.9
    assert max(len(line) for line in lines) <= 80


def test_user_csv_end_to_end(capsys, user_csv, tmp_path):
    code, out, err = train(capsys, "--data", str(user_csv), "--target", "species",
                           "--epochs", "5", "--no-progress", "--optimizer", "sgd",
                           "--momentum", "0.9",
                           "--lr", "0.05")
    assert code == 0, err
    assert "MLP 4-64-3 on user.csv: 192 train / 48 val samples\nSGD lr 0.05;" in out
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


def _interrupt_at_call(monkeypatch, n):
    """Make the n-th mini-batch's loss_and_grad raise KeyboardInterrupt (Ctrl-C); returns the
    original, to put back."""
    original = models.MLP.loss_and_grad
    calls = {"n": 0}

    def interrupted(self, X, y, grads):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return original(self, X, y, grads)

    monkeypatch.setattr(models.MLP, "loss_and_grad", interrupted)
    return original


def test_ctrl_c_writes_a_checkpoint_that_resumes_bitwise(capsys, tmp_path, monkeypatch):
    whole, cut = tmp_path / "whole.lrc", tmp_path / "cut.lrc"
    assert train(capsys, "--epochs", "2", "--save", str(whole))[0] == 0
    original = _interrupt_at_call(monkeypatch, 60)
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
    assert code == 1 and len(err.splitlines()) == 1     # 1: a run that failed, 2: bad input
    assert "training failed in epoch 1, mini-batch 1: FloatingPointError: overflow in exp" in err


def test_plot_is_written(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "curves.png"
    code, out, err = train(capsys, "--epochs", "2", "--plot", str(png))
    assert code == 0, err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"wrote plot {png}" in out


def test_plot_without_matplotlib_is_a_clear_error(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    code, _, err = train(capsys, "--plot", str(tmp_path / "x.png"))
    assert code == 2 and PLOT_HINT in err and len(err.splitlines()) == 1


def test_progress_bar_with_and_without_tqdm(capsys, monkeypatch):
    pytest.importorskip("tqdm")
    code, out, err = train(capsys, "--epochs", "1", "--progress")
    assert code == 0 and "step" in err and "epoch 1/1" in out
    monkeypatch.setitem(sys.modules, "tqdm", None)
    code, out, err = train(capsys, "--epochs", "1")          # plain output without tqdm
    assert code == 0 and err == "" and "epoch 1/1" in out
    code, _, err = train(capsys, "--progress")
    assert code == 2 and "pip install tqdm" in err


@pytest.mark.parametrize("argv, message", [
    (["--optimizer", "lbfgs"], "invalid choice: 'lbfgs'"),
    (["--schedule", "nope"], "unknown schedule 'nope'; expected one of"),
    (["--schedule", "cosine", "bogus=1"], "unknown argument(s) ['bogus']"),
    (["--data", "/no/such/file.csv"], "does not exist"),
    (["--data", "{bad_csv}"], "line 3 column 'b' holds non-numeric value 'x'"),
    (["--data", "{good_csv}", "--target", "nope"], "no column named 'nope'"),
    (["--target", "label"], "--target needs --data"),
    (["--lr", "-0.1"], "--lr must be a finite number >= 0, got -0.1"),
    (["--lr", "abc"], "argument --lr: invalid float value: 'abc'"),
    (["--momentum", "0.9"], "--momentum does not apply to --optimizer adam"),
    (["--beta1", "1.5"], "--beta1 must be in [0, 1), got 1.5"),
    (["--optimizer", "rmsprop", "--momentum", "-1"], "--momentum must be a finite number >= 0"),
    (["--epochs", "0"], "--epochs must be an integer >= 1, got 0"),
    (["--val-fraction", "1.5"], "--val-fraction must be a number strictly between 0 and 1"),
    (["--resume", "{bad_csv}"], "not an lrcore checkpoint"),
    (["--resume", "/no/such.lrc"], "file does not exist"),
    (["--save", "/no/such/dir/x.lrc"], "does not exist"),
    (["--bogus-option"], "lrcore train: error: unrecognized arguments: --bogus-option"),
    (["--lr", "inf"], "--lr must be a finite number >= 0, got inf"),
    (["--lr", "nan"], "--lr must be a finite number >= 0, got nan"),
    (["--weight-decay=-inf"], "--weight-decay must be a finite number >= 0, got -inf"),
    (["--beta2", "inf"], "--beta2 must be in [0, 1), got inf"),
    (["--resume", "{tmp_path}"], "is a directory; expected a checkpoint file"),
    (["--save", "{tmp_path}"], "is a directory; expected a file name"),
    (["--data", "{text_npz}"], "is not a numpy .npz archive (a zip file written by numpy"),
    (["--plot", "{tmp_path}"], "is a directory; expected a file name"),
    (["--plot", "{tmp_path}/curves"], "has no extension to choose the image format by"),
    (["--plot", "{tmp_path}/curves.txt"], "unsupported image format 'txt'"),
    (["--plot", "{tmp_path}/nodir/curves.png"], "nodir' does not exist"),
])
def test_bad_input_is_one_line_and_exit_code_2(capsys, tmp_path, argv, message):
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("a,b\n1,2\n3,x\n")
    good_csv = tmp_path / "good.csv"
    good_csv.write_text("a,b\n1,0\n2,1\n3,0\n4,1\n5,0\n")
    text_npz = tmp_path / "g.npz"
    text_npz.write_text("a,b\n1,2\n")
    if "--plot" in argv:
        pytest.importorskip("matplotlib")
    argv = [a.format(bad_csv=bad_csv, good_csv=good_csv, tmp_path=tmp_path, text_npz=text_npz)
            for a in argv]
    code, out, err = train(capsys, *argv)
    assert code == 2 and out == ""          # found before any work: no header, no epochs
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "curves.png").exists()     # nothing appended to a plot's name


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


def test_schedule_plot_writes_exactly_the_path_given(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    svg = tmp_path / "s.SVG"            # the extension picks the format, in any case
    code, out, _ = schedule(capsys, "cosine", "initial=1", "--steps", "9", "--plot", str(svg))
    assert code == 0 and out.rstrip().endswith(f"drawn to {svg}")
    assert os.listdir(tmp_path) == ["s.SVG"] and b"<svg" in svg.read_bytes()[:400]


@pytest.mark.parametrize("argv, message", [
    (["nope", "--steps", "3"], "unknown schedule 'nope'; expected one of constant, cosine"),
    (["cosine", "--steps", "3"], "missing required argument(s) ['initial']"),
    (["cosine", "initial=-1", "--steps", "3"], "initial=-1.0 is out of range"),
    (["cosine", "initial", "--steps", "3"], "'initial' is not key=value"),
    (["cosine", "initial=0.1"], "the following arguments are required: --steps"),
    (["cosine", "initial=0.1", "--steps", "0"], "--steps must be an integer >= 1, got 0"),
    (["cosine", "initial=0.1", "--steps", "5", "--plot", "{tmp_path}"], "is a directory"),
    (["cosine", "initial=0.1", "--steps", "5", "--plot", "{tmp_path}/snoext"],
     "'{tmp_path}/snoext' has no extension to choose the image format by; e.g. "
     "{tmp_path}/snoext.png"),
    (["cosine", "initial=0.1", "--steps", "5", "--plot", "{tmp_path}/s.txt"],
     "unsupported image format 'txt'"),
    (["cosine", "initial=0.1", "--steps", "5", "--plot", "{tmp_path}/nodir/s.png"],
     "--plot '{tmp_path}/nodir/s.png': directory '{tmp_path}/nodir' does not exist"),
    (["cosine", "--steps", "5", "--plot", "{tmp_path}/s.txt"],   # the path comes first
     "unsupported image format 'txt'"),
    (["cosine", "--steps", "5", "--bogus"], "lrcore schedule: error: unrecognized arguments"),
])
def test_schedule_bad_input(capsys, tmp_path, argv, message):
    if "--plot" in argv:
        pytest.importorskip("matplotlib")
    argv = [a.format(tmp_path=tmp_path) for a in argv]
    code, out, err = schedule(capsys, *argv)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, err
    assert message.format(tmp_path=tmp_path) in err
    assert sorted(os.listdir(tmp_path)) == []          # nothing written, nothing appended


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


# -------------------------------------------------------------------- the whole command line


def test_version():
    r = lrcore_cmd("--version")
    assert r.returncode == 0 and r.stdout == f"lrcore {lrcore.__version__}\n" and r.stderr == ""


def test_unknown_options_name_the_command_that_was_given():
    for argv, prog in [(["train", "--foo"], "lrcore train"),
                       (["schedule", "cosine", "--steps", "3", "--foo"], "lrcore schedule"),
                       (["bench", "--foo"], "lrcore bench"), (["--foo"], "lrcore")]:
        r = lrcore_cmd(*argv)
        assert r.returncode == 2 and r.stdout == ""
        assert r.stderr == f"{prog}: error: unrecognized arguments: --foo (see {prog} --help)\n"


def _closed_stdout(*argv):
    """Run `lrcore ARGV` with stdout a pipe whose reader has already gone away."""
    read, write = os.pipe()
    os.close(read)
    try:
        proc = subprocess.Popen([sys.executable, "-m", "lrcore", *argv], stdout=write,
                                stderr=subprocess.PIPE, text=True)
    finally:
        os.close(write)
    _, err = proc.communicate(timeout=300)
    return proc.returncode, err


@pytest.mark.parametrize("argv", [
    [], ["schedule", "cosine", "initial=1", "--steps", "100000"],
    ["train", "--no-progress", "--epochs", "2"], ["train", "--progress", "--epochs", "2"]])
def test_a_closed_pipe_ends_quietly_like_a_unix_tool(argv):
    """`lrcore ... | head -1`: no traceback, no "training failed"; the exit code is 141
    (128 + SIGPIPE), what a shell reports for a tool that SIGPIPE ended."""
    if "--progress" in argv:
        pytest.importorskip("tqdm")
    code, err = _closed_stdout(*argv)
    assert code == 141
    assert "Traceback" not in err and "Error" not in err and "failed" not in err, err


def test_piping_into_head_shows_the_first_lines():
    for argv, n, first in [([], 1, f"lrcore {lrcore.__version__}"),
                           (["schedule", "cosine", "initial=1", "--steps", "100000"], 2,
                            "Cosine(initial=1.0, steps=100000)"),
                           (["train", "--no-progress"], 1, "MLP 64-64-10 on digits")]:
        cmd = " ".join([sys.executable, "-m", "lrcore", *argv]) + f" | head -{n}"
        r = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True,
                           text=True, timeout=300)
        assert r.stdout.splitlines()[0].startswith(first)
        assert len(r.stdout.splitlines()) == n
        assert r.stderr == "" and r.returncode in (0, 141)   # 0 if it finished first


# -------------------------------------------------------------------- divergence


def test_a_diverging_run_stops_at_the_first_non_finite_loss(tmp_path):
    ckpt = tmp_path / "run.lrc"
    r = lrcore_cmd("train", "--optimizer", "sgd", "--lr", "50", "--epochs", "3",
                   "--save", str(ckpt))
    assert r.returncode == 1
    assert len(r.stderr.splitlines()) == 1 and "Warning" not in r.stderr, r.stderr
    assert re.fullmatch(r"lrcore train: error: diverged at step \d+ \(epoch \d, mini-batch "
                        r"\d+/45, lr 50\): the (loss|gradient) is .*; stopped before that "
                        r"step; try a smaller --lr \(e\.g\. 5\)\n", r.stderr), r.stderr
    assert not re.search(r"loss nan|loss inf", r.stdout)
    assert "completed" not in r.stdout
    arrays, _ = checkpoint.read(ckpt)          # the last epoch saved is finite
    assert all(np.isfinite(a).all() for a in arrays.values() if a.dtype.kind == "f")


def test_divergence_detected_on_the_gradient_too(capsys, monkeypatch):
    original = models.MLP.loss_and_grad

    def inf_gradient(self, X, y, grads):
        loss = original(self, X, y, grads)
        if self.calls == 3:
            grads[0].flat[7] = np.inf
        self.calls += 1
        return loss

    monkeypatch.setattr(models.MLP, "calls", 0, raising=False)
    monkeypatch.setattr(models.MLP, "loss_and_grad", inf_gradient)
    code, out, err = train(capsys, "--epochs", "1", "--schedule", "cosine")
    assert code == 1 and "diverged at step 4 (epoch 1, mini-batch 4/45, lr 0.0009891)" in err
    assert "the gradient is not finite" in err and "try a schedule with smaller values" in err
    assert "(e.g. --lr 9.9e-05)" in err and len(err.splitlines()) == 1


# -------------------------------------------------------------------- extending a run


def test_resume_with_more_epochs_refits_a_schedule_fit_to_the_run(capsys, tmp_path):
    path = tmp_path / "c.lrc"
    code, out, err = train(capsys, "--schedule", "cosine", "--epochs", "5", "--save", str(path))
    assert code == 0 and "Cosine(initial=0.001, steps=225)" in out and err == ""
    code, out, err = train(capsys, "--resume", str(path), "--epochs", "8", "--save", str(path))
    assert code == 0
    assert "Cosine(initial=0.001, steps=360)" in out and "resuming at epoch 6" in out
    assert ("note: the cosine schedule was fit to the run's length, 225 steps; re-fit to "
            "360 steps") in " ".join(err.split())
    lrs = [float(m) for m in re.findall(r"lr ([0-9.e+-]+)  ", out)]
    assert len(lrs) == 3 and all(lr > 1e-9 for lr in lrs[:2])   # no longer stuck at 0
    # the same length again (a plain continuation) changes nothing and says nothing
    code, out, err = train(capsys, "--resume", str(path), "--epochs", "9")
    assert code == 0 and "steps=405" in out and "re-fit" in err
    _, meta = checkpoint.read(path)
    assert meta["user"]["lrcore train"]["schedule"]["length"] == 360


def test_a_schedule_of_explicit_length_is_kept_and_its_end_is_warned_about(capsys, tmp_path):
    path = tmp_path / "c.lrc"
    code, out, err = train(capsys, "--schedule", "linear", "start=0.001", "end=0.0001",
                           "steps=90", "--epochs", "2", "--save", str(path))
    assert code == 0 and err == ""
    code, out, err = train(capsys, "--resume", str(path), "--epochs", "3")
    assert code == 0 and "steps=90" in out
    assert ("warning: the linear schedule ends at step 90, before the run's 135; after it "
            "the lr stays 0.0001") in " ".join(err.split())


def test_resumed_plot_and_history_cover_the_whole_run(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    path, png = tmp_path / "c.lrc", tmp_path / "c.png"
    assert train(capsys, "--epochs", "2", "--save", str(path))[0] == 0
    code, out, _ = train(capsys, "--resume", str(path), "--epochs", "3", "--save", str(path),
                         "--plot", str(png))
    assert code == 0 and f"wrote checkpoint {path}\nwrote plot {png}\n" in out
    _, meta = checkpoint.read(path)
    history = History(meta["user"]["lrcore train history"])
    assert len(history.x) == 135 and history.epoch == [1.0, 2.0, 3.0]
    assert history.x[0] == 0.5 / 45 and history.x[-1] == 2 + 44.5 / 45
    assert history.resumed_at == [2.0] and len(history.val_acc) == 3
    assert png.read_bytes()[:4] == b"\x89PNG"


# -------------------------------------------------------------------- output


def test_header_and_summary_fit_80_columns(capsys, tmp_path):
    code, out, _ = train(capsys, "--epochs", "1", "--schedule", "warmup_cosine",
                         "warmup_steps=5", "floor=0.00001", "--save", str(tmp_path / "c.lrc"))
    lines = out.splitlines()
    assert code == 0 and lines[-1].startswith("wrote checkpoint ")   # paths are not wrapped
    assert max(len(line) for line in lines[:-1]) <= 80
    assert "Warmup(schedule=Cosine(" in out and len(lines[1]) > 60   # wrapped, not cut


def test_the_progress_bar_shows_the_epoch(capsys):
    pytest.importorskip("tqdm")
    code, _, err = train(capsys, "--epochs", "2", "--progress")
    assert code == 0 and "epoch 1/2" in err and "epoch 2/2" in err


def test_options_come_from_the_table_and_all_have_help():
    parser = __import__("argparse").ArgumentParser()
    train_cmd.add_arguments(parser)
    actions = {a.dest: a for a in parser._actions}
    assert list(actions["optimizer"].choices) == sorted(OPTIMIZERS)
    for name in OPTIMIZERS:
        assert f"{name} {PRESETS[name].cli_lr:g}" in actions["lr"].help
        assert train_cmd.default_lr(name) == PRESETS[name].cli_lr
    assert all(a.help for a in parser._actions if a.dest != "help")
    assert re.search(r"decoupled \(param = param \* \(1 - lr \* weight_decay\)\) in (\w+, )*"
                     r"adamw", actions["weight_decay"].help)
    assert "adamw 0.01" in actions["weight_decay"].help


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_each_optimizer_trains_with_its_default_lr(capsys, optimizer):
    code, out, err = train(capsys, "--optimizer", optimizer, "--epochs", "2")
    assert code == 0, err
    assert f" lr {PRESETS[optimizer].cli_lr:g};" in out


def test_make_optimizer_is_the_one_hook(capsys, tmp_path, monkeypatch):
    """Options that change how the optimizer runs (--threads; later --distributed,
    --precision, --state-dtype) pass through make_optimizer, for new and resumed runs."""
    seen = []
    original = train_cmd.make_optimizer

    def spy(args, name, params, loaded=None):
        opt = original(args, name, params, loaded)
        seen.append((name, loaded is not None, opt.num_threads))
        return opt

    monkeypatch.setattr(train_cmd, "make_optimizer", spy)
    path = tmp_path / "c.lrc"
    assert train(capsys, "--epochs", "1", "--threads", "2", "--save", str(path))[0] == 0
    assert train(capsys, "--resume", str(path), "--epochs", "2", "--threads", "1")[0] == 0
    assert seen == [("adam", False, 2), ("adam", True, 1)]


def test_readme_documents_the_train_options():
    readme = open(os.path.join(os.path.dirname(__file__), "..", "README.md"),
                  encoding="utf-8").read()
    section = readme.split("## Command line", 1)[1].split("\n## ", 1)[0]
    for option in ("--val-fraction", "--model", "--hidden", "--weight-decay", "--plot",
                   "--resume", "--schedule", "standardis", "--precision", "--state-dtype"):
        assert option in section, option
    assert section.count("pip install") == 1 and PLOT_HINT in section


def test_one_install_hint_for_plotting(capsys, monkeypatch):
    """The CLI, lrcore.schedules.plot and the README say the same thing, which works
    however lrcore was installed."""
    assert PLOT_HINT == "pip install matplotlib"
    readme = open(os.path.join(os.path.dirname(__file__), "..", "README.md"),
                  encoding="utf-8").read()
    hints = re.findall(r"pip install [^`]*", readme)
    assert [h for h in hints if "matplotlib" in h] == [PLOT_HINT] * 2
    assert PLOT_HINT in " ".join(lrcore_cmd("train", "--help").stdout.split())
    assert PLOT_HINT in " ".join(lrcore_cmd("schedule", "--help").stdout.split())
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    for run in (lambda: train(capsys, "--plot", "x.png"),
                lambda: schedule(capsys, "cosine", "initial=1", "--steps", "3", "--plot",
                                 "x.png")):
        code, _, err = run()
        assert code == 2 and err.strip().endswith(f"needs matplotlib, an optional dependency: "
                                                  f"{PLOT_HINT}")
    with pytest.raises(ImportError, match=PLOT_HINT):
        lrcore.schedules.plot(lrcore.schedules.Constant(0.1), 3)


# -------------------------------------------------------------------- the report figure


def _history(lrs):
    n = len(lrs)
    per = 10
    return History({"x": [(i + 0.5) / per for i in range(n)],
                    "loss": [2.0 * 0.97 ** i for i in range(n)], "lr": lrs,
                    "epoch": [float(e + 1) for e in range(n // per)],
                    "epoch_loss": [1.0 / (e + 1) for e in range(n // per)],
                    "val_acc": [min(1.0, 0.5 + 0.1 * e) for e in range(n // per)],
                    "resumed_at": []})


def test_figure_is_a_report_figure():
    pytest.importorskip("matplotlib")
    from lrcore.cli import figure
    fig = figure.build(_history([0.1] * 50), title="MLP on digits (built-in), Adam, batch 32",
                       lr_text="0.1", epochs=5, steps_per_epoch=10)
    main_axes = [ax for ax in fig.axes if ax.get_ylabel()]
    assert [ax.get_ylabel() for ax in main_axes] == ["training loss", "validation accuracy"]
    loss_ax, acc_ax = main_axes
    assert loss_ax.get_yscale() == "log"
    assert acc_ax.get_ylim() == (0.0, 1.0)
    assert loss_ax.get_xlabel() == "" and acc_ax.get_xlabel() == "epoch"
    means = [line for line in loss_ax.lines if line.get_label() == "epoch mean"][0]
    assert list(means.get_xdata()) == [0.5, 1.5, 2.5, 3.5, 4.5]     # the epochs' centres
    title = fig._suptitle.get_text()
    assert "digits" in title and "Adam" in title and "lr 0.1 (constant)" in title

    fig = figure.build(_history([0.1 * (1 - i / 50) for i in range(50)]), title="t",
                       lr_text="Cosine(initial=0.1, steps=50)", epochs=5)
    labels = [ax.get_ylabel() for ax in fig.axes if ax.get_ylabel()]
    assert labels == ["training loss", "validation accuracy", "learning rate"]
    assert "lr Cosine(initial=0.1, steps=50)" in fig._suptitle.get_text()
    assert "constant" not in fig._suptitle.get_text()


def test_an_environment_error_at_import_is_one_line():
    """`LRCORE_ISA=bogus lrcore train`: lrcore refuses to import, and the console script
    (a launcher outside the package) says so in one line."""
    import tomllib
    with open(os.path.join(os.path.dirname(__file__), "..", "pyproject.toml"), "rb") as f:
        scripts = tomllib.load(f)["project"]["scripts"]
    assert scripts == {"lrcore": "_lrcore_launcher:main"}
    if lrcore.backend() != "native":
        pytest.skip("LRCORE_ISA applies to the compiled backend only")
    env = dict(os.environ, LRCORE_ISA="bogus", LRCORE_BACKEND="native")
    r = subprocess.run([sys.executable, "-m", "_lrcore_launcher", "train"], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stdout == ""
    assert len(r.stderr.splitlines()) == 1, r.stderr
    assert r.stderr.startswith("lrcore: error: LRCORE_ISA must be one of ") and "'bogus'" in r.stderr
    env["LRCORE_ISA"] = ""
    r = subprocess.run([sys.executable, "-m", "_lrcore_launcher", "--version"], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout == f"lrcore {lrcore.__version__}\n"


def test_bench_checks_its_json_path_first(tmp_path):
    r = lrcore_cmd("bench", "--json", str(tmp_path / "no" / "b.json"))
    assert r.returncode == 2 and r.stdout == "" and len(r.stderr.splitlines()) == 1
    assert "does not exist" in r.stderr or "compiled backend" in r.stderr


# -------------------------------------------------------------------- lrcore info


def _info(capsys):
    code = main(["info"])
    out, err = capsys.readouterr()
    return code, out, err


def test_info_self_check_names_each_family_on_every_isa(capsys):
    from lrcore import backend
    from lrcore.cli import info
    code, out, err = _info(capsys)
    assert code == 0 and err == "", err
    assert out.startswith(f"lrcore {lrcore.__version__}\n") and "self-check passed" in out
    # every line fits 80 columns, but for the installation's own path (it is as long as it is)
    include = lrcore.get_include()
    assert max(len(line.replace(include, "")) for line in out.splitlines()) <= 80
    assert "cases equal to the numpy twin bit for bit" in out
    sizes = {family: len(make()) for family, make in info.FAMILIES}
    assert list(sizes) == ["float32/float64", "bfloat16/float16", "8-bit state"]
    lines = out.splitlines()
    header = lines.index("self-check passed") - len(backend.available_isas()) - 1
    assert lines[header].split() == ["float32/float64", "bfloat16/float16", "8-bit", "state"]
    for isa, line in zip(backend.available_isas(), lines[header + 1:]):   # a row per isa
        assert line.split() == [isa] + [f"{n}/{n}" for n in sizes.values()]
    # the families cover what they say: every loop variant; every rule in every half layout
    # with both roundings; every rule with 8-bit state, float32 and bfloat16 params
    from lrcore import lowp, quantization, registry
    assert sizes["float32/float64"] == 2 * sum(len(k.cases) for k in registry.KERNEL_SPECS)
    labels = list(info.half_cases())
    for kspec in registry.KERNEL_SPECS:
        for layout in info.half_layouts():
            for rounding in lowp.ROUNDINGS:
                assert sum(lab.startswith(kspec.name + "/") and
                           lab.endswith(f" {'/'.join(layout)} {rounding}") for lab in labels) == 1
    assert {lay for lay in info.half_layouts()} == \
        {tuple(lay) for lay in lowp.LAYOUTS if "float64" not in lay and len(set(lay)) > 1 or
         lay == ("bfloat16",) * 3}
    q8 = list(info.q8_cases())
    for rule in quantization.INT8_RULES:
        for layout in ("float32/float32 nearest", "bfloat16/bfloat16 stochastic",
                       "float32/bfloat16 nearest"):
            assert any(lab.startswith(rule) and lab.endswith(layout) for lab in q8), (rule, layout)
    if backend.name == "native" and platform.machine().lower() in ("x86_64", "amd64"):
        line = next(li for li in out.splitlines() if li.startswith("  cpu features: "))
        flags = open("/proc/cpuinfo").read().split("flags", 1)[1].split("\n")[0].split()
        for name in info.CPU_FEATURES:           # reported as the CPU has it, no others
            assert (f" {name}" in line.split("(absent")[0]) == (name in flags), name
        assert "bf16" not in out                  # lrcore detects no AVX512-BF16
        if "avx512" in backend.available_isas():
            vbmi = "avx512vbmi" in flags and "avx512bw" in flags
            assert ("8-bit decoder:    avx512 build with avx512vbmi byte permutes" in out) == vbmi


def _drift(x):
    """x with its last element's lowest bit flipped (float or 8-bit buffer)."""
    v = x.reshape(-1).view(np.uint8 if x.dtype.itemsize == 1 else
                           np.dtype(f"u{x.dtype.itemsize}"))
    v[-1] ^= 1


def _wrong_float64_lion(monkeypatch):
    from lrcore import reference
    lion = reference.lion

    def wrong(param, grad, *states, **kw):     # only where the float64 family calls it
        lion(param, grad, *states, **kw)
        if param.dtype == np.float64:
            _drift(param)
    monkeypatch.setattr(reference, "lion", wrong)


def _wrong_half_twin(monkeypatch):
    from lrcore import lowp
    twin_step = lowp.twin_step

    def wrong(kernel, names, arrays, **kw):
        twin_step(kernel, names, arrays, **kw)
        if kernel.__name__ == "adam":
            _drift(arrays[0])
    monkeypatch.setattr(lowp, "twin_step", wrong)


def _wrong_q8_twin(monkeypatch):
    from lrcore import quantization
    step_reference = quantization.step_reference

    def wrong(rule, param, grad, states, **kw):
        step_reference(rule, param, grad, states, **kw)
        if rule == "sgd":
            _drift(states["momentum_buffer"].codes)
    monkeypatch.setattr(quantization, "step_reference", wrong)


@pytest.mark.parametrize("family, wrong, names", [
    ("float32/float64", _wrong_float64_lion, "lion/"),
    ("bfloat16/float16", _wrong_half_twin, "adam/"),
    ("8-bit state", _wrong_q8_twin, "sgd "),
], ids=["float", "half", "8-bit"])
def test_info_self_check_fails_on_a_wrong_twin_result(capsys, monkeypatch, family, wrong,
                                                      names):
    """One wrong bit in one family's twin: that family's cases of that rule fail on every
    instruction set and no other; exit code 1, one line on stderr, no traceback."""
    from lrcore import backend
    from lrcore.cli import info
    if wrong is _wrong_half_twin and lrcore.backend() != "native":
        pytest.skip("the numpy backend's half-precision kernels run lrcore.lowp.twin_step "
                    "itself: a wrong twin is wrong on both sides")
    wrong(monkeypatch)
    code, out, err = _info(capsys)
    assert code == 1 and "self-check passed" not in out
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("lrcore info: error: self-check failed: ") and \
        "not equal to the numpy twin bit for bit" in err
    listed = out.split("SELF-CHECK FAILED:\n")[1].splitlines()
    assert listed and all(line.startswith("  [") for line in listed)
    column = [f for f, _ in info.FAMILIES].index(family)
    for isa in backend.available_isas():
        mine = [line for line in listed if line.startswith(f"  [{isa}] ")]
        assert mine and all(f"] {family}: {names}" in line for line in mine), mine
        row = next(li for li in out.splitlines() if li.split()[:1] == [isa]).split()[1:]
        for k, (f, make) in enumerate(info.FAMILIES):
            n = len(make())
            assert row[k] == (f"{n - len(mine)}/{n}" if k == column else f"{n}/{n}")
    assert f"{len(listed)} cases not equal" in err


def test_info_self_check_reports_a_kernel_that_drifts_or_raises(capsys, monkeypatch):
    from lrcore import backend
    adam = backend.kernels.adam

    def off_by_one_ulp(param, grad, *states, **kw):   # a kernel that drifts by one ulp
        adam(param, grad, *states, **kw)
        if param.dtype == np.float32:
            param[-1:] = np.nextafter(param[-1:], np.inf)
        elif param.dtype == np.float16:
            raise RuntimeError("boom")

    monkeypatch.setattr(backend.kernels, "adam", off_by_one_ulp)
    code, out, err = _info(capsys)
    assert code == 1 and len(err.splitlines()) == 1
    listed = out.split("SELF-CHECK FAILED:")[1]
    assert "float32/float64: adam/" in listed and " float32\n" in listed
    assert "bfloat16/float16: adam/" in listed
    assert "(the kernel raised RuntimeError: boom)" in listed
    assert "sgd/" not in listed and "float64\n" not in listed


# -------------------------------------------------------------------- a new user's trial


def test_every_offered_image_format_saves(tmp_path):
    """The formats a bad --plot extension is told to use each write a non-empty file here,
    through the same save the commands use (no external program needed); pgf is offered
    only when its TeX program is on PATH."""
    pytest.importorskip("matplotlib")
    import shutil
    import matplotlib
    from matplotlib.figure import Figure
    from lrcore.cli.paths import image_formats, plot_file, save_figure
    formats = image_formats()
    assert {"png", "pdf", "svg"} <= set(formats)
    assert ("pgf" in formats) == bool(shutil.which(matplotlib.rcParams["pgf.texsystem"]))
    for ext in formats:
        path, fmt = plot_file("--plot", str(tmp_path / f"f.{ext}"))
        fig = Figure(figsize=(2, 2))
        ax = fig.add_subplot()
        ax.plot([0, 1, 2], [3, 1, 2])
        ax.set_title("lr 0.1")
        save_figure(fig, "--plot", path, fmt)
        assert os.path.getsize(path) > 0, ext
    assert (tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("command", [
    ["train", "--epochs", "1"],
    ["schedule", "cosine", "initial=0.1", "--steps", "10"]])
def test_a_plot_format_needing_a_missing_program_is_refused_before_any_work(tmp_path, command):
    """`--plot x.pgf` without xelatex: one line, exit 2, nothing trained or computed (a
    PATH without TeX makes the test the same on every machine)."""
    pytest.importorskip("matplotlib")
    path = tmp_path / "x.pgf"
    env = dict(os.environ, PATH=str(tmp_path))
    r = lrcore_cmd(*command, "--plot", str(path), env=env)
    assert r.returncode == 2 and r.stdout == "", r.stderr
    assert len(r.stderr.splitlines()) == 1 and "Traceback" not in r.stderr
    assert r.stderr.startswith(f"lrcore {command[0]}: error: --plot ")
    assert "the pgf format needs xelatex" in r.stderr and "png" in r.stderr
    assert not path.exists()


def test_a_plot_format_that_fails_here_is_refused_before_any_work(capsys, tmp_path,
                                                                  monkeypatch):
    """Whatever else stops a format from saving (here: a matplotlibrc with text.usetex and
    no LaTeX) is found by rendering a tiny figure first, not after training."""
    matplotlib = pytest.importorskip("matplotlib")
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setitem(matplotlib.rcParams, "text.usetex", True)
    code, out, err = train(capsys, "--plot", str(tmp_path / "x.png"))
    assert code == 2 and out == "" and len(err.splitlines()) == 1, err
    assert "--plot" in err and "png images cannot be written here" in err
    assert not (tmp_path / "x.png").exists()


def test_thread_counts_beyond_the_machines_limit_are_refused_before_any_work(tmp_path):
    """--threads above the compiled core's bound (lrcore.backend.core().max_threads(), which
    scales with the CPUs) is a one-line usage error naming --threads, for train and bench,
    before any training or measuring."""
    if lrcore.backend() != "native":
        pytest.skip("the thread bound is the compiled core's")
    limit = lrcore.backend.core().max_threads()
    for argv in (["train", "--threads", str(limit + 1)],
                 ["train", "--threads", "100000", "--epochs", "1"],
                 ["bench", "--threads", "99999", "--quick"],
                 ["bench", "--threads", f"1,{limit + 1}", "--quick"]):
        r = lrcore_cmd(*argv)
        assert r.returncode == 2 and r.stdout == "", (argv, r.stdout, r.stderr)
        assert len(r.stderr.splitlines()) == 1 and "Traceback" not in r.stderr
        assert r.stderr.startswith(f"lrcore {argv[0]}: error: --threads must be an integer "
                                   f"from 1 to {limit} ")
    r = lrcore_cmd("train", "--threads", str(limit), "--epochs", "1", "--model", "softmax")
    assert r.returncode == 0, r.stderr


def test_threads_help_states_the_default_and_the_limit():
    parser = __import__("argparse").ArgumentParser()
    train_cmd.add_arguments(parser)
    text = {a.dest: a.help for a in parser._actions}["threads"]
    assert "LRCORE_NUM_THREADS, else OMP_NUM_THREADS, else the usable CPUs" in text
    if lrcore.backend() == "native":
        assert f"1 to {lrcore.backend.core().max_threads()}" in text


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_an_option_that_does_not_apply_suggests_only_real_options(capsys, optimizer):
    """`--optimizer lion --eps 1e-3`: the options suggested instead are options of
    `lrcore train` (never --step, --maximize, --dampening...), and each one is accepted."""
    parser = __import__("argparse").ArgumentParser()
    train_cmd.add_arguments(parser)
    real = {s for a in parser._actions for s in a.option_strings}
    suggested = train_cmd.hyperparameter_options(optimizer)
    assert suggested[0] == "--lr" and set(suggested) <= real
    wrong = [o for o, _, _ in train_cmd._hyper_keys() if o not in suggested]
    for option in wrong:
        code, out, err = train(capsys, "--optimizer", optimizer, option, "0.5")
        assert code == 2 and out == "" and len(err.splitlines()) == 1
        listed = re.search(r"\(it takes (.*)\)$", err.strip()).group(1).split(", ")
        assert listed == suggested, err
    expected = {"lion": ["--lr", "--beta1", "--beta2", "--weight-decay"],
                "sgd": ["--lr", "--momentum", "--weight-decay"]}
    if optimizer in expected:
        assert suggested == expected[optimizer]


@pytest.mark.parametrize("argv", [[], ["train"], ["--version"]])
def test_python_m_lrcore_reports_an_environment_error_in_one_line(argv):
    """`LRCORE_ISA=bogus python -m lrcore ...`: the package's import fails before
    lrcore/__main__.py can run; it is still one line on stderr with exit code 2, like the
    `lrcore` script, not runpy's traceback. A plain `import lrcore` still raises."""
    if lrcore.backend() != "native":
        pytest.skip("LRCORE_ISA applies to the compiled backend only")
    env = dict(os.environ, LRCORE_ISA="bogus", LRCORE_BACKEND="native")
    r = lrcore_cmd(*argv, env=env)
    assert r.returncode == 2 and r.stdout == "", r.stderr
    assert len(r.stderr.splitlines()) == 1, r.stderr
    assert r.stderr.startswith("lrcore: error: LRCORE_ISA must be one of ") and "'bogus'" in r.stderr
    env = dict(env, LRCORE_ISA="", LRCORE_BACKEND="bogus")
    r = subprocess.run([sys.executable, "-mlrcore", *argv], env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and r.stderr == (
        "lrcore: error: LRCORE_BACKEND must be 'native' or 'python', got 'bogus'\n")
    r = subprocess.run([sys.executable, "-c", "import lrcore"], env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 1 and "Traceback" in r.stderr
    assert r.stderr.splitlines()[-1].startswith("ImportError: LRCORE_BACKEND must be")


# -------------------------------------------------------------------- element and state types
# (issues 12 and 13: lrcore train --precision / --state-dtype, lrcore bench --dtype ...)

N_PARAMS = 64 * 64 + 64 + 64 * 10 + 10        # the default MLP 64-64-10


def _int8_state_bytes(sizes, nstates=2):
    """Bytes of `nstates` states per param: 8-bit (codes + a float32 absmax per 256) from
    4096 elements on, float32 below."""
    from lrcore import quantization as q
    return nstates * sum(n + 4 * -(-n // q.BLOCK) if n >= q.MIN_ELEMENTS else 4 * n
                         for n in sizes)


@pytest.mark.parametrize("precision, param, state_bytes", [
    ("float32", "float32", 8 * N_PARAMS),
    ("bfloat16", "bfloat16", 4 * N_PARAMS),
    ("bfloat16-sr", "bfloat16", 4 * N_PARAMS),
    ("float16", "float16", 8 * N_PARAMS),      # float16 params keep float32 state
])
def test_precision_trains_and_the_summary_shows_it(capsys, tmp_path, precision, param,
                                                   state_bytes):
    """--precision P: the model's params (and the checkpoint's) are P's dtype, the run
    learns, the header and summary say what is stored, and the state's bytes are those of
    Adam's two moments in the state's dtype."""
    path = tmp_path / "c.lrc"
    code, out, err = train(capsys, "--precision", precision, "--epochs", "2", "--save",
                           str(path))
    assert code == 0 and err == "", err
    lines = out.splitlines()
    assert lines[2].startswith(f"precision {precision}: params and grads {param}, state ")
    assert f"\nprecision {precision}; optimizer state {state_bytes:,} bytes, " in out
    assert final_accuracy(out) > 0.85
    assert max(len(line) for line in lines[:-1]) <= 80
    assert {str(a.dtype) for a in params_in(path)} == {param}


def test_the_default_precision_is_float64_with_its_state_bytes(capsys):
    code, out, _ = train(capsys, "--epochs", "1")
    assert code == 0 and "\nprecision float64; optimizer state " \
        f"{16 * N_PARAMS:,} bytes, float64\n" in out
    assert not out.splitlines()[2].startswith("precision")   # header as before


def test_state_dtype_int8_shows_the_8bit_bytes(capsys, tmp_path):
    """--state-dtype int8 alone trains float32 params; buffers from 4096 elements on hold
    8-bit moments, the smaller ones float32."""
    code, out, err = train(capsys, "--state-dtype", "int8", "--epochs", "2")
    assert code == 0 and err == "", err
    expected = _int8_state_bytes([64 * 64, 64, 64 * 10, 10])
    assert expected < 8 * N_PARAMS / 2
    assert out.splitlines()[2].startswith("precision float32: params and grads float32, "
                                          "state int8")
    assert f"optimizer state {expected:,} bytes, int8" in out
    assert final_accuracy(out) > 0.85


def test_state_dtype_float32_with_bfloat16_params(capsys):
    code, out, err = train(capsys, "--precision", "bfloat16", "--state-dtype", "float32",
                           "--epochs", "1")
    assert code == 0, err
    assert f"optimizer state {8 * N_PARAMS:,} bytes, float32" in out
    assert "params and grads bfloat16, state float32, nearest rounding" in out


@pytest.mark.parametrize("options", [
    ["--precision", "bfloat16-sr"],
    ["--state-dtype", "int8"],
    ["--precision", "bfloat16-sr", "--state-dtype", "int8"],
], ids=["bf16-sr", "int8", "bf16-sr-int8"])
def test_resume_keeps_types_and_the_random_stream_bitwise(capsys, tmp_path, options):
    """A run saved after one epoch and resumed equals the uninterrupted run bit for bit
    (params, stochastic-rounding stream, 8-bit state), and keeps the types without
    repeating the options."""
    if "int8" in options and "bfloat16-sr" in options and \
            "bfloat16" not in __import__("lrcore.bench").bench.int8_param_dtypes():
        pytest.skip("this build's 8-bit state takes float32 params only")
    whole, half = tmp_path / "whole.lrc", tmp_path / "half.lrc"
    assert train(capsys, *options, "--epochs", "2", "--save", str(whole))[0] == 0
    assert train(capsys, *options, "--epochs", "1", "--save", str(half))[0] == 0
    code, out, err = train(capsys, "--resume", str(half), "--epochs", "2", "--save", str(half))
    assert code == 0, err
    assert "resuming at epoch 2" in out
    given = dict(zip(options[::2], options[1::2]))
    assert f"precision {given.get('--precision', 'float32')}: " in out
    assert f"state {given.get('--state-dtype', 'bfloat16')}" in out
    a, b = checkpoint.read(whole)[0], checkpoint.read(half)[0]
    assert sorted(a) == sorted(b)
    for key in a:
        if key.startswith(("param/", "state/")) or "/state/" in key:
            assert a[key].dtype == b[key].dtype and a[key].tobytes() == b[key].tobytes(), key
    assert all(p.tobytes() == q.tobytes() for p, q in zip(params_in(whole), params_in(half)))


def test_resume_refuses_other_types(capsys, tmp_path):
    path = tmp_path / "c.lrc"
    assert train(capsys, "--precision", "bfloat16-sr", "--epochs", "1", "--save", str(path))[0] == 0
    for argv, message in [
            (["--precision", "float32"], "--precision float32 conflicts with the checkpoint's "
                                         "bfloat16-sr"),
            (["--state-dtype", "float32"], "--state-dtype float32 conflicts with the "
                                           "checkpoint's bfloat16 state (trained with "
                                           "--precision bfloat16-sr without --state-dtype"),
            (["--state-dtype", "int8"], "--state-dtype int8 conflicts with the checkpoint's "
                                        "bfloat16 state")]:
        code, out, err = train(capsys, "--resume", str(path), "--epochs", "2", *argv)
        assert code == 2 and out == "" and message in err, err
        assert len(err.strip().splitlines()) == 1
    # the same values are accepted
    code, _, err = train(capsys, "--resume", str(path), "--epochs", "2", "--precision",
                         "bfloat16-sr")
    assert code == 0, err


@pytest.mark.parametrize("precision, state_dtype", [
    ("bfloat16", "bfloat16"), ("bfloat16-sr", "bfloat16"), ("float32", "float32"),
    ("float16", "float32")])
def test_resume_accepts_the_state_dtype_the_checkpoint_has(capsys, tmp_path, precision,
                                                            state_dtype):
    """`--state-dtype S` on --resume of a run saved without it, whose state is S (the
    params' default), resumes, bit for bit as the uninterrupted run."""
    whole, half = tmp_path / "whole.lrc", tmp_path / "half.lrc"
    common = ["--precision", precision, "--hidden", "16"]
    assert train(capsys, *common, "--epochs", "2", "--save", str(whole))[0] == 0
    assert train(capsys, *common, "--epochs", "1", "--save", str(half))[0] == 0
    code, out, err = train(capsys, "--resume", str(half), "--state-dtype", state_dtype,
                           "--epochs", "2", "--save", str(half))
    assert code == 0 and err == "", err
    assert "resuming at epoch 2" in out and f"state {state_dtype}" in out
    a, b = checkpoint.read(whole)[0], checkpoint.read(half)[0]
    assert sorted(a) == sorted(b)
    for key in a:
        if key.startswith(("param/", "state/")) or "/state/" in key:
            assert a[key].dtype == b[key].dtype and a[key].tobytes() == b[key].tobytes(), key


def test_resume_with_another_state_dtype_than_the_checkpoints_is_refused(capsys, tmp_path):
    """--state-dtype naming another state than the checkpoint's (float64 params: float64
    state) is one line, exit 2, before any work."""
    path = tmp_path / "c.lrc"
    assert train(capsys, "--epochs", "1", "--hidden", "16", "--save", str(path))[0] == 0
    before = path.read_bytes()
    for given in ("float32", "bfloat16", "int8"):
        code, out, err = train(capsys, "--resume", str(path), "--state-dtype", given,
                               "--epochs", "2", "--save", str(path))
        assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, err
        assert f"--state-dtype {given} conflicts with the checkpoint's float64 state " \
               f"(trained with --precision float64 without --state-dtype" in err
    assert path.read_bytes() == before


def _not_int8():
    return next(name for name in sorted(OPTIMIZERS) if name not in train_cmd.int8_optimizers())


@pytest.mark.parametrize("argv, message", [
    (["--precision", "bf16"], "argument --precision: invalid choice: 'bf16'"),
    (["--state-dtype", "float16"], "argument --state-dtype: invalid choice: 'float16'"),
    (["--state-dtype", "int8", "--optimizer", "{not_int8}"],
     "--state-dtype int8 does not apply to --optimizer {not_int8}; 8-bit state is for "),
    (["--state-dtype", "int8", "--precision", "float16"],
     "--state-dtype int8 needs float32"),
    (["--state-dtype", "int8", "--precision", "float64"],
     "--state-dtype int8 needs float32"),
    (["--state-dtype", "bfloat16", "--precision", "float32"],
     "--state-dtype bfloat16 needs bfloat16 params (--precision bfloat16 or bfloat16-sr), "
     "got --precision float32"),
    (["--state-dtype", "bfloat16"],
     "--state-dtype bfloat16 needs bfloat16 params (--precision bfloat16 or bfloat16-sr), "
     "got --precision float64 (the default)"),
    (["--state-dtype", "float32"],
     "--state-dtype float32 needs float32, bfloat16 or float16 params"),
    (["--state-dtype", "bfloat16", "--precision", "float16"],
     "--state-dtype bfloat16 needs bfloat16 params"),
])
def test_bad_precision_options_are_one_line_before_any_work(capsys, tmp_path, argv, message):
    argv = [a.format(not_int8=_not_int8()) for a in argv]
    save = tmp_path / "c.lrc"
    code, out, err = train(capsys, *argv, "--save", str(save))
    assert code == 2 and out == "", out
    assert message.format(not_int8=_not_int8()) in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert not save.exists()


def test_bad_precision_option_from_the_console_has_no_traceback():
    r = lrcore_cmd("train", "--state-dtype", "int8", "--optimizer", _not_int8())
    assert r.returncode == 2 and r.stdout == "" and "Traceback" not in r.stderr
    assert len(r.stderr.splitlines()) == 1 and r.stderr.startswith("lrcore train: error: ")


def test_precision_help_says_what_the_model_computes():
    help_text = " ".join(lrcore_cmd("train", "--help").stdout.split())
    for phrase in ("--precision {float64,float32,bfloat16,bfloat16-sr,float16}",
                   "compute in float32 and round each gradient element to nearest",
                   "--state-dtype {float32,bfloat16,int8}", "blocks of 256"):
        assert phrase in help_text, phrase


def test_half_precision_model_computes_in_float32_and_rounds_the_gradient():
    """lrcore.demo.models with bfloat16/float16 params: the loss and the gradient are the
    float32 model's on the widened params, each gradient element rounded to nearest."""
    from lrcore import lowp
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((20, 5)), np.arange(20) % 3
    for dtype in (lowp.bfloat16, np.float16):
        for make in (lambda d: models.MLP(5, 7, 3, dtype=d, seed=1),
                     lambda d: models.SoftmaxRegression(5, 3, dtype=d, seed=1)):
            half, f32 = make(dtype), make(np.float32)
            f32.flat_params[...] = half.flat_params.astype(np.float32)
            g_half, g32 = half.new_grads(), f32.new_grads()
            assert half.loss_and_grad(X, y, g_half) == f32.loss_and_grad(X, y, g32)
            for a, b in zip(g_half, g32):
                assert a.dtype == dtype and np.any(b != 0)
                assert a.tobytes() == lowp.round_nearest(b, dtype).tobytes()
            assert half.accuracy(X, y) == f32.accuracy(X, y)


def _bench_json(tmp_path, *argv):
    import json
    if lrcore.backend() != "native":
        pytest.skip("benchmarks need the compiled backend")
    out = tmp_path / "bench.json"
    r = lrcore_cmd("bench", "--quick", "--threads", "1", "--json", str(out), *argv)
    assert r.returncode == 0, r.stderr
    return r.stdout, json.loads(out.read_text())["rows"]


def test_bench_half_precision_rows(tmp_path):
    """--dtype bfloat16 --rounding stochastic: all-bfloat16 rows at 14 bytes per element
    for Adam, 10 for SGD with momentum (a smoke test: no timing is asserted)."""
    out, rows = _bench_json(tmp_path, "--optimizer", "sgd", "--dtype", "bfloat16",
                            "--rounding", "stochastic")
    assert [(r["layout"], r["elements"], r["bytes_per_element"], r["rounding"]) for r in rows] \
        == [("bf16 sr", 1 << 20, 10, "stochastic"), ("bf16 sr", 1 << 22, 10, "stochastic")]
    assert all(r["gbps"] > 0 and r["fraction"] > 0 and r["probe_on"] == "same buffers"
               for r in rows)
    assert "bf16 sr" in out and "of probe" in out


def test_bench_int8_rows(tmp_path):
    out, rows = _bench_json(tmp_path, "--optimizer", "adamw", "--state-dtype", "int8")
    assert [(r["layout"], r["bytes_per_element"]) for r in rows] == \
        [("f32/f32/int8", 16.0625)] * 2
    assert all(r["gbps"] > 0 and r["fraction"] > 0 and r["probe_on"] == "float32"
               for r in rows)
    assert "f32/f32/int8" in out and "*:" in out


def test_bench_layouts_and_bytes_model():
    from lrcore import bench
    adam = bench.spec("adam")
    case = adam.cases[0]
    expect = {("float32", "float32", "float32"): 28, ("bfloat16", "bfloat16", "bfloat16"): 14,
              ("bfloat16", "bfloat16", "float32"): 22, ("float16", "float16", "float32"): 22,
              ("float32", "bfloat16", "float32"): 26, ("float32", "float32", "int8"): 16.0625,
              ("bfloat16", "bfloat16", "int8"): 10.0625}
    for (p, g, s), nbytes in expect.items():
        assert bench.Layout(p, g, s).bytes_per_element(adam, case) == nbytes
    assert [lay.rounding for lay in bench.layouts("bfloat16")] == ["nearest", "stochastic"]
    assert [lay.rounding for lay in bench.layouts("float32", "bfloat16")] == [None]
    assert bench.layouts("float16")[0].state == "float32"
    with pytest.raises(ValueError, match="not a supported layout"):
        bench.layouts("float32", state_dtype="bfloat16")


@pytest.mark.parametrize("argv, message", [
    (["--dtype", "bf16"], "argument --dtype: invalid choice: 'bf16'"),
    (["--state-dtype", "float16"], "argument --state-dtype: invalid choice: 'float16'"),
    (["--dtype", "float16", "--state-dtype", "bfloat16"],
     "param float16, grad float16, state bfloat16 is not a supported layout"),
    (["--dtype", "float32", "--state-dtype", "bfloat16"], "is not a supported layout"),
    (["--rounding", "stochastic"], "--rounding applies when params or state are stored in "
                                   "bfloat16 or float16"),
    (["--state-dtype", "int8", "--optimizer", "{not_int8}"],
     "--state-dtype int8 does not apply to --optimizer {not_int8}"),
    (["--state-dtype", "int8", "--dtype", "float64"],
     "--dtype float64 with --state-dtype int8: 8-bit state takes float32 or bfloat16 params"),
    (["--dtype", "float16", "--state-dtype", "int8"],
     "--dtype float16 with --state-dtype int8: 8-bit state takes float32 or bfloat16 params"),
    (["--state-dtype", "int8", "--grad-dtype", "bfloat16"],
     "--grad-dtype bfloat16 with --state-dtype int8: 8-bit state takes grads of the params' "
     "type (float32, the default --dtype)"),
    (["--dtype", "bfloat16", "--grad-dtype", "float32", "--state-dtype", "int8"],
     "--grad-dtype float32 with --state-dtype int8: 8-bit state takes grads of the params' "
     "type (--dtype bfloat16)"),
])
def test_bench_bad_layout_options_are_one_line_before_any_work(capsys, tmp_path, argv,
                                                                message):
    if lrcore.backend() != "native":
        pytest.skip("benchmarks need the compiled backend")
    not_int8 = next(label for label, kspec, _ in __import__("lrcore.bench").bench.BENCH_CASES
                    if not __import__("lrcore.bench").bench.int8_states(kspec.name))
    argv = [a.format(not_int8=not_int8) for a in argv]
    try:
        code = main(["bench", *argv, "--json", str(tmp_path / "b.json")])
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and message.format(not_int8=not_int8) in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    if "--optimizer" not in argv:       # the message names only options that were given
        assert "--optimizer" not in err, err
    assert not (tmp_path / "b.json").exists()


@pytest.mark.slow
def test_8bit_adamw_trains_within_one_point_of_float32():
    """The README's 8-bit claim (issue 13), through the command line: the digits MLP
    (64-256-10) with `lrcore train --optimizer adamw --state-dtype int8` ends within 1
    percentage point of float32 state, holding less than 40% of its state bytes."""
    from lrcore.demo import q8_quality, runs
    curves = {name: runs.train_curve(q8_quality.options(name, **q8_quality.SETTINGS))
              for name in ("float32 state", "8-bit state")}
    f32, q8 = curves["float32 state"], curves["8-bit state"]
    assert f32.final > 0.95 and len(f32.val_acc) == q8_quality.SETTINGS["epochs"]
    assert abs(q8.final - f32.final) <= 0.01
    assert q8.state_bytes < 0.4 * f32.state_bytes


# ------------------------------------------------- found by a review of the command line


def test_resume_refuses_a_different_val_fraction_and_a_target_without_data(capsys, tmp_path):
    """--val-fraction and --target given with --resume were silently ignored (the run kept
    the checkpoint's split and labels): a different split is a conflict, --target without
    --data names a column of the checkpoint's data (none for the built-in digits)."""
    path = tmp_path / "v.lrc"
    assert train(capsys, "--epochs", "1", "--val-fraction", "0.3", "--save", str(path))[0] == 0
    code, out, err = train(capsys, "--resume", str(path), "--epochs", "2",
                           "--val-fraction", "0.5")
    assert code == 2 and out == "" and len(err.splitlines()) == 1, err
    assert "--val-fraction 0.5 conflicts with the checkpoint's 0.3" in err
    code, out, err = train(capsys, "--resume", str(path), "--epochs", "2", "--target", "x")
    assert code == 2 and out == "" and "--target needs --data" in err, err
    code, out, err = train(capsys, "--resume", str(path), "--epochs", "2",
                           "--val-fraction", "0.3")
    assert code == 0 and "539 val samples" in out, err


def test_resume_with_target_alone_reads_that_column_of_the_saved_data(capsys, tmp_path):
    csv = tmp_path / "t.csv"
    rng = np.random.default_rng(1)
    rows = ["a,b,c,d"] + [f"{x:.3f},{y:.3f},{int(x > 0)},{int(y > 0)}"
                          for x, y in rng.normal(size=(120, 2))]
    csv.write_text("\n".join(rows) + "\n")
    path = tmp_path / "t.lrc"
    assert train(capsys, "--data", str(csv), "--target", "c", "--epochs", "1",
                 "--save", str(path))[0] == 0
    code, _, err = train(capsys, "--resume", str(path), "--epochs", "2", "--target", "nope")
    assert code == 2 and "no column named 'nope'" in err, err


@pytest.mark.parametrize("argv, message", [
    (["--save", "{d}/x.png", "--plot", "{d}/x.png"],
     "--save and --plot name the same file, '{d}/x.png'; --plot would overwrite it"),
    (["--data", "{d}/data.csv", "--save", "{d}/../{b}/data.csv"],
     "--data and --save name the same file, '{d}/../{b}/data.csv'; --save would overwrite it"),
    (["--data", "{d}/data.csv", "--plot", "{d}/data.csv"],
     "--data and --plot name the same file"),
])
def test_an_output_file_that_is_an_input_or_the_other_output_is_refused(capsys, tmp_path,
                                                                         argv, message):
    """`--data my.csv --save my.csv` replaced the user's data by a checkpoint, and `--save
    x.png --plot x.png` wrote the figure over the checkpoint while the summary listed both."""
    pytest.importorskip("matplotlib")
    data = tmp_path / "data.csv"
    data.write_text("a,b\n1,0\n2,1\n3,0\n4,1\n5,0\n")
    before = data.read_bytes()
    fill = dict(d=tmp_path, b=tmp_path.name)
    code, out, err = train(capsys, "--epochs", "1", *[a.format(**fill) for a in argv])
    assert code == 2 and out == "" and len(err.splitlines()) == 1, err
    assert message.format(**fill) in err
    assert data.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["data.csv"]


def test_resume_may_save_over_its_own_checkpoint_still(capsys, tmp_path):
    path = tmp_path / "r.lrc"
    assert train(capsys, "--epochs", "1", "--model", "softmax", "--save", str(path))[0] == 0
    code, _, err = train(capsys, "--resume", str(path), "--epochs", "2", "--save", str(path))
    assert code == 0, err


def test_a_model_too_large_for_memory_is_one_line_naming_its_cause(capsys, tmp_path):
    """A huge --hidden, or a label so large that it makes a billion classes, was a
    MemoryError traceback."""
    code, out, err = train(capsys, "--hidden", str(10**12), "--epochs", "1")
    assert code == 2 and out == "" and len(err.splitlines()) == 1, err
    assert "the model does not fit in memory" in err and "--hidden 1000000000000" in err
    csv = tmp_path / "big.csv"
    csv.write_text("a,b,label\n1,2,0\n3,4,1000000000\n5,6,0\n7,8,1\n9,1,0\n")
    code, out, err = train(capsys, "--data", str(csv), "--epochs", "1")
    assert code == 2 and out == "" and len(err.splitlines()) == 1, err
    assert "its largest label, 1000000000, makes 1000000001" in err


def test_features_too_large_to_standardise_are_a_data_error(capsys, tmp_path):
    """Finite features whose mean overflows float64 gave numpy warnings on stderr and then
    'diverged ... try a smaller --lr', blaming the learning rate."""
    path = tmp_path / "huge.npz"
    np.savez(path, X=np.array([[1e308, 1.0]] * 3 + [[-1e308, 0.0]] * 2),
             y=np.array([0, 1, 0, 1, 0]))
    code, out, err = train(capsys, "--data", str(path), "--epochs", "1")
    assert code == 2 and out == "" and len(err.splitlines()) == 1, err
    assert "overflows float64" in err and "rescale the data" in err and "--lr" not in err


def test_schedule_rows_of_a_very_long_schedule_are_steps_it_has(capsys):
    """--rows of a schedule beyond 2**53 steps were computed in float: the last row was
    step N, one past the end (and the middle rows other steps than the evenly spaced)."""
    n = 10**20
    code, out, _ = schedule(capsys, "cosine", "initial=0.1", "--steps", str(n), "--rows", "3")
    assert code == 0
    assert [int(line.split()[0]) for line in out.splitlines()[2:]] == [0, n // 2, n - 1]


def test_schedule_plot_of_more_steps_than_memory_holds_is_drawn(capsys, tmp_path):
    """--plot evaluated every step: 10**15 steps was a MemoryError turned into an error
    (10**9 ran for minutes in gigabytes); it now draws a bounded number of exact points."""
    pytest.importorskip("matplotlib")
    code, out, err = schedule(capsys, "cosine", "initial=0.1", "--steps", str(10**15),
                              "--plot", str(tmp_path / "s.png"))
    assert code == 0 and err == "" and "1000000000000000 steps drawn to" in out, err
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"


def test_a_memory_error_anywhere_is_one_line(capsys, monkeypatch):
    from lrcore.cli import info

    def no_memory(args):
        raise MemoryError("Unable to allocate 7.28 TiB")
    monkeypatch.setattr(info, "run", no_memory)
    assert main(["info"]) == 1
    out, err = capsys.readouterr()
    assert err == "lrcore info: error: out of memory (Unable to allocate 7.28 TiB); try " \
                  "smaller sizes\n"


@pytest.mark.parametrize("argv, message", [
    (["--hidden", "0"], "--hidden must be an integer >= 1, got 0"),
    (["--momentum", "0.9"], "--momentum does not apply to --optimizer adam"),
    (["--lr", "nan"], "--lr must be a finite number >= 0, got nan"),
    (["--beta1", "2"], "--beta1 must be in [0, 1), got 2.0"),
    (["--seed", "-1"], "--seed must be an integer in [0, 2**63), got -1"),
    (["--val-fraction", "nan"], "--val-fraction must be a number strictly between 0 and 1"),
    (["--progress"], "--progress is not supported with --distributed"),
])
def test_distributed_checks_the_options_as_one_process_does(argv, message):
    """`lrcore train --distributed` took --hidden 0 as 64 and ignored --momentum with adam;
    a bad --lr or --beta1 came after the header as 'training failed' (exit 1), and other
    errors did not name the option (`n_hidden=-3`, `expected non-negative integer`)."""
    pytest.importorskip("mpi4py")
    r = lrcore_cmd("train", "--distributed", "--epochs", "1", *argv)
    assert r.returncode == 2 and r.stdout == "", (r.stdout, r.stderr)
    assert r.stderr.splitlines() == [f"lrcore train: error: {r.stderr.split('error: ')[1]}"
                                     .rstrip()] and message in r.stderr, r.stderr


def test_a_data_file_that_is_not_utf8_text_is_named(capsys, tmp_path):
    """A binary or Latin-1 CSV gave only "'utf-8' codec can't decode byte 0xe9 in position
    30: invalid continuation byte", naming neither the file nor the option."""
    path = tmp_path / "latin1.csv"
    path.write_bytes(b"a,b,label\n1,2,0\n3,4,1\n5,6,0\n7,\xe9,1\n")
    code, out, err = train(capsys, "--data", str(path))
    assert code == 2 and out == "" and len(err.splitlines()) == 1, err
    assert f"data file '{path}' is not a UTF-8 text CSV file (byte e9 at offset 30" in err


def test_resume_in_mid_epoch_refuses_another_batch_size(capsys, tmp_path, monkeypatch):
    """A checkpoint written in the middle of an epoch (Ctrl-C) knows its position in
    mini-batches of its own size: resumed with another --batch-size, the run's length was
    miscounted (a schedule fit to 225 steps for a run of 183, '992 samples' for 990)."""
    cut = tmp_path / "cut.lrc"
    original = _interrupt_at_call(monkeypatch, 60)
    assert train(capsys, "--epochs", "2", "--save", str(cut))[0] == 130
    monkeypatch.setattr(models.MLP, "loss_and_grad", original)
    code, out, err = train(capsys, "--resume", str(cut), "--batch-size", "8")
    assert code == 2 and out == "" and len(err.splitlines()) == 1, err
    assert "--batch-size 8 differs from the checkpoint's 32, which stopped in the middle of " \
           "epoch 2 (after 14 of 45 mini-batches)" in err
    code, out, err = train(capsys, "--resume", str(cut), "--batch-size", "32")
    assert code == 0 and "completed: 31 steps, 990 samples" in out, err
    # at an epoch's end the batch size may change
    whole = tmp_path / "whole.lrc"
    assert train(capsys, "--epochs", "1", "--save", str(whole))[0] == 0
    code, out, err = train(capsys, "--resume", str(whole), "--epochs", "2", "--batch-size", "8")
    assert code == 0 and "completed: 180 steps, 1,438 samples" in out, err


def test_bench_measures_a_repeated_thread_count_once(monkeypatch, capsys):
    from lrcore import bench
    if lrcore.backend() != "native":
        pytest.skip("benchmarks need the compiled backend")
    seen = {}

    def fake_run(**kwargs):
        seen.update(kwargs)
        return []
    monkeypatch.setattr(bench, "run", fake_run)
    monkeypatch.setattr(bench, "format_table", lambda rows: "")
    assert main(["bench", "--quick", "--threads", "1,2,1"]) == 0
    assert seen["threads"] == (1, 2)


def test_plot_of_a_finished_checkpoint_is_drawn_though_nothing_is_left_to_train(capsys,
                                                                              tmp_path):
    """`--resume done.lrc --plot f.png` on a completed run said 'nothing to do', exited 0
    and wrote no figure; the history is in the checkpoint, so the figure is drawn."""
    pytest.importorskip("matplotlib")
    path, png = tmp_path / "done.lrc", tmp_path / "f.png"
    assert train(capsys, "--epochs", "1", "--model", "softmax", "--save", str(path))[0] == 0
    code, out, err = train(capsys, "--resume", str(path), "--plot", str(png))
    assert code == 0 and "nothing to do" in out and f"wrote plot {png}" in out, err
    assert png.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("argv, message", [
    (["--lr", "0.5", "--schedule", "cosine", "initial=0.01"],
     "--lr 0.5 conflicts with --schedule cosine initial=0.01"),
    (["--lr", "0.5", "--schedule", "onecycle", "max-value=0.2"],
     "--lr 0.5 conflicts with --schedule onecycle max_value=0.2"),
    (["--lr", "0.5", "--schedule", "constant", "value=0.1"],
     "--lr 0.5 does not apply to --schedule constant"),
    (["--lr", "0.5", "--schedule", "linear", "start=0.1", "end=0"],
     "--lr 0.5 does not apply to --schedule linear"),
])
def test_lr_that_a_schedule_would_ignore_is_refused(capsys, tmp_path, argv, message):
    """`--lr 0.5 --schedule cosine initial=0.01` trained with initial 0.01 and never said
    that --lr was ignored (as with a schedule that has no initial value to fill)."""
    save = tmp_path / "c.lrc"
    code, out, err = train(capsys, "--epochs", "1", *argv, "--save", str(save))
    assert code == 2 and out == "" and len(err.splitlines()) == 1, err
    assert err.startswith("lrcore train: error: ") and message in err
    assert not save.exists()


def test_lr_fills_a_schedule_or_agrees_with_it(capsys):
    code, out, err = train(capsys, "--epochs", "1", "--lr", "0.02", "--schedule", "cosine")
    assert code == 0 and "Cosine(initial=0.02, steps=45)" in out, err
    code, out, err = train(capsys, "--epochs", "1", "--lr", "0.02", "--schedule", "cosine",
                           "initial=2e-2")
    assert code == 0 and "Cosine(initial=0.02, steps=45)" in out, err


def test_resume_refuses_another_seed(capsys, tmp_path):
    """--seed with --resume only re-seeded the shuffling (from the current epoch on, so an
    epoch cut by Ctrl-C could visit samples twice) while --help said it seeds the split and
    the initial weights too, which come from the checkpoint. Now another seed is refused;
    the checkpoint's own is accepted and continues bitwise."""
    whole, half = tmp_path / "whole.lrc", tmp_path / "half.lrc"
    assert train(capsys, "--epochs", "2", "--seed", "3", "--save", str(whole))[0] == 0
    assert train(capsys, "--epochs", "1", "--seed", "3", "--save", str(half))[0] == 0
    before = half.read_bytes()
    code, out, err = train(capsys, "--resume", str(half), "--epochs", "2", "--seed", "4",
                           "--save", str(half))
    assert code == 2 and out == "" and len(err.splitlines()) == 1, err
    assert "--seed 4 conflicts with the checkpoint's 3" in err
    assert half.read_bytes() == before
    code, out, err = train(capsys, "--resume", str(half), "--epochs", "2", "--seed", "3",
                           "--save", str(half))
    assert code == 0, err
    assert all(a.tobytes() == b.tobytes() for a, b in zip(params_in(whole), params_in(half)))
    parser = __import__("argparse").ArgumentParser()
    train_cmd.add_arguments(parser)
    help_text = {a.dest: a.help for a in parser._actions}["seed"]
    assert "with --resume" in help_text and "checkpoint" in help_text


def test_save_of_a_finished_checkpoint_is_written_though_nothing_is_left_to_train(capsys,
                                                                                  tmp_path):
    """`--resume done.lrc --save other.lrc` on a completed run said 'nothing to do' and
    wrote nothing, though --save was asked for; the checkpoint is now written (a copy of
    the run it holds, which resumes as the original does) and the output says so."""
    done, other = tmp_path / "done.lrc", tmp_path / "other.lrc"
    assert train(capsys, "--epochs", "1", "--model", "softmax", "--save", str(done))[0] == 0
    code, out, err = train(capsys, "--resume", str(done), "--save", str(other))
    assert code == 0 and "nothing to do" in out and f"wrote checkpoint {other}" in out, err
    assert all(a.tobytes() == b.tobytes() for a, b in zip(params_in(done), params_in(other)))
    a = train(capsys, "--resume", str(done), "--epochs", "2")
    b = train(capsys, "--resume", str(other), "--epochs", "2")
    assert a[0] == b[0] == 0 and final_accuracy(a[1]) == final_accuracy(b[1])


def test_summary_counts_one_step_in_the_singular(capsys):
    code, out, err = train(capsys, "--epochs", "1", "--batch-size", "2000")
    assert code == 0 and "completed: 1 step, 1,438 samples in " in out, err


def test_schedule_table_columns_stay_aligned_past_8_digits(capsys):
    """Steps of 9 digits and more overflowed the 8-column step field: the value column
    moved right on those rows and no longer lined up with the header."""
    code, out, _ = schedule(capsys, "cosine", "initial=0.1", "--steps", str(10**12),
                            "--rows", "3")
    lines = out.splitlines()[1:]
    assert code == 0 and [line.split()[0] for line in lines] == \
        ["step", "0", "500000000000", "999999999999"]
    starts = {len(line) - len(line.rstrip().split()[-1]) for line in lines}
    assert len(starts) == 1, out
    code, out, _ = schedule(capsys, "cosine", "initial=0.1", "--steps", "3")
    assert out.splitlines()[1] == "    step  value" and out.splitlines()[2] == "       0  0.1"


def test_a_warmup_longer_than_the_run_is_refused_before_training(capsys, tmp_path):
    save = tmp_path / "c.lrc"
    code, out, err = train(capsys, "--epochs", "1", "--schedule", "warmup_cosine",
                           "warmup_steps=1000", "--save", str(save))
    assert code == 2 and out == "" and len(err.splitlines()) == 1, err
    assert "warmup_steps=1000 leaves 0 of the run's 45 steps for what follows the warm-up" \
        in err
    assert not save.exists()


def test_warmup_cosine_left_without_steps_ends_with_the_run(capsys):
    """warmup_cosine's `steps` count the cosine after the warm-up: left out, they are the
    run's steps less the warm-up (not the run's, which ran the schedule warmup_steps past
    the run's end, so the lr never reached its floor); a warm-up longer than what is left
    is refused naming both; the end-of-schedule warning counts the warm-up."""
    code, out, err = train(capsys, "--epochs", "1", "--schedule", "warmup_cosine",
                           "warmup_steps=5")
    assert code == 0, err
    assert "Warmup(schedule=Cosine(initial=0.001, steps=40), warmup_steps=5)" in out
    code, out, err = train(capsys, "--epochs", "1", "--schedule", "warmup_cosine",
                           "warmup_steps=30")
    assert code == 2 and out == "" and len(err.splitlines()) == 1
    assert "warmup_steps=30 leaves 15 of the run's 45 steps" in err
    code, out, err = train(capsys, "--epochs", "4", "--schedule", "warmup_cosine",
                           "warmup_steps=20", "steps=160")
    assert code == 0 and "ends at step" not in out + err
    code, out, err = train(capsys, "--epochs", "4", "--schedule", "warmup_cosine",
                           "warmup_steps=20", "steps=100")
    assert code == 0
    assert "schedule ends at step 120, before the run's 180" in " ".join((out + err).split())
