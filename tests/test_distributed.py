"""lrcore.distributed under real MPI: each test launches `mpiexec -n W` on a script in tests/mpi/.

The scripts compare every rank bitwise with a single-process optimizer and abort on the first
difference; these tests check the exit status and the lines rank 0 prints. They skip when
mpi4py or an mpiexec is missing (pip install "lrcore[mpi]").
"""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("mpi4py")
MPIEXEC = shutil.which("mpiexec") or (os.path.join(os.path.dirname(sys.executable), "mpiexec")
                                      if os.path.exists(os.path.join(os.path.dirname(sys.executable),
                                                                     "mpiexec")) else None)
if MPIEXEC is None:
    pytest.skip("no mpiexec on PATH (pip install \"lrcore[mpi]\")", allow_module_level=True)

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "mpi", "check_sharded.py")
WORLDS = [int(w) for w in os.environ.get("LRCORE_TEST_WORLDS", "1,2,3,4").split(",")]


def mpiexec_command(n):
    """mpiexec -n n, with the flags Open MPI needs as root / on few cores (MPICH needs none)."""
    cmd = [MPIEXEC, "-n", str(n)]
    try:
        version = subprocess.run([MPIEXEC, "--version"], capture_output=True, text=True,
                                 timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        version = ""
    if "Open MPI" in version or "OpenRTE" in version:
        cmd += ["--oversubscribe"] + (["--allow-run-as-root"] if os.geteuid() == 0 else [])
    return cmd


def run(n, *args, timeout=240):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run(mpiexec_command(n) + [sys.executable, "-m", "mpi4py", *args],
                          capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, f"mpiexec -n {n} {args} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.mark.parametrize("world", WORLDS)
def test_every_rule_bitwise_against_one_process(world):
    # every rule on every world size; the table's option variants too, except on 4 ranks
    # (4 processes on CI's 2 cores are slow; the variants run on 1, 2 and 3)
    out = run(world, SCRIPT, "rules" if world < 4 else "rules-defaults")
    assert "runs bitwise on" in out, out
    assert "FAIL" not in out


@pytest.mark.parametrize("world", WORLDS)
def test_half_precision_and_8bit_state_bitwise_against_one_process(world):
    # every class with bfloat16 params, grads and state and stochastic rounding; float16
    # params; float32 params with half grads; 8-bit state for every INT8_RULES class (float32
    # and bfloat16 params): params after every step, the averaged grads, the consolidated
    # state dict and the state bytes, bitwise against one process
    # (Adam, AdamW and SGD only on 4 ranks: 4 processes on CI's 2 cores are slow)
    out = run(world, SCRIPT, "lowp" if world < 4 else "lowp-some")
    assert "half-precision / 8-bit runs bitwise on" in out, out
    assert "FAIL" not in out


@pytest.mark.parametrize("saved,loaded", [(2, 1), (2, 3), (2, 4), (3, 2)])
def test_checkpoint_saved_on_w_continues_on_w_prime(tmp_path, saved, loaded):
    if max(saved, loaded) > max(WORLDS):
        pytest.skip(f"LRCORE_TEST_WORLDS={os.environ.get('LRCORE_TEST_WORLDS')}")
    out = run(saved, SCRIPT, "save", str(tmp_path))
    assert f"with {saved} rank(s)" in out, out
    out = run(loaded, SCRIPT, "load", str(tmp_path))
    assert f"saved with {saved} rank(s) loaded on {loaded}" in out, out
    assert f"8-bit stochastic-rounding checkpoint loaded on {loaded}" in out, out


@pytest.mark.parametrize("world", sorted({min(2, max(WORLDS)), max(WORLDS)}))
def test_faults_raise_on_every_rank(world):
    out = run(world, SCRIPT, "faults")
    assert "raises on every rank" in out, out
    if world > 1:
        assert "the others raise after" in out, out


@pytest.mark.parametrize("world", sorted({1, min(3, max(WORLDS))}))
def test_mismatched_params_detected_at_construction(world):
    out = run(world, SCRIPT, "mismatch")
    assert "caught at construction" in out, out
    # average / bucket_elements differing on one rank: the same ValueError on every rank;
    # timeout, overlap and num_threads may differ and the steps equal one process's
    assert "timeout, overlap and num_threads may differ" in out, out


@pytest.mark.parametrize("world", sorted({min(2, max(WORLDS)), max(WORLDS)}))
def test_refused_input_raises_on_every_rank_and_changes_nothing(tmp_path, world):
    # grads sharing memory with a param and read-only params (step, load, gather_params);
    # state dicts and checkpoints that differ between ranks or hold a negative absmax in a
    # piece another rank owns: an error on every rank (each rank's params, state shard and
    # step bitwise as before), then steps bitwise equal to one process
    out = run(world, SCRIPT, "refusals", str(tmp_path))
    assert "before any bucket is stepped" in out, out
    assert "negative absmax anywhere are refused by every rank" in out, out
    assert "refused by every rank at load" in out, out


@pytest.mark.parametrize("world", sorted({min(2, max(WORLDS)), max(WORLDS)}))
def test_set_differing_between_ranks_refused_at_step(world):
    # set() (a number or a schedule) called on one rank only: the next step is the same
    # ValueError on every rank naming the group and hyperparameter, nothing changes, and
    # after a consistent set() the steps equal one process
    out = run(world, SCRIPT, "set-mismatch")
    assert "consistent set() continues as one process" in out, out


def test_single_rank_in_process():
    """W = 1 without mpiexec (MPI singleton): the layout cuts blocks like one process."""
    import lrcore
    from lrcore.distributed import ShardedOptimizer
    from lrcore.distributed._layout import SUMSQ_BLOCK, Layout, block_sumsq
    rng = np.random.default_rng(0)
    p = [rng.standard_normal(n).astype(np.float32) for n in (3 * SUMSQ_BLOCK + 9, 5)]
    q = [x.copy() for x in p]
    opt = ShardedOptimizer(p, lrcore.Adam, lr=0.01, bucket_elements=SUMSQ_BLOCK)
    ref = lrcore.Adam(q, lr=0.01)
    for t in range(3):
        g = [rng.standard_normal(x.shape).astype(np.float32) for x in p]
        assert opt.step(g, clip_norm=1.0) and ref.step(g, clip_norm=1.0)
        assert opt.last_grad_norm == ref.last_grad_norm
        for a, b in zip(p, q):
            np.testing.assert_array_equal(a, b)
    # the blocks' partial sums, combined in order, are the single-process sum of squares
    x = rng.standard_normal(2 * SUMSQ_BLOCK + 13)
    out = np.empty(3)
    block_sumsq(x, out)
    ref2 = lrcore.SGD([np.zeros_like(x)], lr=0.1)
    ref2.step([x], clip_norm=1e300)
    assert float(np.cumsum(out)[-1]) == ref2.last_grad_norm ** 2 or \
        np.sqrt(float(np.cumsum(out)[-1])) == ref2.last_grad_norm
    # rank cuts lie on the block grid of each param and split the range evenly
    lay = Layout([3 * SUMSQ_BLOCK + 9, 5, 40000], [np.dtype(np.float32)] * 3, [0, 0, 0], 4,
                 1 << 30)
    (_, _, _, cuts), = lay.ranges
    assert cuts[0] == 0 and cuts[-1] == 3 * SUMSQ_BLOCK + 14 + 40000
    total = cuts[-1]
    for r in range(4):
        assert abs((cuts[r + 1] - cuts[r]) - total / 4) <= SUMSQ_BLOCK
        c = cuts[r]
        assert c in (0, 3 * SUMSQ_BLOCK + 14) or (c < 3 * SUMSQ_BLOCK + 9 and c % SUMSQ_BLOCK == 0) \
            or (c >= 3 * SUMSQ_BLOCK + 14 and (c - 3 * SUMSQ_BLOCK - 14) % SUMSQ_BLOCK == 0) \
            or c == total


def test_missing_mpi4py_names_the_extra(monkeypatch):
    import builtins
    from lrcore.distributed import _comm
    real = builtins.__import__

    def fake(name, *a, **k):
        if name.startswith("mpi4py"):
            raise ImportError("No module named 'mpi4py'")
        return real(name, *a, **k)
    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(ImportError, match=r'pip install "lrcore\[mpi\]"'):
        _comm.import_mpi()


TRAIN = os.path.join(HERE, "mpi", "check_train.py")


def _lrcore_cli_has_distributed():
    from lrcore.cli import train
    import argparse
    parser = argparse.ArgumentParser()
    train.add_arguments(parser)
    return any("--distributed" in a.option_strings for a in parser._actions)


def test_train_distributed_reaches_the_one_process_accuracy():
    if not _lrcore_cli_has_distributed():
        pytest.skip("lrcore train has no --distributed hook")
    accuracy = {}
    for world in (1, 2):
        out = run(world, TRAIN, "ok")
        accuracy[world] = float(out.split("RESULT ok accuracy ")[1].split()[0])
    # the same mini-batches and the same mean gradient, summed in another order
    assert accuracy[1] > 0.85 and abs(accuracy[2] - accuracy[1]) <= 0.02, accuracy


def test_train_distributed_bfloat16_with_8bit_state():
    """`--precision bfloat16-sr --state-dtype int8` through lrcore.distributed.train.run on 2
    ranks: bfloat16 params and grads, 8-bit Adam state, stochastic rounding."""
    out = run(2, TRAIN, "lowp")
    assert "bfloat16-sr: params and grads bfloat16, state int8" in out, out
    assert float(out.split("RESULT lowp accuracy ")[1].split()[0]) > 0.85, out


@pytest.mark.parametrize("mode,world", [("fail", max(2, min(3, max(WORLDS)))), ("handler", 2)])
def test_train_distributed_error_on_one_rank_ends_every_rank(mode, world):
    if not _lrcore_cli_has_distributed():
        pytest.skip("lrcore train has no --distributed hook")
    out = run(world, TRAIN, mode)
    assert f"RESULT {mode} one message" in out, out


def test_readme_distributed_example_runs(tmp_path, monkeypatch):
    """The README's Distributed example, as one rank (plain python is an MPI singleton)."""
    import re
    readme = open(os.path.join(HERE, "..", "README.md"), encoding="utf-8").read()
    match = re.search(r"## Distributed.*?```python\n(.*?)```", readme, re.S)
    if match is None:
        pytest.skip("README has no Distributed section yet")
    monkeypatch.chdir(tmp_path)
    scope = {}
    exec(compile(match.group(1), "README Distributed", "exec"), scope)
    assert scope["opt"].step_count == 1
    assert sorted(os.listdir(tmp_path))[0] == "ckpt.lrc" and len(os.listdir(tmp_path)) == 2


def test_bad_input_names_the_argument_and_changes_nothing():
    """One rank (an MPI singleton): construction and step() refuse bad input with the
    argument's name, before anything is modified."""
    import lrcore
    from lrcore.distributed import ShardedOptimizer
    a = np.arange(40, dtype=np.float32)
    with pytest.raises(ValueError, match=r"params\[0\] and params\[1\] share memory"):
        ShardedOptimizer([a, a[10:20]], lrcore.Adam)
    with pytest.raises(TypeError, match=r"params\[1\] must have dtype"):
        ShardedOptimizer([a, np.zeros(3, np.int32)], lrcore.Adam)
    with pytest.raises(ValueError, match="bucket_elements"):
        ShardedOptimizer([a], lrcore.Adam, bucket_elements=0)
    with pytest.raises(ValueError, match="timeout"):
        ShardedOptimizer([a], lrcore.Adam, timeout=float("inf"))
    with pytest.raises(TypeError, match="optimizer_class"):
        ShardedOptimizer([a], "adam")
    p = [np.linspace(-1, 1, 50).astype(np.float32), np.ones((2, 3))]
    opt = ShardedOptimizer(p, lrcore.Adam, lr=0.1)
    before = [x.copy() for x in p]
    for grads, kind, text in (
            ([np.ones(50, np.float32)], ValueError, "got 1 grads for 2 params"),
            ([np.ones(50, np.float32), np.ones((3, 2))], ValueError, r"grads\[1\] is float64 \(3, 2\)"),
            ([np.ones(50, np.float64), np.ones((2, 3))], ValueError, r"grads\[0\] is float64"),
            ([np.ones(50, np.float32), [1.0] * 6], TypeError, r"grads\[1\] must be a numpy")):
        with pytest.raises(kind, match=text):
            opt.step(grads)
    with pytest.raises(ValueError, match="clip_norm"):
        opt.step([np.ones(50, np.float32), np.ones((2, 3))], clip_norm=-1.0)
    for x, y in zip(p, before):
        np.testing.assert_array_equal(x, y)
    assert opt.step_count == 0
    with pytest.raises(ValueError, match="root"):
        opt.consolidated_state_dict(root=1)


def test_train_distributed_without_mpi4py_is_one_line(monkeypatch):
    import argparse
    import builtins
    from lrcore.cli import CLIError
    from lrcore.distributed import train as dtrain
    real = builtins.__import__

    def fake(name, *a, **k):
        if name.startswith("mpi4py"):
            raise ImportError("No module named 'mpi4py'")
        return real(name, *a, **k)
    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(CLIError, match=r'--distributed: .*pip install "lrcore\[mpi\]"'):
        dtrain.run(argparse.Namespace())


def test_average_grads_rounds_once_in_float32():
    """average_grads (the reference of average=True): float32 / float64 grads summed in
    their type in rank order; half grads widened, summed and divided in float32, rounded
    once to nearest even (for three ranks that differs from summing in bfloat16)."""
    import ml_dtypes
    from lrcore.distributed import average_grads
    bf16 = np.dtype(ml_dtypes.bfloat16)
    rng = np.random.default_rng(4)
    per_rank = [[rng.standard_normal(300).astype(np.float32).astype(dt)
                 for dt in (bf16, np.float16, np.float32, np.float64)] for _ in range(3)]
    got = average_grads(per_rank)
    for i, dt in enumerate((bf16, np.dtype(np.float16))):
        acc = (per_rank[0][i].astype(np.float32) + per_rank[1][i].astype(np.float32)) \
            + per_rank[2][i].astype(np.float32)
        want = (acc / np.float32(3)).astype(dt)
        assert got[i].dtype == dt and np.array_equal(got[i].view(np.uint16), want.view(np.uint16))
        in_half = ((per_rank[0][i] + per_rank[1][i]) + per_rank[2][i]) / dt.type(3)
        assert not np.array_equal(got[i].view(np.uint16), in_half.view(np.uint16))
    for i in (2, 3):
        dt = per_rank[0][i].dtype
        want = ((per_rank[0][i] + per_rank[1][i]) + per_rank[2][i]) / dt.type(3)
        assert got[i].dtype == dt and np.array_equal(got[i], want)
    with pytest.raises(ValueError, match=r"grads_per_rank\[1\]\[0\]"):
        average_grads([[np.ones(3, np.float32)], [np.ones(3, np.float16)]])


def test_8bit_layout_cuts_whole_blocks_and_keeps_the_threshold():
    """With min_tail=4096 no piece of a param of 4096+ elements is shorter than 4096, and
    every cut inside a param is a multiple of 256 (whole quantization blocks)."""
    from lrcore.distributed._layout import SUMSQ_BLOCK, Layout
    sizes = [2 * SUMSQ_BLOCK + 5, 3, SUMSQ_BLOCK + 4000, 5000, SUMSQ_BLOCK + 1, 4 * SUMSQ_BLOCK]
    for world in (2, 3, 4, 7):
        for bucket in (SUMSQ_BLOCK + 3000, 1 << 30):
            lay = Layout(sizes, [np.dtype(np.float32)] * len(sizes), [0] * len(sizes), world,
                         bucket, min_tail=4096)
            seen = {}
            for b in lay.buckets:
                for r in range(world):
                    for p in b.pieces[r]:
                        n = sizes[p.index]
                        assert p.start % 256 == 0
                        assert n < 4096 or p.size >= 4096, (world, bucket, p, n)
                        seen.setdefault(p.index, []).append((p.start, p.stop))
            for i, n in enumerate(sizes):      # the pieces tile every param
                spans = sorted(seen[i])
                assert spans[0][0] == 0 and spans[-1][1] == n
                assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    # without it, a 2**14 grid point may leave a piece of one element
    lay = Layout([SUMSQ_BLOCK + 1], [np.dtype(np.float32)], [0], 2, 1 << 30)
    assert [p.size for b in lay.buckets for r in range(2) for p in b.pieces[r]] == \
        [SUMSQ_BLOCK, 1]


def test_half_precision_in_process_and_bad_options():
    """One rank (an MPI singleton): bfloat16 / 8-bit runs equal one process; bad options and
    grads name the argument and change nothing."""
    import ml_dtypes
    import lrcore
    from lrcore.distributed import ShardedOptimizer, average_grads
    bf16 = np.dtype(ml_dtypes.bfloat16)
    rng = np.random.default_rng(1)
    p = [rng.standard_normal(n).astype(np.float32).astype(bf16) for n in (20000, 300)]
    q = [x.copy() for x in p]
    kw = dict(lr=0.01, state_dtype="int8", rounding="stochastic", seed=9)
    opt = ShardedOptimizer(p, lrcore.Adam, bucket_elements=5000, **kw)
    ref = lrcore.Adam(q, **kw)
    assert (opt.state_dtype, opt.rounding, opt.seed) == ("int8", "stochastic", 9)
    for t in range(3):
        g = [rng.standard_normal(x.shape).astype(np.float32).astype(bf16) for x in p]
        assert opt.step(g, clip_norm=1.0) and ref.step(average_grads([g]), clip_norm=1.0)
        assert opt.last_grad_norm == ref.last_grad_norm
        for a, b in zip(p, q):
            np.testing.assert_array_equal(a.view(np.uint16), b.view(np.uint16))
    assert opt.state_nbytes() == ref.state_nbytes() == 20000 * 2 + 79 * 4 * 2 + 300 * 8
    sd = opt.consolidated_state_dict()
    assert sorted(sd["state"][0]) == ["exp_avg.absmax", "exp_avg.codes", "exp_avg_sq.absmax",
                                      "exp_avg_sq.codes"]
    assert sd["state"][1]["exp_avg"].dtype == np.float32
    # a state dict whose 8-bit arrays have the wrong size or dtype changes nothing
    for key, bad in (("exp_avg.absmax", np.zeros(78, np.float32)),
                     ("exp_avg.codes", np.zeros(20000, np.int8))):
        broken = dict(sd, state=[dict(sd["state"][0], **{key: bad}), sd["state"][1]])
        with pytest.raises(ValueError, match=f"params\\[0\\] state '{key}'"):
            opt.load_state_dict(broken)
        after = opt.consolidated_state_dict()
        for a, b in zip(after["state"], sd["state"]):
            assert all(np.array_equal(a[k].view(np.uint8), b[k].view(np.uint8)) for k in a)
    before = [x.copy() for x in p]
    for grads, kind, text in (
            ([np.ones(20000, np.float16), np.ones(300, bf16)], TypeError, r"grads\[0\] is float16"),
            ([np.ones(20000, bf16), np.ones(30, bf16)], ValueError, r"grads\[1\] is bfloat16 \(30,\)")):
        with pytest.raises(kind, match=text):
            opt.step(grads)
    for x, y in zip(p, before):
        np.testing.assert_array_equal(x.view(np.uint16), y.view(np.uint16))
    f32 = [np.zeros(10, np.float32), np.zeros(10, np.float32)]
    opt32 = ShardedOptimizer(f32, lrcore.SGD, lr=0.1)
    with pytest.raises(TypeError, match=r"grads\[1\] is float32 and grads\[0\] bfloat16"):
        opt32.step([np.ones(10, bf16), np.ones(10, np.float32)])
    assert opt32.step_count == 0
    cases = [
        (([np.zeros(5000, np.float16)], lrcore.Adam), {"state_dtype": "int8"}, TypeError,
         r"params\[0\] is float16; 8-bit state"),
        (([np.zeros(5000, np.float32)], lrcore.Adagrad), {"state_dtype": "int8"}, ValueError,
         r"state_dtype='int8' is supported for the rules"),
        (([np.zeros(50, np.float32)], lrcore.Adam), {"state_dtype": "float16"}, ValueError,
         r"state_dtype='float16' is not supported"),
        (([np.zeros(50, np.float32)], lrcore.Adam), {"state_dtype": "bfloat16"}, TypeError,
         r"params\[0\] is float32 and state_dtype='bfloat16'"),
        (([np.zeros(50, np.float32)], lrcore.Adam), {"rounding": "up"}, ValueError,
         r"rounding must be"),
        (([np.zeros(50, np.float32)], lrcore.Adam), {"seed": -1}, ValueError, r"seed must be"),
        (([np.zeros(50, np.float32)], lrcore.RMSprop), {"state_dtype": "int8",
                                                       "centered": True}, ValueError,
         r"centered RMSprop"),
    ]
    for args, options, kind, text in cases:
        with pytest.raises(kind, match=text):
            ShardedOptimizer(*args, **options)


def test_train_distributed_bad_precision_is_one_clear_error():
    """`lrcore train --distributed` checks --precision / --state-dtype as one process does
    (lrcore train's check_precision), before any work; one rank here (an MPI singleton)."""
    import argparse
    from lrcore.cli import CLIError
    from lrcore.cli import train as cli_train
    from lrcore.distributed import train as dtrain
    parser = argparse.ArgumentParser()
    cli_train.add_arguments(parser)
    for argv, text in ((["--optimizer", "adagrad", "--state-dtype", "int8"],
                        "--state-dtype int8 does not apply to --optimizer adagrad"),
                       (["--precision", "float16", "--state-dtype", "bfloat16"],
                        "--state-dtype bfloat16 needs bfloat16 params")):
        with pytest.raises(CLIError, match=text):
            dtrain.run(parser.parse_args(["--distributed", "--epochs", "1"] + argv))


def _distributed_args(argv):
    import argparse
    from lrcore.cli import train as cli_train
    parser = argparse.ArgumentParser()
    cli_train.add_arguments(parser)
    return parser.parse_args(["--distributed"] + argv)


def test_train_distributed_output_is_formatted_as_one_process(capsys):
    """One rank (an MPI singleton): the header said '1 epochs', the summary '1 steps' and
    'optimizer state 76960 bytes' where the one-process summary writes '76,960 bytes'."""
    from lrcore.distributed import train as dtrain
    assert dtrain.run(_distributed_args(["--epochs", "1", "--batch-size", "2000"])) == 0
    out = capsys.readouterr().out
    assert ", 1 epoch of 1438 samples," in out, out
    assert "done: 1 step in " in out and "optimizer state 76,960 bytes on rank 0 of 1" in out
    assert dtrain.run(_distributed_args(["--epochs", "2", "--batch-size", "1000"])) == 0
    out = capsys.readouterr().out
    assert ", 2 epochs of 1438 samples," in out and "done: 4 steps in " in out, out


def test_train_distributed_data_errors_are_the_one_process_ones(capsys, tmp_path):
    """--target without --data, a data file that is not UTF-8 text or holds one class: the
    one-process job names the option or the file; --distributed gave the bare message."""
    from lrcore.cli import CLIError
    from lrcore.distributed import train as dtrain
    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes(b"a,b,label\n1,2,0\n3,4,1\n5,6,0\n7,\xe9,1\n")
    single = tmp_path / "one.csv"
    single.write_text("a,b,label\n" + "".join(f"{i},{i + 1},0\n" for i in range(10)))
    for argv, text in (
            (["--target", "y"], "--target needs --data FILE (the built-in digits have no "
                                "columns to choose from)"),
            (["--data", str(latin1)], f"data file '{latin1}' is not a UTF-8 text CSV file"),
            (["--data", str(single)], f"data file '{single}': the target holds a single "
                                      f"class")):
        with pytest.raises(CLIError) as info:
            dtrain.run(_distributed_args(["--epochs", "1"] + argv))
        assert text in str(info.value), (argv, str(info.value))
