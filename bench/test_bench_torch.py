"""lrcore.torch against torch.optim: optimizer.step() over a transformer-like parameter list.

~36M float32 parameters in 76 tensors (a 6-layer, d_model=512 decoder with a 32k vocabulary),
allocated once for the module; each optimizer gets its own state. torch.optim runs with
fused=True where torch has a fused CPU kernel (Adam, AdamW, SGD, Adagrad) and its default
(foreach) otherwise. extra_info holds GB/s (bytes the update must move / median time) and,
on the lrcore row, the speed-up over torch.optim measured in the same run.
Run: python -m pytest bench/test_bench_torch.py --benchmark-only
"""
import gc
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import lrcore  # noqa: E402
import lrcore.torch as lt  # noqa: E402

# (name, constructor kwargs, bytes per float32 element read + written by one step)
OPTIMIZERS = [
    ("Adam", dict(lr=1e-4), 28),                   # p, g, exp_avg, exp_avg_sq -> p, m, v
    ("AdamW", dict(lr=1e-4), 28),
    ("SGD", dict(lr=1e-4, momentum=0.9), 20),      # p, g, buf -> p, buf
    ("Adagrad", dict(lr=1e-4), 20),                # p, g, sum -> p, sum
    ("RMSprop", dict(lr=1e-5), 20),                # p, g, square_avg -> p, square_avg
    ("Adadelta", dict(lr=1e-3), 28),               # p, g, square_avg, acc_delta -> p, sq, acc
]
TORCH_FUSED = {"Adam", "AdamW", "SGD", "Adagrad"}
ROUNDS = 15


def transformer_shapes(layers=6, d_model=512, vocab=32_000, context=1024, ffn=4):
    """Parameter shapes of a GPT-style decoder (tied embedding), in module order."""
    shapes = [(vocab, d_model), (context, d_model)]
    for _ in range(layers):
        shapes += [(d_model,), (d_model,),                        # ln_1
                   (3 * d_model, d_model), (3 * d_model,),        # qkv
                   (d_model, d_model), (d_model,),                # attention out
                   (d_model,), (d_model,),                        # ln_2
                   (ffn * d_model, d_model), (ffn * d_model,),    # mlp up
                   (d_model, ffn * d_model), (d_model,)]          # mlp down
    shapes += [(d_model,), (d_model,)]                            # final ln
    return shapes


@pytest.fixture(scope="module")
def model_params():
    gen = torch.Generator().manual_seed(0)
    params = []
    for shape in transformer_shapes():
        p = torch.nn.Parameter(torch.empty(shape).uniform_(-0.05, 0.05, generator=gen))
        p.grad = torch.empty(shape).uniform_(-1e-3, 1e-3, generator=gen)
        params.append(p)
    yield params
    del params
    gc.collect()


_TORCH_MEDIAN = {}


def _median_seconds(fn, rounds=ROUNDS, warmup=2):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def _torch_optimizer(name, kw, params):
    extra = {"fused": True} if name in TORCH_FUSED else {}
    return getattr(torch.optim, name)(params, **kw, **extra)


@pytest.mark.parametrize("impl", ["torch", "lrcore"])
@pytest.mark.parametrize("name,kw,bytes_per_element", OPTIMIZERS,
                         ids=[o[0] for o in OPTIMIZERS])
def test_step_transformer(benchmark, model_params, name, kw, bytes_per_element, impl):
    n = sum(p.numel() for p in model_params)
    nbytes = bytes_per_element * n
    if impl == "lrcore":
        opt = getattr(lt, name)(model_params, **kw)
    else:
        opt = _torch_optimizer(name, kw, model_params)
    opt.step()  # state allocated outside the timing
    benchmark.group = f"torch step: {name}, {n / 1e6:.1f}M float32 params in " \
                      f"{len(model_params)} tensors"
    benchmark.pedantic(opt.step, rounds=ROUNDS, iterations=1, warmup_rounds=2)
    median = benchmark.stats.stats.median
    extra = dict(median_ms=round(median * 1e3, 3), gbps=round(nbytes / median / 1e9, 2),
                 bytes_moved=nbytes, params=n, tensors=len(model_params),
                 threads=lrcore.num_threads() if impl == "lrcore" else torch.get_num_threads(),
                 baseline=("fused" if name in TORCH_FUSED else "foreach"))
    if impl == "torch":
        _TORCH_MEDIAN[name] = median
    else:
        if name not in _TORCH_MEDIAN:  # run alone: measure torch here
            del opt
            gc.collect()
            ref = _torch_optimizer(name, kw, model_params)
            _TORCH_MEDIAN[name] = _median_seconds(ref.step)
            del ref
        extra.update(torch_ms=round(_TORCH_MEDIAN[name] * 1e3, 3),
                     speedup_vs_torch=round(_TORCH_MEDIAN[name] / median, 3))
    benchmark.extra_info.update(extra)
    opt = None
    gc.collect()


def test_step_overhead_many_small_tensors(benchmark):
    """Per-tensor cost: 500 tensors of 256 elements (the step is all bookkeeping)."""
    params = []
    for _ in range(500):
        p = torch.nn.Parameter(torch.rand(256))
        p.grad = torch.rand(256) * 1e-3
        params.append(p)
    opt = lt.Adam(params, lr=1e-4)
    opt.step()
    benchmark.group = "torch step overhead: Adam, 500 x 256 float32"
    benchmark.pedantic(opt.step, rounds=200, iterations=1, warmup_rounds=5)
    ref = torch.optim.Adam(params, lr=1e-4, fused=True)
    t_ref = _median_seconds(ref.step, rounds=200)
    median = benchmark.stats.stats.median
    benchmark.extra_info.update(median_us=round(median * 1e6, 1),
                                us_per_tensor=round(median * 1e6 / 500, 3),
                                torch_fused_us=round(t_ref * 1e6, 1),
                                speedup_vs_torch=round(t_ref / median, 3))
