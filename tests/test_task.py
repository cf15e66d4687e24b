"""Tests for lrcore.task.UpdateTask: events, parameter changes from handlers, pause/resume and
save/load (bitwise, also in a fresh process), cancel, failures, and parameter validation."""
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import lrcore
from lrcore import schedules
from lrcore.task import (Event, MetricKey, ParameterKey, ProgressHandlers, TaskState,
                         UpdateTask)

K = ParameterKey
ALL_EVENTS = Event.TRAINING_BEGIN | Event.EPOCH_END | Event.MINI_BATCH_END


def make_problem(n=50, seed=0):
    """Logistic regression on a fixed random problem: (params, loss_and_grad, data)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 5))
    y = (X @ rng.normal(size=5) > 0).astype(np.float64)
    params = [np.zeros(5), np.zeros(1)]
    return params, logistic_loss_and_grad, (X, y)


def logistic_loss_and_grad(batch, params, grads):
    X, y = batch
    W, b = params
    z = X @ W + b[0]
    d = (1.0 / (1.0 + np.exp(-z)) - y) / len(y)
    grads[0][...] = X.T @ d
    grads[1][0] = d.sum()
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def constant_grad(batch, params, grads):
    """Gradient 1 everywhere: with SGD and no momentum each step moves params by -lr."""
    for g in grads:
        g[...] = 1.0
    return 0.0


def run_task(optimizer="adam", parameters=None, handlers=None, n=50):
    params, fn, data = make_problem(n)
    base = {K.EPOCHS: 3, K.MINI_BATCH_SIZE: 8, K.LEARNING_RATE: 0.05}
    base.update(parameters or {})
    task = UpdateTask(params, fn, data, optimizer=optimizer, parameters=base,
                      progress_handlers=handlers)
    return task


# -------------------------------------------------------------------- events and contexts


def test_every_event_fires_the_expected_number_of_times():
    seen = []
    done = []
    handlers = ProgressHandlers(ALL_EVENTS, progress=lambda c: seen.append(
        (c.event, dict(c.metrics))), completion=lambda c: done.append(c))
    task = run_task(handlers=handlers, n=50)     # 50 samples / 8 -> 7 mini-batches
    assert task.resume() is TaskState.COMPLETED
    events = [e for e, _ in seen]
    assert events.count(Event.TRAINING_BEGIN) == 1 and events[0] is Event.TRAINING_BEGIN
    assert events.count(Event.MINI_BATCH_END) == 3 * 7
    assert events.count(Event.EPOCH_END) == 3
    batch_indices = [m[MetricKey.MINI_BATCH_INDEX] for e, m in seen if e is Event.MINI_BATCH_END]
    assert batch_indices == list(range(7)) * 3
    epoch_ends = [m for e, m in seen if e is Event.EPOCH_END]
    assert [m[MetricKey.EPOCH_INDEX] for m in epoch_ends] == [0, 1, 2]
    assert all(m[MetricKey.MINI_BATCH_INDEX] == 6 for m in epoch_ends)
    # the epoch loss is the per-sample mean of the mini-batch losses (last batch has 2)
    first = [m[MetricKey.LOSS] for e, m in seen[1:8]]
    assert epoch_ends[0][MetricKey.LOSS] == pytest.approx((sum(first[:6]) * 8 + first[6] * 2) / 50)
    assert len(done) == 1 and done[0].event is None and done[0].task.state is TaskState.COMPLETED
    assert task.step_count == 21 and task.epoch == 3


def test_only_the_chosen_events_fire_and_context_holds_params_and_parameters():
    seen = []
    task = run_task(handlers=ProgressHandlers(Event.EPOCH_END, progress=seen.append))
    task.resume()
    assert [c.event for c in seen] == [Event.EPOCH_END] * 3
    ctx = seen[0]
    assert ctx.task is task and all(a is b for a, b in zip(ctx.params, task.params))
    assert ctx.parameters[K.LEARNING_RATE] == 0.05 and ctx.parameters[K.EPOCHS] == 3
    assert ctx.parameters[K.BETA1] == 0.9 and K.MOMENTUM not in ctx.parameters


def test_progress_handlers_validation():
    with pytest.raises(ValueError, match="no progress handler"):
        ProgressHandlers(Event.EPOCH_END)
    with pytest.raises(ValueError, match="events is empty"):
        ProgressHandlers(progress=print)
    with pytest.raises(TypeError, match="events must be an Event"):
        ProgressHandlers(3, progress=print)
    with pytest.raises(TypeError, match="completion must be callable"):
        ProgressHandlers(completion=42)


# -------------------------------------------------------------------- parameter changes


def test_handler_lr_change_takes_effect_at_the_next_mini_batch():
    """Checked on the update the optimizer applied: with grad 1 and plain SGD, a step moves
    every parameter by exactly -lr."""
    params = [np.zeros(3)]
    trace = []

    def on_batch(ctx):
        trace.append((ctx.metrics[MetricKey.EPOCH_INDEX], ctx.metrics[MetricKey.MINI_BATCH_INDEX],
                      ctx.parameters[K.LEARNING_RATE], ctx.params[0][0]))
        if ctx.metrics[MetricKey.MINI_BATCH_INDEX] == 2:
            ctx.task.resume(parameters={K.LEARNING_RATE: 0.25})

    task = UpdateTask(params, constant_grad, (np.arange(10.0),), optimizer="sgd",
                      parameters={K.LEARNING_RATE: 0.5, K.MINI_BATCH_SIZE: 2, K.EPOCHS: 1},
                      progress_handlers=ProgressHandlers(Event.MINI_BATCH_END, on_batch))
    assert task.resume() is TaskState.COMPLETED
    used = [lr for *_, lr, _ in trace]
    assert used == [0.5, 0.5, 0.5, 0.25, 0.25]
    moves = -np.diff([0.0] + [p for *_, p in trace])
    assert moves.tolist() == [0.5, 0.5, 0.5, 0.25, 0.25]
    assert task.optimizer.lr == 0.25


def test_batch_size_change_applies_from_the_next_mini_batch():
    sizes = []

    def fn(batch, params, grads):
        sizes.append(len(batch[0]))
        return constant_grad(batch, params, grads)

    def on_batch(ctx):
        if ctx.metrics[MetricKey.MINI_BATCH_INDEX] == 0:
            ctx.task.resume({K.MINI_BATCH_SIZE: 3})

    task = UpdateTask([np.zeros(2)], fn, (np.arange(10.0),), "sgd",
                      {K.MINI_BATCH_SIZE: 4, K.EPOCHS: 1},
                      ProgressHandlers(Event.MINI_BATCH_END, on_batch))
    task.resume()
    assert sizes == [4, 3, 3]


def test_schedule_is_evaluated_at_the_steps_taken():
    lrs = []
    params = [np.zeros(1)]
    sched = schedules.make("multistep", initial=1.0, milestones=[2, 4], gamma=0.5)
    task = UpdateTask(params, constant_grad, (np.zeros(6),), "sgd",
                      {K.LEARNING_RATE: sched, K.MINI_BATCH_SIZE: 1, K.EPOCHS: 1},
                      ProgressHandlers(Event.MINI_BATCH_END,
                                       lambda c: lrs.append(c.parameters[K.LEARNING_RATE])))
    task.resume()
    assert lrs == [sched(i) for i in range(6)] == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]
    assert params[0][0] == -3.5


def test_parameters_reports_configured_values():
    sched = schedules.make("cosine", initial=0.1, steps=10)
    task = run_task("sgd", {K.LEARNING_RATE: sched, K.MOMENTUM: 0.5})
    p = task.parameters
    assert p[K.LEARNING_RATE] is sched and p[K.MOMENTUM] == 0.5
    assert p[K.SHUFFLE] is True and p[K.SEED] == 0 and p[K.MINI_BATCH_SIZE] == 8


@pytest.mark.parametrize("key, value, error, match", [
    (K.LEARNING_RATE, -0.1, ValueError,
     r"^UpdateTask: ParameterKey.LEARNING_RATE must be a finite number >= 0, got -0.1$"),
    (K.LEARNING_RATE, math.nan, ValueError, "LEARNING_RATE"),
    (K.LEARNING_RATE, "0.1", TypeError, r"LEARNING_RATE must be a number or a schedule, got str"),
    (K.LEARNING_RATE, True, TypeError, "LEARNING_RATE"),
    (K.BETA1, 1.0, ValueError, r"BETA1 must be in \[0, 1\), got 1.0"),
    (K.BETA2, -0.5, ValueError, "BETA2"),
    (K.EPS, -1e-8, ValueError, "EPS must be a finite number >= 0"),
    (K.WEIGHT_DECAY, -1, ValueError, "WEIGHT_DECAY"),
    (K.MINI_BATCH_SIZE, 0, ValueError, r"MINI_BATCH_SIZE must be an integer >= 1, got 0"),
    (K.MINI_BATCH_SIZE, 2.0, TypeError, "MINI_BATCH_SIZE must be an integer"),
    (K.MINI_BATCH_SIZE, schedules.make("constant", value=4), TypeError, "only real-valued"),
    (K.EPOCHS, 0, ValueError, "EPOCHS"),
    (K.SHUFFLE, 1, TypeError, "SHUFFLE must be True or False"),
    (K.SEED, -1, ValueError, "SEED"),
    (K.BETA1, schedules.make("constant", value=1.0), ValueError,
     r"BETA1 schedule at step 0\): ParameterKey.BETA1 must be in \[0, 1\), got 1.0"),
])
def test_parameter_validation(key, value, error, match):
    with pytest.raises(error, match=match):
        run_task("adam", {key: value})


def test_parameter_keys_must_apply_to_the_optimizer_and_be_keys():
    with pytest.raises(ValueError, match=r"MOMENTUM does not apply to Adam; it takes"):
        run_task("adam", {K.MOMENTUM: 0.9})
    with pytest.raises(ValueError, match="BETA1 does not apply to SGD"):
        run_task("sgd", {K.BETA1: 0.9})
    with pytest.raises(TypeError, match="ParameterKey members"):
        run_task("adam", {"lr": 0.1})


def test_rejected_resume_parameters_change_nothing():
    task = run_task("sgd", {K.MOMENTUM: 0.5})
    with pytest.raises(ValueError, match="EPOCHS"):
        task.resume({K.LEARNING_RATE: 0.9, K.EPOCHS: 0})
    assert task.parameters[K.LEARNING_RATE] == 0.05 and task.state is TaskState.SUSPENDED


@pytest.mark.parametrize("name, cls", [("sgd", lrcore.SGD), ("adam", lrcore.Adam),
                                       ("adamw", lrcore.AdamW), ("adagrad", lrcore.Adagrad),
                                       ("rmsprop", lrcore.RMSprop),
                                       ("adadelta", lrcore.Adadelta)])
def test_every_optimizer_by_name_trains(name, cls):
    task = run_task(name, {K.LEARNING_RATE: 0.05 if name != "adadelta" else 1.0})
    losses = []
    task.progress_handlers = ProgressHandlers(
        Event.EPOCH_END, lambda c: losses.append(c.metrics[MetricKey.LOSS]))
    assert task.resume() is TaskState.COMPLETED
    assert type(task.optimizer) is cls and losses[-1] < losses[0]


def test_optimizer_instance_and_bad_optimizer():
    params, fn, data = make_problem()
    opt = lrcore.SGD(params, lr=0.1, momentum=0.9, nesterov=True)
    task = UpdateTask(params, fn, data, optimizer=opt, parameters={K.EPOCHS: 1})
    assert task.optimizer is opt and task.parameters[K.MOMENTUM] == 0.9
    task.resume()
    assert opt.step_count == 2    # 50 samples in mini-batches of the default 32
    with pytest.raises(ValueError, match="same arrays"):
        UpdateTask([np.zeros(5), np.zeros(1)], fn, data, optimizer=opt)
    with pytest.raises(ValueError, match=r"optimizer must be one of .*'sgd'.* got 'lbfgs'"):
        UpdateTask(params, fn, data, optimizer="lbfgs")


def test_bad_data_and_function():
    params, fn, (X, y) = make_problem()
    with pytest.raises(ValueError, match=r"\[50, 49\] rows"):
        UpdateTask(params, fn, (X, y[:-1]))
    with pytest.raises(TypeError, match=r"for a single array write \(X,\)"):
        UpdateTask(params, fn, X)
    with pytest.raises(TypeError, match="loss_and_grad must be callable"):
        UpdateTask(params, None, (X, y))


def test_data_object_with_batch_method():
    class Data:
        def __len__(self):
            return 5

        def batch(self, indices):
            return np.asarray(indices)

    got = []

    def fn(batch, params, grads):
        got.extend(batch.tolist())
        return 0.0

    UpdateTask([np.zeros(1)], fn, Data(), "sgd", {K.MINI_BATCH_SIZE: 2, K.EPOCHS: 2}).resume()
    assert sorted(got[:5]) == [0, 1, 2, 3, 4] and sorted(got[5:]) == [0, 1, 2, 3, 4]
    assert got[:5] != got[5:]          # shuffled differently each epoch


# -------------------------------------------------------------------- determinism


def trained(parameters=None, n=50):
    task = run_task("adam", parameters, n=n)
    task.resume()
    return [p.copy() for p in task.params]


def same_bits(a, b):
    return all(x.tobytes() == y.tobytes() for x, y in zip(a, b))


def test_same_seed_same_bits_other_seed_other_bits():
    assert same_bits(trained({K.SEED: 7}), trained({K.SEED: 7}))
    assert not same_bits(trained({K.SEED: 7}), trained({K.SEED: 8}))
    assert not same_bits(trained({K.SHUFFLE: False}), trained())


@pytest.mark.parametrize("pause_at", [(0, 0), (0, 6), (1, 3), (2, 6)])
def test_pause_and_resume_is_bitwise_an_uninterrupted_run(pause_at):
    reference = trained()
    paused = []

    def on_batch(ctx):
        where = (ctx.metrics[MetricKey.EPOCH_INDEX], ctx.metrics[MetricKey.MINI_BATCH_INDEX])
        if ctx.event is Event.MINI_BATCH_END and where == pause_at:
            ctx.task.pause()
            paused.append(where)

    task = run_task(handlers=ProgressHandlers(Event.MINI_BATCH_END, on_batch))
    assert task.resume() is TaskState.SUSPENDED and paused == [pause_at]
    assert task.resume() is TaskState.COMPLETED
    assert same_bits(task.params, reference)


def test_pause_at_epoch_end_and_from_training_begin():
    reference = trained()
    counts = {"begin": 0, "epoch": 0}

    def on_event(ctx):
        if ctx.event is Event.TRAINING_BEGIN:
            counts["begin"] += 1
            ctx.task.pause()
        elif ctx.event is Event.EPOCH_END:
            counts["epoch"] += 1
            ctx.task.pause()

    task = run_task(handlers=ProgressHandlers(Event.TRAINING_BEGIN | Event.EPOCH_END, on_event))
    states = [task.resume() for _ in range(5)]
    assert states == [TaskState.SUSPENDED] * 4 + [TaskState.COMPLETED]
    assert counts == {"begin": 1, "epoch": 3} and task.step_count == 0 + 21
    assert same_bits(task.params, reference)


def test_resume_in_handler_withdraws_a_pause_and_pause_of_suspended_is_noop():
    def on_batch(ctx):
        ctx.task.pause()
        ctx.task.resume()

    task = run_task(handlers=ProgressHandlers(Event.MINI_BATCH_END, on_batch))
    task.pause()
    assert task.resume() is TaskState.COMPLETED


def test_save_load_in_process_is_bitwise(tmp_path):
    reference = trained({K.LEARNING_RATE: schedules.make("cosine", initial=0.05, steps=21)})
    path = tmp_path / "task.lrc"

    def on_batch(ctx):
        if ctx.task.step_count == 10:
            ctx.task.save(path, meta={"note": "mid-epoch"})
            ctx.task.pause()

    task = run_task(parameters={K.LEARNING_RATE: schedules.make("cosine", initial=0.05,
                                                                steps=21)},
                    handlers=ProgressHandlers(Event.MINI_BATCH_END, on_batch))
    task.resume()
    _, fn, data = make_problem()
    loaded = UpdateTask.load(path, fn, data)
    assert loaded.state is TaskState.SUSPENDED and loaded.meta == {"note": "mid-epoch"}
    assert (loaded.epoch, loaded.mini_batch, loaded.step_count) == (1, 3, 10)
    assert loaded.parameters[K.LEARNING_RATE] == schedules.make("cosine", initial=0.05, steps=21)
    assert loaded.resume() is TaskState.COMPLETED
    assert same_bits(loaded.params, reference)


def test_load_into_given_arrays_and_mismatches(tmp_path):
    path = tmp_path / "t.lrc"
    task = run_task()
    task.save(path)
    _, fn, (X, y) = make_problem()
    target = [np.full(5, 9.0), np.full(1, 9.0)]
    loaded = UpdateTask.load(path, fn, (X, y), params=target)
    assert loaded.params[0] is target[0] and not target[0].any()
    with pytest.raises(lrcore.CheckpointError, match="50 samples"):
        UpdateTask.load(path, fn, (X[:40], y[:40]))
    with pytest.raises(lrcore.CheckpointError, match=r"params\[0\] is float64 \(5,\)"):
        UpdateTask.load(path, fn, (X, y), params=[np.zeros(4), np.zeros(1)])
    optimizer_only = tmp_path / "opt.lrc"
    lrcore.save(optimizer_only, task.optimizer)
    with pytest.raises(lrcore.CheckpointError, match="not an UpdateTask checkpoint"):
        UpdateTask.load(optimizer_only, fn, (X, y))


def test_save_refuses_while_running_outside_a_handler_and_lambda_schedules(tmp_path):
    task = run_task(parameters={K.LEARNING_RATE: schedules.Lambda(lambda s: 0.01)})
    with pytest.raises(ValueError, match="cannot be stored"):
        task.save(tmp_path / "x.lrc")
    task._state = TaskState.RUNNING   # as seen from another thread
    with pytest.raises(RuntimeError, match="pause"):
        task.save(tmp_path / "x.lrc")


FRESH = textwrap.dedent("""
    import sys
    import numpy as np
    sys.path.insert(0, {tests!r})
    from test_task import make_problem, run_task, K
    from lrcore.task import UpdateTask, ProgressHandlers, Event
    mode, path, out = sys.argv[1:4]
    if mode == "save":
        def stop(ctx):
            if ctx.task.step_count == 11:
                ctx.task.save(path)
                ctx.task.pause()
        task = run_task(parameters={{K.SEED: 3}},
                        handlers=ProgressHandlers(Event.MINI_BATCH_END, stop))
        task.resume()
    else:
        _, fn, data = make_problem()
        task = UpdateTask.load(path, fn, data)
        task.resume()
    np.savez(out, *task.params)
""")


def test_save_then_load_in_a_fresh_process_is_bitwise(tmp_path):
    script = tmp_path / "fresh.py"
    script.write_text(FRESH.format(tests=os.path.dirname(os.path.abspath(__file__))))
    ckpt, out = tmp_path / "t.lrc", tmp_path / "out.npz"
    for mode in ("save", "load"):
        subprocess.run([sys.executable, str(script), mode, str(ckpt), str(out)], check=True,
                       timeout=60)
    with np.load(out) as f:
        resumed = [f[k] for k in sorted(f.files)]
    assert same_bits(resumed, trained({K.SEED: 3}))


# -------------------------------------------------------------------- cancel and failure


def test_cancel_from_a_handler_stops_and_runs_completion():
    done = []

    def on_batch(ctx):
        if ctx.task.step_count == 4:
            ctx.task.cancel()

    task = run_task(handlers=ProgressHandlers(Event.MINI_BATCH_END, on_batch,
                                              completion=lambda c: done.append(c.task.state)))
    assert task.resume() is TaskState.CANCELLING
    assert task.step_count == 4 and done == [TaskState.CANCELLING]
    with pytest.raises(RuntimeError, match="CANCELLING"):
        task.resume()


def test_cancel_a_suspended_task():
    done = []
    task = run_task(handlers=ProgressHandlers(completion=lambda c: done.append(1)))
    task.cancel()
    assert task.state is TaskState.CANCELLING and done == [1] and task.step_count == 0


def test_failing_loss_function_leaves_the_last_completed_step():
    calls = {"n": 0}
    snapshot = []

    def flaky(batch, params, grads):
        calls["n"] += 1
        loss = logistic_loss_and_grad(batch, params, grads)
        if calls["n"] == 5:
            grads[0][...] = np.nan          # half-written gradients must not be applied
            raise RuntimeError("boom in batch 5")
        return loss

    params, _, data = make_problem()
    done = []
    task = UpdateTask(params, flaky, data, "adam", {K.MINI_BATCH_SIZE: 8, K.EPOCHS: 3},
                      ProgressHandlers(Event.MINI_BATCH_END,
                                       lambda c: snapshot.append([p.copy() for p in c.params]),
                                       completion=lambda c: done.append(c.task.state)))
    assert task.resume() is TaskState.FAILED
    assert isinstance(task.error, RuntimeError) and "boom" in str(task.error)
    assert done == [TaskState.FAILED]
    assert task.step_count == 4 and same_bits(task.params, snapshot[-1])
    assert all(np.isfinite(p).all() for p in task.params)
    with pytest.raises(RuntimeError, match="FAILED"):
        task.resume()


def test_failing_handler_and_bad_loss_value_fail_the_task():
    task = run_task(handlers=ProgressHandlers(Event.EPOCH_END, lambda c: 1 / 0))
    assert task.resume() is TaskState.FAILED and isinstance(task.error, ZeroDivisionError)
    params, _, data = make_problem()
    task = UpdateTask(params, lambda b, p, g: None, data)
    assert task.resume() is TaskState.FAILED
    assert "expected the mini-batch loss as a real number" in str(task.error)


def test_reduce_on_plateau_is_fed_the_epoch_loss():
    plateau = schedules.make("reduce_on_plateau", initial=0.1, patience=0, factor=0.5,
                             mode="max")  # the loss falls, so in 'max' mode it never improves
    task = run_task("sgd", {K.LEARNING_RATE: plateau, K.EPOCHS: 3})
    task.resume()
    assert plateau.num_reports == 3 and task.optimizer.lr == 0.1 * 0.5 ** 2


def test_reexports():
    for name in ("UpdateTask", "ParameterKey", "Event", "ProgressHandlers", "TaskState",
                 "MetricKey"):
        assert getattr(lrcore, name) is getattr(lrcore.task, name)


def test_every_optimizer_of_the_table_can_run_a_task():
    from lrcore import rules
    from lrcore.task import OPTIMIZERS
    assert set(OPTIMIZERS) == set(rules.PRESETS)
    for name, cls in OPTIMIZERS.items():
        task = run_task(name, {K.LEARNING_RATE: rules.PRESETS[name].cli_lr, K.EPOCHS: 2})
        assert task.resume() is TaskState.COMPLETED and type(task.optimizer) is cls
        assert task.step_count > 0


# -------------------------------------------------------------- half precision, 8-bit state


def _bf16_problem(size=5000, seed=0):
    """Least squares in bfloat16 params (one buffer big enough for 8-bit state)."""
    import ml_dtypes
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(40, size)).astype(np.float32)
    y = rng.normal(size=40).astype(np.float32)

    def fn(batch, params, grads):
        xb, yb = batch
        r = xb @ params[0].astype(np.float32) - yb
        grads[0][...] = (xb.T @ r / len(yb)).astype(ml_dtypes.bfloat16)
        return float(np.mean(r * r))
    return [np.zeros(size, ml_dtypes.bfloat16)], fn, (X, y)


@pytest.mark.parametrize("options", [dict(state_dtype="int8", rounding="stochastic", seed=3),
                                     dict(rounding="stochastic", seed=2 ** 64 - 1)])
def test_optimizer_options_pass_through_and_survive_save(tmp_path, options):
    params, fn, data = _bf16_problem()
    parameters = {K.EPOCHS: 2, K.MINI_BATCH_SIZE: 8, K.LEARNING_RATE: 0.01}
    full = UpdateTask(params, fn, data, "adamw", parameters, optimizer_options=options)
    full.resume()
    assert full.optimizer.options == dict(dict(state_dtype=None), **options)
    assert full.params[0].dtype.name == "bfloat16"
    path = tmp_path / "t.lrc"

    def on_batch(ctx):
        if ctx.task.step_count == 6:
            ctx.task.save(path)
            ctx.task.pause()
    p2, fn2, data2 = _bf16_problem()
    part = UpdateTask(p2, fn2, data2, "adamw", parameters, optimizer_options=options,
                      progress_handlers=ProgressHandlers(Event.MINI_BATCH_END, on_batch))
    part.resume()
    loaded = UpdateTask.load(path, fn2, data2)
    assert loaded.optimizer.options == full.optimizer.options
    assert loaded.resume() is TaskState.COMPLETED
    assert np.array_equal(loaded.params[0].view(np.uint16), full.params[0].view(np.uint16))


def test_optimizer_options_are_checked():
    params, fn, data = make_problem()
    with pytest.raises(TypeError, match="optimizer_options must be a dict with keys among"):
        UpdateTask(params, fn, data, "adam", optimizer_options={"lr": 1.0})
    with pytest.raises(ValueError, match="state_dtype='float16' is not supported"):
        UpdateTask(params, fn, data, "adam", optimizer_options={"state_dtype": "float16"})
    opt = lrcore.Adam(params)
    with pytest.raises(ValueError, match="optimizer_options applies to an optimizer built"):
        UpdateTask(params, fn, data, opt, optimizer_options={"seed": 1})
