"""Optimizer state dicts and checkpoint files (lrcore.checkpoint): copies not views, checks
before changes, exact resume (also in a fresh process), clear errors on truncated,
tampered or mismatched files with the target left untouched, atomic writes, no pickle."""
import ast
import json
import os
import pathlib
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import lrcore
from lrcore import checkpoint
from lrcore import schedules as S

# --------------------------------------------------------------------------------------------
# One builder shared by this process and the fresh process of the resume test
# --------------------------------------------------------------------------------------------

BUILDER = textwrap.dedent('''
    import numpy as np
    import lrcore
    from lrcore import schedules as S

    SHAPES = [(7, 3), (50,), (1,), (4, 2, 2), ()]

    def schedules(name):
        if name == "SGD":
            return dict(lr=S.Warmup(S.Cosine(0.1, 20, floor=0.01), 3), nesterov=False,
                        momentum=S.PiecewiseConstant([2], [0.0, 0.9]), weight_decay=0.01)
        if name == "Adam":
            return dict(lr=S.OneCycle(0.05, 12), betas=(S.Linear(0.95, 0.85, 6), 0.99),
                        amsgrad=True)
        if name == "AdamW":
            return dict(lr=S.ReduceOnPlateau(0.02, patience=0, factor=0.5),
                        weight_decay=S.ExponentialDecay(0.1, 0.2))
        if name == "Adagrad":
            return dict(lr=S.StepDecay(0.1, 0.5, 3), lr_decay=0.05,
                        initial_accumulator_value=0.1)
        if name == "RMSprop":
            return dict(lr=S.CosineWarmRestarts(0.02, 4), centered=True,
                        momentum=S.PiecewiseConstant([6], [0.5, 0.8]))
        if name == "Adadelta":
            return dict(lr=S.Sequential([S.Constant(1.0), S.Linear(1.0, 0.2, 5)], [4]),
                        rho=S.Linear(0.5, 0.9, 8))
        raise KeyError(name)

    def build(name, dtype="float32", seed=0, shapes=SHAPES):
        rng = np.random.default_rng(seed)
        params = [np.array(rng.uniform(0.5, 1.5, s) * rng.choice([-1.0, 1.0], s), dtype)
                  for s in shapes]
        groups = [{"params": params[:2]},
                  {"params": params[2:], "weight_decay": 0.03}]
        return getattr(lrcore, name)(groups, **schedules(name)), params

    def grads_at(step, params):
        rng = np.random.default_rng(1000 + step)
        return [np.array(rng.uniform(0.5, 1.5, p.shape) * rng.choice([-1.0, 1.0], p.shape),
                         p.dtype) for p in params]

    def train(opt, params, n):
        """n more steps; every 2 steps report a metric that alternately improves and not
        (1, 2, 0.5, 4, 0.25, ...: a ReduceOnPlateau with patience 0 cuts every other time)."""
        for _ in range(n):
            assert opt.step(grads_at(opt.step_count, params), clip_norm=5.0)
            if opt.step_count % 2 == 0:
                k = opt.step_count // 2
                opt.report(2.0 ** -(k // 2) if k % 2 else float(k))
''')
_builder = {}
exec(BUILDER, _builder)
build, train = _builder["build"], _builder["train"]
NAMES = ["SGD", "Adam", "AdamW", "Adagrad", "RMSprop", "Adadelta"]


def snapshot(opt, params=()):
    """Every buffer, hyperparameter, schedule state and the step; comparable with ==."""
    sd = opt.state_dict()
    arrays = [{k: (v.dtype.str, v.shape, v.tobytes()) for k, v in st.items()}
              for st in sd.pop("state")]
    return (json.dumps(sd, sort_keys=True), arrays,
            [p.tobytes() for p in list(opt.params) + list(params)],
            opt.step_count, [opt.hyperparameters(g) for g in range(len(opt.param_groups))])


def same_bytes(a, b):
    return [x.tobytes() for x in a] == [x.tobytes() for x in b]


# --------------------------------------------------------------------------------------------
# state_dict / load_state_dict
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_is_a_copy(name):
    opt, params = build(name)
    train(opt, params, 3)
    sd = opt.state_dict()
    kept = snapshot(opt)
    frozen = {(i, k): v.copy() for i, st in enumerate(sd["state"]) for k, v in st.items()}
    assert frozen, "no state buffers to check"
    live = [v for st in opt._states for v in st.values()]
    for (i, k), v in frozen.items():
        assert not any(np.shares_memory(sd["state"][i][k], b) for b in live)
        assert not any(np.shares_memory(sd["state"][i][k], p) for p in params)
        sd["state"][i][k][...] = 1e9                 # mutating the copy...
    sd["groups"][0]["hyperparameters"]["weight_decay"] = 123.0
    sd["step"] = 99
    assert snapshot(opt) == kept                     # ...changes nothing in the optimizer
    sd = opt.state_dict()
    train(opt, params, 2)                            # training does not change a saved dict
    for (i, k), v in frozen.items():
        assert sd["state"][i][k].tobytes() == v.tobytes()
    assert sd["step"] == 3


@pytest.mark.parametrize("name", NAMES)
def test_load_state_dict_round_trip_continues_bitwise(name):
    opt, params = build(name)
    train(opt, params, 5)
    twin, twin_params = build(name, seed=7)          # different starting point
    twin.load_state_dict(opt.state_dict())
    for t, p in zip(twin_params, params):
        np.copyto(t, p)
    assert snapshot(twin) == snapshot(opt)
    train(opt, params, 6)
    train(twin, twin_params, 6)
    assert same_bytes(params, twin_params)
    assert snapshot(twin) == snapshot(opt)


def _mismatches():
    """(label, how to break a state dict, words expected in the message)."""
    def bump_shape(sd):
        sd["params"][1]["shape"] = [51]

    def state_dtype(sd):
        k = sorted(sd["state"][-1])[0]
        sd["state"][-1][k] = sd["state"][-1][k].astype(np.float64)

    def state_shape(sd):
        k = sorted(sd["state"][0])[0]
        sd["state"][0][k] = sd["state"][0][k].reshape(-1)

    def drop_buffer(sd):
        del sd["state"][-1][sorted(sd["state"][-1])[0]]

    def unknown_buffer(sd):
        sd["state"][0]["surprise"] = sd["state"][0][sorted(sd["state"][0])[0]].copy()

    def late_bad_value(sd):
        # valid new hyperparameters in group 0, a broken buffer at the very end: the
        # hyperparameters must not have been applied when the error is found
        sd["groups"][0]["hyperparameters"]["lr"] = 0.5
        sd["step"] = 17
        drop_buffer(sd)

    return [
        ("not a dict", lambda sd: "nope", "not an lrcore optimizer state dict"),
        ("format", lambda sd: sd.pop("format"), "format"),
        ("version", lambda sd: sd.update(version=2), "version 2"),
        ("optimizer type", lambda sd: sd.update(optimizer="Other"), "'Other'"),
        ("step", lambda sd: sd.update(step=-1), "step"),
        ("group count", lambda sd: sd["groups"].pop(), "1 parameter groups"),
        ("param count", lambda sd: sd["params"].pop(), "parameters"),
        ("group membership", lambda sd: sd["groups"][0].update(params=[0]), "group 0"),
        ("shape", bump_shape, r"params\[1\]"),
        ("param dtype", lambda sd: sd["params"][0].update(dtype="float64"), r"params\[0\]"),
        ("state dtype", state_dtype, "float64"),
        ("state shape", state_shape, "state"),
        ("missing buffer", drop_buffer, "buffers"),
        ("unknown buffer", unknown_buffer, "surprise"),
        ("state count", lambda sd: sd["state"].pop(), "state for"),
        ("missing hyperparameter", lambda sd: sd["groups"][1]["hyperparameters"].pop("lr"),
         "hyperparameters"),
        ("bad hyperparameter", lambda sd: sd["groups"][1]["hyperparameters"].update(lr=-1.0),
         "lr"),
        ("bad schedule", lambda sd: sd["groups"][0]["hyperparameters"]["lr"].update(
            schedule={"name": "Nope", "kwargs": {}}), "schedule"),
        ("late error", late_bad_value, "buffers"),
    ]


@pytest.mark.parametrize("case", range(len(_mismatches())), ids=[m[0] for m in _mismatches()])
@pytest.mark.parametrize("name", ["SGD", "Adam", "RMSprop"])
def test_load_state_dict_mismatch_changes_nothing(name, case):
    label, breaker, words = _mismatches()[case]
    source, sp = build(name)
    train(source, sp, 3)
    sd = source.state_dict()
    result = breaker(sd)
    if isinstance(result, str):
        sd = result
    target, tp = build(name, seed=3)
    train(target, tp, 2)
    before = snapshot(target)
    with pytest.raises(ValueError, match=words) as info:
        target.load_state_dict(sd)
    assert "load_state_dict" in str(info.value)
    assert snapshot(target) == before


def test_load_state_dict_fixed_flags_must_match():
    opt, params = build("Adam")                      # amsgrad=True
    train(opt, params, 2)
    sd = opt.state_dict()
    other = lrcore.Adam([{"params": [np.ones_like(p) for p in params[:2]]},
                         {"params": [np.ones_like(p) for p in params[2:]]}], amsgrad=False)
    before = snapshot(other)
    with pytest.raises(ValueError, match="amsgrad"):
        other.load_state_dict(sd)
    assert snapshot(other) == before


def test_loading_keeps_the_callers_schedule_objects():
    """A ReduceOnPlateau the caller holds (and reports to) stays the one in use."""
    opt, params = build("AdamW")
    train(opt, params, 6)
    plateau = S.ReduceOnPlateau(0.02, patience=0, factor=0.5)
    twin = lrcore.AdamW([{"params": [p.copy() for p in params[:2]]},
                         {"params": [p.copy() for p in params[2:]], "weight_decay": 0.03}],
                        lr=plateau, weight_decay=S.ExponentialDecay(0.1, 0.2))
    twin.load_state_dict(opt.state_dict())
    assert plateau.state_dict() == opt.param_groups[0]["lr"].state_dict()
    assert plateau.num_reports == 3 and plateau.value < 0.02
    plateau.report(1e9)                              # bad report through the caller's object
    assert twin.lr == plateau.value


# --------------------------------------------------------------------------------------------
# save / load
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_save_load_round_trip(tmp_path, name):
    opt, params = build(name)
    train(opt, params, 7)
    extra = {"ema": np.linspace(-1, 1, 11), "count": np.array(7, np.int64)}
    path = tmp_path / "run.ckpt"
    lrcore.save(path, opt, params=extra, meta={"epoch": 3, "note": "ok"})
    twin, tp = build(name, seed=5)
    got = {"ema": np.zeros(11), "count": np.array(0, np.int64)}
    assert lrcore.load(path, twin, params=got) == {"epoch": 3, "note": "ok"}
    assert same_bytes(tp, params) and same_bytes(got.values(), extra.values())
    assert snapshot(twin) == snapshot(opt)
    if name == "AdamW":                              # the plateau's progress came back
        sd = twin.param_groups[0]["lr"].state_dict()
        assert sd["num_reports"] == 3 and sd["value"] < 0.02
    train(opt, params, 5)
    train(twin, tp, 5)
    assert same_bytes(tp, params)
    assert snapshot(twin) == snapshot(opt)


def test_scalar_param_round_trip(tmp_path):
    """0-d params (a temperature, a scale) keep their shape through a file."""
    p, q = np.array(1.5), np.ones(3)
    opt = lrcore.Adam([p, q], lr=0.1)
    opt.step([np.array(0.5), np.full(3, 0.25)])
    lrcore.save(tmp_path / "s.ckpt", opt)
    twin = lrcore.Adam([np.array(0.0), np.zeros(3)], lr=0.1)
    lrcore.load(tmp_path / "s.ckpt", twin)
    assert twin.params[0].shape == () and same_bytes(twin.params, [p, q])
    arrays, _ = checkpoint.read(tmp_path / "s.ckpt")
    assert arrays["param/0"].shape == () and arrays["state/0/exp_avg"].shape == ()


RESUME = textwrap.dedent('''
    import sys
    import numpy as np
    exec(open(sys.argv[1]).read())
    name, path, m, out = sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
    opt, params = build(name, seed=99)      # fresh arrays: everything comes from the file
    lrcore.load(path, opt)
    train(opt, params, m)
    np.savez(out, *params)
''')


@pytest.mark.parametrize("name", NAMES)
def test_resume_in_a_fresh_process_is_exact(tmp_path, name):
    n, m = 5, 7
    opt, params = build(name)
    train(opt, params, n)
    path = tmp_path / "mid.ckpt"
    lrcore.save(path, opt)
    train(opt, params, m)                            # the uninterrupted run
    (tmp_path / "builder.py").write_text(BUILDER)
    (tmp_path / "resume.py").write_text(RESUME)
    out = tmp_path / "resumed.npz"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(pathlib.Path(lrcore.__file__).parents[1]),
                                                      env.get("PYTHONPATH")]))
    run = subprocess.run([sys.executable, str(tmp_path / "resume.py"),
                          str(tmp_path / "builder.py"), name, str(path), str(m), str(out)],
                         capture_output=True, text=True, env=env, timeout=60)
    assert run.returncode == 0, run.stderr
    with np.load(out, allow_pickle=False) as resumed:
        got = [resumed[f"arr_{i}"] for i in range(len(params))]
    for i, (a, b) in enumerate(zip(got, params)):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert a.tobytes() == b.tobytes(), f"params[{i}]: max |diff| {np.max(np.abs(a - b))}"
    start, _ = build(name)
    assert not same_bytes(start.params, params), "training did nothing"


# --------------------------------------------------------------------------------------------
# Bad files: a clear error, the target untouched
# --------------------------------------------------------------------------------------------


@pytest.fixture
def saved(tmp_path):
    """A good checkpoint of an Adam run, and a differently trained Adam to load it into."""
    opt, params = build("Adam")
    train(opt, params, 4)
    path = tmp_path / "good.ckpt"
    lrcore.save(path, opt, params={"ema": np.arange(5.0)})
    target, tp = build("Adam", seed=2)
    train(target, tp, 2)
    return path, target


def _expect_unchanged(path, target, exc, words, extra=None):
    ema = np.full(5, -1.0) if extra is None else extra
    before = snapshot(target, [ema])
    with pytest.raises(exc, match=words):
        lrcore.load(path, target, params={"ema": ema})
    assert snapshot(target, [ema]) == before


@pytest.mark.parametrize("cut", ["empty", 7, 20, "header", "data", "minus-1", "minus-32"])
def test_truncated_file(saved, cut):
    path, target = saved
    blob = path.read_bytes()
    (hlen,) = np.frombuffer(blob[8:16], "<u8")
    at = {"empty": 0, "header": 16 + int(hlen) // 2, "data": (16 + int(hlen) + len(blob)) // 2,
          "minus-1": len(blob) - 1, "minus-32": len(blob) - 32}.get(cut, cut)
    path.write_bytes(blob[:at])
    _expect_unchanged(path, target, checkpoint.CheckpointError, "truncated")


@pytest.mark.parametrize("where", ["header", "data", "checksum", "last data byte"])
def test_flipped_byte(saved, where):
    path, target = saved
    blob = bytearray(path.read_bytes())
    i = {"header": 30, "data": len(blob) - 200, "checksum": len(blob) - 5,
         "last data byte": len(blob) - 33}[where]
    blob[i] ^= 0x10
    path.write_bytes(bytes(blob))
    _expect_unchanged(path, target, checkpoint.CheckpointError, "corrupt")


def test_wrong_magic_and_version(saved):
    path, target = saved
    blob = path.read_bytes()
    path.write_bytes(b"PK\x03\x04" + blob[4:])
    _expect_unchanged(path, target, checkpoint.CheckpointError, "bad magic")
    path.write_bytes(blob[:7] + b"\x09" + blob[8:])
    _expect_unchanged(path, target, checkpoint.CheckpointError, "container version 9")


def test_not_a_checkpoint(tmp_path, saved):
    _, target = saved
    text = tmp_path / "notes.txt"
    text.write_text("just some text that is long enough to pass the size check " * 3)
    _expect_unchanged(text, target, checkpoint.CheckpointError, "not an lrcore checkpoint")
    npz = tmp_path / "weights.npz"
    np.savez(npz, a=np.ones(3))
    _expect_unchanged(npz, target, checkpoint.CheckpointError, "not an lrcore checkpoint")
    other = tmp_path / "container.bin"                # a valid container, not from save()
    checkpoint.write(other, {"a": np.ones(3)}, {"kind": "something else"})
    _expect_unchanged(other, target, checkpoint.CheckpointError, "not an optimizer checkpoint")
    _expect_unchanged(tmp_path / "missing.ckpt", target, FileNotFoundError, "missing.ckpt")
    _expect_unchanged(tmp_path, target, OSError, "Is a directory")


def test_wrong_shapes_from_another_model(tmp_path):
    small, sp = build("Adam", shapes=[(7, 3), (49,), (1,), (4, 2, 2), ()])
    train(small, sp, 2)
    path = tmp_path / "small.ckpt"
    lrcore.save(path, small)
    target, tp = build("Adam", seed=4)
    train(target, tp, 1)
    before = snapshot(target)
    with pytest.raises(checkpoint.CheckpointError, match=r"param 1 is float32 \(49,\)"):
        lrcore.load(path, target)
    assert snapshot(target) == before
    # another dtype, another optimizer, another param count
    for other in (build("Adam", dtype="float64")[0], build("AdamW")[0],
                  lrcore.Adam([np.ones(3, np.float32)])):
        lrcore.save(path, other)
        with pytest.raises(checkpoint.CheckpointError):
            lrcore.load(path, target)
        assert snapshot(target) == before


def test_extra_arrays_must_match(saved):
    path, target = saved
    _expect_unchanged(path, target, checkpoint.CheckpointError, "ema", extra=np.zeros(4))
    ro = np.zeros(5)
    ro.flags.writeable = False
    _expect_unchanged(path, target, checkpoint.CheckpointError, "read-only", extra=ro)
    before = snapshot(target)
    with pytest.raises(checkpoint.CheckpointError, match="extra arrays"):
        lrcore.load(path, target, params={"other": np.zeros(5)})
    assert snapshot(target) == before


def _craft(header, data=b""):
    import hashlib
    import struct
    h = json.dumps(header).encode()
    body = checkpoint.MAGIC + struct.pack("<Q", len(h)) + h
    body += b"\0" * ((-len(body)) % 64) + data
    return body + hashlib.sha256(body).digest()


@pytest.mark.parametrize("entry,words", [
    ({"dtype": "|O", "shape": [1]}, "unsupported dtype"),
    ({"dtype": ["<f4"], "shape": [1]}, "unsupported dtype"),
    ({"dtype": {"names": ["a"], "formats": ["<f4"]}, "shape": [1]}, "unsupported dtype"),
    ({"dtype": "<f8", "shape": [-1, -8]}, "negative"),
    ({"dtype": "<f8", "shape": [100]}, "does not fit"),
    ({"dtype": "<f8", "shape": "abc"}, "corrupt array entry"),
], ids=["object", "list", "structured", "negative", "too-big", "bad-shape"])
def test_crafted_headers_never_build_objects(tmp_path, saved, entry, words):
    """A file with a valid checksum but a hostile header: a clear error, never an object
    array, never unpickling."""
    _, target = saved
    payload = pickle.dumps(["would run code"])
    payload += b"\0" * (-len(payload) % 8)
    e = dict(name="param/0", offset=0, nbytes=len(payload), **entry)
    path = tmp_path / "crafted.ckpt"
    path.write_bytes(_craft({"meta": {"kind": "lrcore.checkpoint"}, "arrays": [e]}, payload))
    _expect_unchanged(path, target, checkpoint.CheckpointError, words)


@pytest.mark.parametrize("meta", [{"kind": "lrcore.checkpoint"},
                                  {"kind": "lrcore.checkpoint", "optimizer": []},
                                  {"kind": "lrcore.checkpoint", "optimizer": {"state": 1}},
                                  [1, 2], None])
def test_crafted_meta_gives_checkpoint_error(tmp_path, saved, meta):
    _, target = saved
    path = tmp_path / "crafted.ckpt"
    path.write_bytes(_craft({"meta": meta, "arrays": []}))
    _expect_unchanged(path, target, checkpoint.CheckpointError, "not an optimizer checkpoint")


def test_loader_never_unpickles(saved, monkeypatch):
    tree = ast.parse(pathlib.Path(checkpoint.__file__).read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update(a.name for a in node.names)
            names.add(getattr(node, "module", None) or "")
        elif isinstance(node, ast.Name):
            names.add(node.id)
        elif isinstance(node, ast.Attribute):
            names.add(node.attr)
        elif isinstance(node, ast.keyword):
            names.add(node.arg or "")
    for word in ("pickle", "cPickle", "_pickle", "dill", "marshal", "shelve", "Unpickler",
                 "allow_pickle", "eval", "exec", "__import__", "import_module"):
        assert word not in names, f"checkpoint.py uses {word!r}"
    path, target = saved

    def forbidden(*args, **kwargs):
        raise AssertionError("the checkpoint loader unpickled something")
    for attr in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, attr, forbidden)
    lrcore.load(path, target, params={"ema": np.zeros(5)})   # a good file loads without it


# --------------------------------------------------------------------------------------------
# Atomic writes
# --------------------------------------------------------------------------------------------


def _leftovers(directory):
    return sorted(p.name for p in pathlib.Path(directory).iterdir() if p.suffix == ".tmp")


@pytest.mark.parametrize("failure", ["replace", "fsync", "mid-data", "keyboard-interrupt"])
def test_failed_save_keeps_previous_checkpoint(tmp_path, monkeypatch, failure):
    opt, params = build("SGD")
    train(opt, params, 2)
    path = tmp_path / "run.ckpt"
    lrcore.save(path, opt)
    good = path.read_bytes()
    train(opt, params, 3)
    calls = {"n": 0}

    def boom(*args, **kwargs):
        calls["n"] += 1
        raise (KeyboardInterrupt if failure == "keyboard-interrupt" else OSError)("disk full")
    if failure == "replace":
        monkeypatch.setattr(checkpoint.os, "replace", boom)
    elif failure == "fsync":
        monkeypatch.setattr(checkpoint.os, "fsync", boom)
    else:
        real = memoryview

        def flaky(obj):                          # fail on the third array written
            calls["n"] += 1
            if calls["n"] == 3:
                boom()
            return real(obj)
        monkeypatch.setattr(checkpoint, "memoryview", flaky, raising=False)
    with pytest.raises((OSError, KeyboardInterrupt), match="disk full"):
        lrcore.save(path, opt)
    monkeypatch.undo()
    assert calls["n"] >= 1
    assert path.read_bytes() == good
    assert _leftovers(tmp_path) == []
    twin, tp = build("SGD", seed=1)
    lrcore.load(path, twin)
    assert twin.step_count == 2


def test_save_writes_a_new_file_in_place_of_the_old(tmp_path):
    opt, params = build("RMSprop")
    path = tmp_path / "run.ckpt"
    for k in range(3):
        train(opt, params, 1)
        lrcore.save(path, opt)
        assert checkpoint.read(path)[1]["optimizer"]["step"] == k + 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.ckpt"]
    blob = path.read_bytes()
    assert blob[:8] == checkpoint.MAGIC
    (hlen,) = np.frombuffer(blob[8:16], "<u8")
    header = json.loads(blob[16:16 + int(hlen)])
    data = 16 + int(hlen) + (-(16 + int(hlen)) % 64)
    assert all((data + e["offset"]) % 64 == 0 for e in header["arrays"])


def test_checkpoint_file_mode_follows_the_umask(tmp_path):
    import os
    from lrcore import checkpoint
    old = os.umask(0o022)
    try:
        checkpoint.write(tmp_path / "m.lrc", {"a": np.ones(2)}, {})
    finally:
        os.umask(old)
    assert (os.stat(tmp_path / "m.lrc").st_mode & 0o777) == 0o644
