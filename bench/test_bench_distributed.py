"""What the ShardedOptimizer's step costs over a local step, on 2 ranks, and how much of the
communication the buckets hide.

Run: python -m pytest bench/test_bench_distributed.py -s   (launches mpiexec -n 2 on this file;
     LRCORE_BENCH_ASYNC_PROGRESS=0,1 adds a run with MPICH's own progress thread)
  or mpiexec -n 2 python -m mpi4py bench/test_bench_distributed.py [--json out.json]
Model: Adam, float32, 8M elements in 200 arrays of mixed sizes (as bench/test_bench_optim.py).
Timed, median of rounds each started by a barrier, on rank 0:
  local      - a single-process Adam step over the whole model (what one process does)
  shard      - a single-process Adam step over this rank's half (the kernel's share)
  comm       - the step's collectives alone, blocking: all-to-all of the grads, the ordered
               sum and division, all-gather of the params (the communication the step adds)
  step/1     - ShardedOptimizer.step with one bucket (nothing can overlap)
  step/B     - ShardedOptimizer.step with B buckets, overlap=False: collectives in flight
               move only while the rank waits (MPICH makes progress inside MPI calls)
  step/B/thread - the same with overlap=True: a helper thread tests them during each kernel
hidden = (shard + comm - step) / comm: the fraction of the communication the step did not pay.
Element types (lrcore.optim's layouts), same model, on rank 0: a single-process Adam step and
ShardedOptimizer.step with 4 buckets, and the state bytes, for bfloat16 params, grads and state
with stochastic rounding, bfloat16 params with 8-bit state, and float32 params with 8-bit state.
"""
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

TOTAL = 8_000_000
ROUNDS = 15


def _sizes(total=TOTAL, count=200, seed=0):
    rng = np.random.default_rng(seed)
    w = np.exp(rng.uniform(np.log(300), np.log(3_000_000), count))
    sizes = np.maximum(300, (w / w.sum() * total).astype(np.int64))
    sizes[np.argmax(sizes)] += total - sizes.sum()
    return [int(s) for s in sizes]


def _median(comm, fn, rounds=ROUNDS):
    fn()
    times = []
    for _ in range(rounds):
        comm.Barrier()
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    # the slowest rank bounds a collective step
    from mpi4py import MPI
    worst = np.empty(len(times))
    comm.Allreduce(np.array(times), worst, op=MPI.MAX)
    return float(np.median(worst))


def measure():
    from mpi4py import MPI
    import lrcore
    from lrcore.distributed import ShardedOptimizer
    from lrcore.distributed._comm import wait
    comm = MPI.COMM_WORLD
    rank, world = comm.Get_rank(), comm.Get_size()
    sizes = _sizes()
    rng = np.random.default_rng(1)
    params = [rng.uniform(0.5, 1.5, s).astype(np.float32) for s in sizes]
    grads = [rng.uniform(-1, 1, s).astype(np.float32) for s in sizes]
    out = {"world": world, "elements": TOTAL, "arrays": len(sizes), "threads": 1}

    local_p = [p.copy() for p in params]
    local = lrcore.Adam(local_p, lr=1e-3, num_threads=1)
    out["local_ms"] = 1e3 * _median(comm, lambda: local.step(grads))

    one = ShardedOptimizer([p.copy() for p in params], lrcore.Adam, lr=1e-3, num_threads=1,
                           bucket_elements=TOTAL)
    # the kernel's share: the pieces one bucket gives this rank, stepped by one process
    pieces = one._layout.buckets[0].pieces[rank]
    shard_p = [params[p.index].reshape(-1)[p.start:p.stop].copy() for p in pieces]
    shard_g = [grads[p.index].reshape(-1)[p.start:p.stop].copy() for p in pieces]
    shard = lrcore.Adam(shard_p, lr=1e-3, num_threads=1)
    out["shard_ms"] = 1e3 * _median(comm, lambda: shard.step(shard_g))

    # the communication alone: the same collectives on buffers of the step's sizes
    counts = [TOTAL // world + (r < TOTAL % world) for r in range(world)]
    displs = [sum(counts[:r]) for r in range(world)]
    send = np.ones(TOTAL, np.float32)
    recv = np.empty(world * counts[rank], np.float32)
    acc = np.empty(counts[rank], np.float32)
    gathered = np.empty(TOTAL, np.float32)

    def comm_only():   # waited for as the step waits (MPI_Test + sched_yield)
        wait(comm.Ialltoallv([send, counts, displs, MPI.FLOAT],
                             [recv, [counts[rank]] * world,
                              [q * counts[rank] for q in range(world)], MPI.FLOAT]), 60, "bench")
        np.add(recv[:counts[rank]], recv[counts[rank]:2 * counts[rank]], out=acc)
        np.divide(acc, np.float32(world), out=acc)
        wait(comm.Iallgatherv([acc, MPI.FLOAT], [gathered, counts, displs, MPI.FLOAT]), 60,
             "bench")
    out["comm_ms"] = 1e3 * _median(comm, comm_only)
    out["comm_bytes_per_rank"] = int(2 * 4 * TOTAL * (world - 1) / world)  # sent, both phases

    out["step_1_bucket_ms"] = 1e3 * _median(comm, lambda: one.step(grads))
    for buckets in (4, 16):
        for overlap in (False, True):
            opt = ShardedOptimizer([p.copy() for p in params], lrcore.Adam, lr=1e-3,
                                   num_threads=1, bucket_elements=TOTAL // buckets,
                                   overlap=overlap)
            key = f"step_{buckets}_buckets{'_thread' if overlap else ''}_ms"
            out[key] = 1e3 * _median(comm, lambda: opt.step(grads))
    out["step_1_bucket_clip_ms"] = 1e3 * _median(comm, lambda: one.step(grads, clip_norm=1.0))
    for key in [k for k in out if k.startswith("step_")]:
        t = out[key]
        out[key.replace("_ms", "_hidden")] = round((out["shard_ms"] + out["comm_ms"] - t)
                                                    / out["comm_ms"], 3)
    out["state_bytes_rank0"] = one.state_nbytes()
    out["state_bytes_local"] = 2 * 4 * TOTAL
    import ml_dtypes
    bf16 = np.dtype(ml_dtypes.bfloat16)
    out["layouts"] = []
    for label, dt, opts in (("bfloat16, stochastic", bf16, {"rounding": "stochastic"}),
                            ("bfloat16, 8-bit state", bf16, {"state_dtype": "int8",
                                                             "rounding": "stochastic"}),
                            ("float32, 8-bit state", np.dtype(np.float32),
                             {"state_dtype": "int8"})):
        ps = [p.astype(dt) for p in params]
        gs = [g.astype(dt) for g in grads]
        single = lrcore.Adam([p.copy() for p in ps], lr=1e-3, num_threads=1, **opts)
        row = {"layout": label, "local_ms": 1e3 * _median(comm, lambda: single.step(gs))}
        opt = ShardedOptimizer(ps, lrcore.Adam, lr=1e-3, num_threads=1,
                               bucket_elements=TOTAL // 4, **opts)
        row["step_4_buckets_ms"] = 1e3 * _median(comm, lambda: opt.step(gs))
        row["state_bytes_rank0"] = opt.state_nbytes()
        row["state_bytes_local"] = single.state_nbytes()
        out["layouts"].append(row)
    out["mpich_async_progress"] = os.environ.get("MPIR_CVAR_ASYNC_PROGRESS", "0")
    return out if rank == 0 else None


def _mpiexec():
    exe = shutil.which("mpiexec") or os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return exe if os.path.exists(exe) else None


def test_distributed_step_overhead():
    import pytest
    pytest.importorskip("mpi4py")
    exe = _mpiexec()
    if exe is None:
        pytest.skip("no mpiexec")
    results = []
    for progress in os.environ.get("LRCORE_BENCH_ASYNC_PROGRESS", "0").split(","):
        env = dict(os.environ, OMP_NUM_THREADS="1", MPIR_CVAR_ASYNC_PROGRESS=progress)
        proc = subprocess.run([exe, "-n", "2", sys.executable, "-m", "mpi4py", __file__],
                              capture_output=True, text=True, timeout=600, env=env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    for r in results:
        print(_table(r))
    path = os.environ.get("LRCORE_BENCH_JSON")
    if path:
        with open(path, "w") as f:
            json.dump(results, f, indent=1)


def _table(r):
    lines = [f"2 ranks, Adam float32, {r['elements']:,} elements in {r['arrays']} arrays, "
             f"1 thread per rank, MPICH async progress {r['mpich_async_progress']}"]
    for key in ("local_ms", "shard_ms", "comm_ms", "step_1_bucket_ms", "step_4_buckets_ms",
                "step_4_buckets_thread_ms", "step_16_buckets_ms", "step_16_buckets_thread_ms",
                "step_1_bucket_clip_ms"):
        hidden = r.get(key.replace("_ms", "_hidden"))
        lines.append(f"  {key[:-3]:<22} {r[key]:8.2f} ms"
                     + (f"   hidden {100 * hidden:5.1f}% of comm" if hidden is not None else ""))
    lines.append(f"  optimizer state: {r['state_bytes_rank0']:,} bytes on rank 0, "
                 f"{r['state_bytes_local']:,} in one process")
    for row in r.get("layouts", ()):
        lines.append(f"  Adam {row['layout']:<22} local {row['local_ms']:8.2f} ms, "
                     f"step/4 {row['step_4_buckets_ms']:8.2f} ms; state "
                     f"{row['state_bytes_rank0']:,} bytes on rank 0, "
                     f"{row['state_bytes_local']:,} in one process")
    return "\n".join(lines)


if __name__ == "__main__":
    result = measure()
    if result is not None:
        print(json.dumps(result), flush=True)
