"""Run under mpiexec by tests/test_distributed.py: `lrcore train --distributed` end to end.

Usage: mpiexec -n W python -m mpi4py tests/mpi/check_train.py MODE
MODE ok: the CLI trains the digits MLP (3 epochs); fail: rank W-1's loss_and_grad raises at
step 5 (a bad mini-batch) -> every rank exits with code 1 and only rank 0 prints, one line;
handler: an exception in an epoch handler on rank 0 stops every rank the same way;
lowp: `--precision bfloat16-sr --state-dtype int8` (bfloat16 params and grads, 8-bit Adam
state, stochastic rounding) through lrcore.distributed.train.run, the command's handler.
"""
import contextlib
import io
import sys

from mpi4py import MPI

from lrcore import cli
from lrcore.demo import models
from lrcore.distributed import train as dtrain

comm = MPI.COMM_WORLD
RANK, W = comm.Get_rank(), comm.Get_size()
mode = sys.argv[1]
calls = [0]

if mode == "fail":
    real = models.MLP.loss_and_grad

    def flaky(self, X, y, grads):
        calls[0] += 1
        if RANK == W - 1 and calls[0] == 5:
            raise ValueError("mini-batch 5 holds a label out of range (simulated bad data)")
        return real(self, X, y, grads)
    models.MLP.loss_and_grad = flaky

if mode == "handler":
    real_train = dtrain.train

    def with_handler(*a, **k):
        def on_epoch(epoch, loss, accuracy):
            if RANK == 0 and epoch == 1:
                raise RuntimeError("the epoch handler failed (simulated)")
        return real_train(*a, on_epoch=on_epoch, **{k2: v for k2, v in k.items()
                                                     if k2 != "on_epoch"})
    dtrain.train = with_handler

out, err = io.StringIO(), io.StringIO()
with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    if mode == "lowp":
        # the handler itself (lrcore train's own --distributed check may still refuse the pair)
        import argparse
        from lrcore.cli import train as cli_train
        parser = argparse.ArgumentParser()
        cli_train.add_arguments(parser)
        code = dtrain.run(parser.parse_args(["--distributed", "--epochs", "3", "--precision",
                                             "bfloat16-sr", "--state-dtype", "int8"]))
    else:
        code = cli.main(["train", "--distributed", "--epochs", "3"])
codes = comm.gather(code)
outs = comm.gather(out.getvalue())
errs = comm.gather(err.getvalue())
if RANK == 0:
    for r in range(W):
        print(f"--- rank {r} exit {codes[r]}\n{outs[r]}[stderr]{errs[r]}")
    if mode in ("ok", "lowp"):
        assert codes == [0] * W, codes
        assert all(o == "" for o in outs[1:]) and all(e == "" for e in errs), (outs, errs)
        acc = float(outs[0].rsplit("validation accuracy ", 1)[1].split(";")[0])
        print(f"RESULT {mode} accuracy {acc:.4f}")
    else:
        assert codes == [1] * W, codes
        assert all(o == "" for o in outs[1:]), outs
        lines = [l for e in errs for l in e.splitlines() if l.strip()]
        assert len(lines) == 1, lines
        assert lines[0].startswith("lrcore train: error: training failed on rank"), lines
        assert "simulated" in lines[0], lines
        print(f"RESULT {mode} one message: {lines[0]}")
