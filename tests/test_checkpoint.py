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
        ("version", lambda sd: sd.update(version=3), "version 3"),
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


def test_replacing_a_file_keeps_its_mode_and_the_umask_is_never_touched(tmp_path, monkeypatch):
    """Modes come from the kernel (open with 0o666 less the umask); os.umask, which is
    process-wide and races every thread creating files, is never called."""
    def forbidden(*args):
        raise AssertionError("checkpoint.write called os.umask")
    path = tmp_path / "m.lrc"
    old = os.umask(0o027)
    try:
        monkeypatch.setattr(os, "umask", forbidden)
        checkpoint.write(path, {"a": np.ones(2)}, {})
        assert (os.stat(path).st_mode & 0o777) == 0o640
        os.chmod(path, 0o600)                        # the user made it private
        checkpoint.write(path, {"a": np.zeros(2)}, {})
        assert (os.stat(path).st_mode & 0o777) == 0o600
        assert checkpoint.read(path)[0]["a"].tolist() == [0.0, 0.0]
    finally:
        monkeypatch.undo()
        os.umask(old)


# --------------------------------------------------------------------------------------------
# Hostile files (issue 11 item 8): every one a CheckpointError, nothing modified, no blow-up
# --------------------------------------------------------------------------------------------


def _good_header(path):
    """(header dict, data bytes) of a file written by lrcore."""
    blob = pathlib.Path(path).read_bytes()
    (hlen,) = np.frombuffer(blob[8:16], "<u8")
    start = 16 + int(hlen)
    return json.loads(blob[16:start]), blob[start + (-start % 64):-32]


def _recraft(path, mutate):
    """Rewrite `path` with its header mutated by `mutate(header)` and a valid checksum."""
    header, data = _good_header(path)
    mutate(header)
    path.write_bytes(_craft(header, data))


def _entry(header, name):
    return next(e for e in header["arrays"] if e["name"] == name)


def _set_state(sd_key, value):
    return lambda h: h["meta"]["optimizer"].__setitem__(sd_key, value)


def _dup_key(path):
    """A header whose JSON repeats the key "step" (the second one would win in json.loads)."""
    header, data = _good_header(path)
    h = json.dumps(header).replace('"step": 4', '"step": 4, "step": 1180591620717411303424')
    assert h != json.dumps(header)
    import hashlib
    import struct
    body = checkpoint.MAGIC + struct.pack("<Q", len(h)) + h.encode()
    body += b"\0" * ((-len(body)) % 64) + data
    path.write_bytes(body + hashlib.sha256(body).digest())


HOSTILE = {
    # issue 11 item 8 reproducers
    "shape as strings": (lambda h: _entry(h, "param/1").update(shape=["50"]), "integers"),
    "shape as floats": (lambda h: _entry(h, "param/1").update(shape=[50.0]), "integers"),
    "shape as bools": (lambda h: _entry(h, "param/2").update(shape=[True]), "integers"),
    "duplicate names": (lambda h: h["arrays"].append(dict(_entry(h, "param/0"))), "twice"),
    "step 2**70": (_set_state("step", 2 ** 70), r"step must be an integer in \[0, 2\*\*53\)"),
    "step 2**53": (_set_state("step", 2 ** 53), "step"),
    "step float": (_set_state("step", 4.0), "step"),
    "step bool": (_set_state("step", True), "step"),
    "step negative": (_set_state("step", -1), "step"),
    # numbers numpy or Python would overflow on
    "offset 2**70": (lambda h: _entry(h, "param/0").update(offset=2 ** 70), "does not fit"),
    "nbytes 2**70": (lambda h: _entry(h, "param/0").update(nbytes=2 ** 70), "does not fit"),
    "shape 2**62 squared": (lambda h: _entry(h, "param/0").update(shape=[2 ** 62, 2 ** 62]),
                            "does not fit"),
    "65 dimensions": (lambda h: _entry(h, "param/2").update(shape=[1] * 65), "at most 64"),
    "offset float": (lambda h: _entry(h, "param/0").update(offset=0.0), "integers"),
    "nbytes string": (lambda h: _entry(h, "param/0").update(nbytes="84"), "integers"),
    "misaligned offset": (lambda h: _entry(h, "param/1").update(offset=_entry(h, "param/1")
                                                                ["offset"] + 4), "multiple of 64"),
    "overlap": (lambda h: _entry(h, "param/1").update(offset=_entry(h, "param/0")["offset"]),
                "overlap"),
    "name not a string": (lambda h: _entry(h, "param/0").update(name=7), "not a string"),
    "entry not an object": (lambda h: h["arrays"].append([1, 2]), "corrupt array entry"),
    "entry with an extra key": (lambda h: _entry(h, "param/0").update(data="x"),
                                "corrupt array entry"),
    "arrays not a list": (lambda h: h.update(arrays={}), "corrupt header"),
    "header extra key": (lambda h: h.update(more=1), "corrupt header"),
    "dtype object": (lambda h: _entry(h, "param/0").update(dtype="|O"), "unsupported dtype"),
    "dtype big-endian": (lambda h: _entry(h, "param/0").update(dtype=">f4"), "unsupported"),
    # the file against the optimizer
    "state of another shape": (lambda h: _entry(h, "state/1/exp_avg").update(shape=[25, 2]),
                               "state 'exp_avg' of param 1"),
    "state missing": (lambda h: h["meta"]["optimizer"]["state"][0].append("ghost"),
                      "'ghost' of param 0 is missing"),
    "state names duplicated": (lambda h: h["meta"]["optimizer"]["state"][0].append("exp_avg"),
                               "unique names"),
    "state names not strings": (lambda h: h["meta"]["optimizer"]["state"].__setitem__(0, [1]),
                                "unique names"),
    "state list too short": (lambda h: h["meta"]["optimizer"]["state"].pop(), "parameters"),
    "extra names not strings": (lambda h: h["meta"].update(extra=[1]), "not an optimizer"),
    "groups not a list": (_set_state("groups", 3), "load_state_dict"),
    "params info garbage": (_set_state("params", [None] * 5), "load_state_dict"),
    "hyperparameter huge int": (lambda h: h["meta"]["optimizer"]["groups"][1]
                                ["hyperparameters"].update(eps=10 ** 400), "load_state_dict"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE), ids=sorted(HOSTILE))
def test_hostile_header_is_a_checkpoint_error_and_changes_nothing(saved, case):
    path, target = saved
    mutate, words = HOSTILE[case]
    _recraft(path, mutate)
    _expect_unchanged(path, target, checkpoint.CheckpointError, words)


def test_duplicate_json_keys_are_refused(saved):
    """{"step": 4, "step": 2**70}: json.loads would keep the last one silently."""
    path, target = saved
    _dup_key(path)
    _expect_unchanged(path, target, checkpoint.CheckpointError, "duplicate key 'step'")


def test_header_not_utf8_and_not_json(saved):
    path, target = saved
    header, data = _good_header(path)
    import hashlib
    import struct
    deep = b'{"meta": ' + b"[" * 100000 + b"]" * 100000 + b', "arrays": []}'  # RecursionError
    huge = b'{"meta": ' + b"9" * 5000 + b', "arrays": []}'   # int() digit limit: ValueError
    for h in (b"\xff\xfe{}", b"{not json", b"[]", b'{"meta": 1}', b"1e999999", deep, huge):
        body = checkpoint.MAGIC + struct.pack("<Q", len(h)) + h
        body += b"\0" * ((-len(body)) % 64) + data
        path.write_bytes(body + hashlib.sha256(body).digest())
        _expect_unchanged(path, target, checkpoint.CheckpointError, "corrupt header")


def test_boolean_arrays_hold_only_0_and_1(tmp_path, saved):
    _, target = saved
    path = tmp_path / "b.lrc"
    flags = np.array([True, False, True])
    opt = lrcore.SGD(np.ones(2), lr=0.1)
    lrcore.save(path, opt, params={"flags": flags})
    got = np.zeros(3, bool)
    lrcore.load(path, lrcore.SGD(np.zeros(2), lr=0.1), params={"flags": got})
    assert got.tolist() == [True, False, True]
    header, data = _good_header(path)
    at = _entry(header, "extra/flags")["offset"] + 1
    path.write_bytes(_craft(header, data[:at] + b"\x02" + data[at + 1:]))
    twin = lrcore.SGD(np.zeros(2), lr=0.1)
    before = snapshot(twin, [got])
    with pytest.raises(checkpoint.CheckpointError, match="other than 0 and 1"):
        lrcore.load(path, twin, params={"flags": got})
    assert snapshot(twin, [got]) == before


def test_crafted_file_of_entries_sharing_one_region_is_refused_before_allocating(tmp_path):
    """Issue 11 item 8: a 16 MiB file whose 200 entries all point at the same 16 MiB of data
    made the old loader copy it 200 times (3.2 GB) before rejecting it. Now the overlap is
    found in the header, and the whole load allocates less than 3 MiB."""
    import tracemalloc
    n = 2 ** 21                                       # float64: 16 MiB
    entries = [{"name": f"state/0/b{k}" if k else "param/0", "dtype": "<f8", "shape": [n],
                "offset": 0, "nbytes": 8 * n} for k in range(200)]
    meta = {"kind": "lrcore.checkpoint", "extra": [],
            "optimizer": {"step": 1, "state": [[f"b{k}" for k in range(1, 200)]]}}
    path = tmp_path / "bomb.lrc"
    path.write_bytes(_craft({"meta": meta, "arrays": entries}, bytes(8 * n)))
    assert 16 << 20 < path.stat().st_size < 17 << 20
    opt = lrcore.SGD(np.zeros(n), lr=0.1)
    tracemalloc.start()
    try:
        with pytest.raises(checkpoint.CheckpointError, match="overlap"):
            lrcore.load(path, opt)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 3 << 20, f"the refused load allocated {peak} bytes"
    assert not opt.params[0].any() and opt.step_count == 0


def _peak_of(fn):
    import tracemalloc
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("two_phase", [True, False], ids=["two-phase", "load_state_dict"])
def test_load_peak_memory_is_at_most_the_file_size_plus_one_array(tmp_path, monkeypatch,
                                                                   two_phase):
    """Measured with tracemalloc (numpy reports its buffers to it). The old loader peaked
    at 3x the file size; the bound of issue 11 is the file size plus one array. Reading
    straight into the optimizer's buffers (optim's validate-only check), the load needs
    one 1 MiB chunk; through load_state_dict, the state's share of the file."""
    if not two_phase:
        monkeypatch.setattr(checkpoint, "_state_dict_checker", lambda: None)
    elif checkpoint._state_dict_checker() is None:
        pytest.skip("this lrcore.optim has no validate-only state-dict check")
    shapes = [(1 << 20,), (512, 1024), (3, 1 << 18), (1000,)]
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    opt = lrcore.Adam(params, lr=0.01)
    opt.step([np.ones_like(p) for p in params])
    path = tmp_path / "big.lrc"
    extra = {"ema": rng.standard_normal(1 << 19)}
    lrcore.save(path, opt, params=extra)
    size = path.stat().st_size
    twin = lrcore.Adam([np.zeros_like(p) for p in params], lr=0.01)
    got = {"ema": np.zeros(1 << 19)}
    peak = _peak_of(lambda: lrcore.load(path, twin, params=got))
    largest = max(p.nbytes for p in params + list(extra.values()))
    assert same_bytes(twin.params, params) and same_bytes(got.values(), extra.values())
    assert snapshot(twin) == snapshot(opt)
    assert peak <= size + largest, (peak, size, largest)
    if two_phase:
        assert peak < (1 << 20) + (64 << 10), peak
    print(f"load peak {peak / 2**20:.1f} MiB for a {size / 2**20:.1f} MiB file")


@pytest.fixture
def without_two_phase(monkeypatch):
    """Load through load_state_dict (an lrcore.optim without the validate-only check)."""
    monkeypatch.setattr(checkpoint, "_state_dict_checker", lambda: None)


@pytest.mark.parametrize("name", ["SGD", "Adam", "RMSprop"])
def test_load_without_the_two_phase_interface(tmp_path, without_two_phase, name):
    opt, params = build(name)
    train(opt, params, 4)
    path = tmp_path / "f.lrc"
    lrcore.save(path, opt, params={"ema": np.arange(3.0)})
    twin, tp = build(name, seed=4)
    got = np.zeros(3)
    lrcore.load(path, twin, params={"ema": got})
    assert snapshot(twin) == snapshot(opt) and got.tolist() == [0.0, 1.0, 2.0]
    _recraft(path, lambda h: h["meta"]["optimizer"]["groups"][0]["hyperparameters"]
             .update(lr=-1.0))
    target, _ = build(name, seed=5)
    _expect_unchanged(path, target, checkpoint.CheckpointError, "lr")


def test_read_meta_reads_no_array(tmp_path):
    opt = lrcore.SGD(np.ones(1 << 20), lr=0.1)
    path = tmp_path / "m.lrc"
    lrcore.save(path, opt, meta={"epoch": 2})
    peak = _peak_of(lambda: checkpoint.read_meta(path))
    assert checkpoint.read_meta(path)["user"] == {"epoch": 2}
    assert peak < 2 << 20


def test_read_only_param_after_construction_fails_the_load_before_anything_changes(saved):
    """Issue 11 item 6: a param made read-only after the optimizer was built made a failed
    load half-apply (step and state rolled back, params not) with a plain ValueError."""
    path, target = saved
    target.params[3].flags.writeable = False
    try:
        _expect_unchanged(path, target, checkpoint.CheckpointError, "param 3 is read-only")
    finally:
        target.params[3].flags.writeable = True
    lrcore.load(path, target, params={"ema": np.zeros(5)})    # writeable again: it loads


def test_non_contiguous_and_foreign_destinations(saved):
    path, target = saved
    buf = np.full(10, -1.0)
    view = buf[::2]                                   # not contiguous: goes through a copy
    lrcore.load(path, target, params={"ema": view})
    assert view.tolist() == list(np.arange(5.0)) and buf[1::2].tolist() == [-1.0] * 5
    swapped = np.zeros(5, ">f8")                      # other byte order: converted on copy
    lrcore.load(path, target, params={"ema": swapped})
    assert swapped.tolist() == list(np.arange(5.0))
    with pytest.raises(checkpoint.CheckpointError, match="not a numpy array"):
        lrcore.load(path, target, params={"ema": [0.0] * 5})
    with pytest.raises(TypeError, match="optimizer must be an lrcore Optimizer"):
        lrcore.load(path, object())


def test_fifo_and_devices_are_refused_without_blocking(tmp_path, saved):
    """A FIFO in place of the file used to hang load() forever; it is opened without
    blocking and refused (as are devices). Run in a subprocess with a timeout so that a
    regression fails instead of hanging the suite."""
    fifo = tmp_path / "pipe.lrc"
    os.mkfifo(fifo)
    script = textwrap.dedent(f'''
        import numpy as np, lrcore
        from lrcore.task import UpdateTask
        for path in ({str(fifo)!r}, "/dev/null", "/dev/zero"):
            for load in (lambda p: lrcore.load(p, lrcore.SGD(np.ones(2), lr=0.1)),
                         lambda p: UpdateTask.load(p, lambda b, p, g: 0.0, (np.ones(3),)),
                         lrcore.checkpoint.read):
                try:
                    load(path)
                except lrcore.CheckpointError as exc:
                    assert "not a regular file" in str(exc), exc
                else:
                    raise AssertionError("loaded " + path)
        print("ok")
    ''')
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr
    import socket
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(tmp_path / "s.lrc"))
        with pytest.raises(checkpoint.CheckpointError, match="not a regular file"):
            lrcore.load(tmp_path / "s.lrc", lrcore.SGD(np.ones(2), lr=0.1))


def test_file_changed_while_open_is_detected(saved):
    path, _ = saved
    with checkpoint.CheckpointFile(path) as f:
        with open(path, "ab") as g:
            g.write(b"x")
        with pytest.raises(checkpoint.CheckpointError, match="modified while"):
            f.read_array("param/0")


def test_bfloat16_arrays_round_trip(tmp_path):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    a = np.array([1.5, -2.25, 3e38], ml_dtypes.bfloat16)
    checkpoint.write(tmp_path / "bf.lrc", {"a": a, "b": np.ones(2)}, {})
    arrays, _ = checkpoint.read(tmp_path / "bf.lrc")
    assert arrays["a"].dtype == a.dtype and arrays["a"].tobytes() == a.tobytes()


# --------------------------------------------------------------------------------------------
# Killed saves and their temporary files
# --------------------------------------------------------------------------------------------

KILLED_SAVER = textwrap.dedent('''
    import sys
    import numpy as np
    import lrcore
    p = np.full(1 << 24, 2.0, np.float32)            # 64 MiB, plus its momentum buffer
    opt = lrcore.SGD(p, lr=0.5, momentum=0.9)
    opt.step(np.ones_like(p))
    lrcore.save(sys.argv[1], opt, meta={"save": 0})
    print("saved", flush=True)
    n = 0
    while True:                                       # saving until killed
        n += 1
        lrcore.save(sys.argv[1], opt, meta={"save": n})
''')


def _temps(directory):
    return sorted(p.name for p in pathlib.Path(directory).iterdir()
                  if p.name.startswith(".lrcore-") and p.suffix == ".tmp")


def _kill_mid_save(directory, path):
    """Run KILLED_SAVER and kill -9 it while a temporary file is being written; returns the
    names of the orphaned temporary files."""
    import signal
    import time
    for attempt in range(5):
        proc = subprocess.Popen([sys.executable, "-c", KILLED_SAVER, str(path)],
                                stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout.readline().strip() == "saved"
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                names = _temps(directory)
                if names and (directory / names[0]).stat().st_size > (1 << 20):
                    break
                time.sleep(0.002)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait(timeout=60)
            proc.stdout.close()
        assert proc.returncode == -signal.SIGKILL
        orphans = _temps(directory)
        if orphans:                      # (else the kill landed between two saves: again)
            return orphans
    raise AssertionError("could not kill the saver in the middle of a save")


def test_killed_save_keeps_the_previous_checkpoint_and_the_next_save_removes_its_orphan(tmp_path):
    """Issue 11 item 8: 20 kill -9 during saves left 16 orphaned temporary files (3.7 GB).
    A real kill -9 mid-save (128 MiB file): the checkpoint is the previous one, intact; the
    next save into that directory, by anyone, removes the orphan (its pid is dead)."""
    path = tmp_path / "run.lrc"
    orphans = _kill_mid_save(tmp_path, path)
    assert len(orphans) == 1 and str(os.getpid()) not in orphans[0]
    p = np.zeros(1 << 24, np.float32)
    opt = lrcore.SGD(p, lr=0.5, momentum=0.9)
    meta = lrcore.load(path, opt)
    assert isinstance(meta["save"], int) and opt.step_count == 1
    assert np.all(p == np.float32(1.5))

    lrcore.save(tmp_path / "other.lrc", lrcore.SGD(np.ones(3), lr=0.1))
    assert _temps(tmp_path) == []
    assert sorted(x.name for x in tmp_path.iterdir()) == ["other.lrc", "run.lrc"]


def test_stale_temp_rules_spare_live_saves_and_foreign_files(tmp_path):
    """Only lrcore's own names, regular files, and stale ones: made on this host by a dead
    process, or not written to for STALE_TEMP_SECONDS. A live process's save is kept."""
    import time
    host = checkpoint._host_tag()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        names = {
            "dead": f".lrcore-{host}-{dead.pid}-0123456789ab.tmp",
            "live": f".lrcore-{host}-{live.pid}-0123456789ab.tmp",
            "mine": f".lrcore-{host}-{os.getpid()}-0123456789ab.tmp",
            "other host": f".lrcore-{'0' * 8 if host != '0' * 8 else '1' * 8}-{dead.pid}"
                          f"-0123456789ab.tmp",
            "old other host": f".lrcore-{'0' * 8 if host != '0' * 8 else '1' * 8}-1-"
                              f"aaaaaaaaaaaa.tmp",
            "legacy fresh": ".lrcore-abcd_123.tmp",
            "legacy old": ".lrcore-zzzz_999.tmp",
            "not ours": ".lrcore-notes.tmp",
            "not ours either": "dead.lrcore-x.tmp",
        }
        for name in names.values():
            (tmp_path / name).write_bytes(b"partial")
        os.symlink(tmp_path / names["live"], tmp_path / f".lrcore-{host}-{dead.pid}-"
                                                        f"ffffffffffff.tmp")
        old = time.time() - checkpoint.STALE_TEMP_SECONDS - 60
        for key in ("old other host", "legacy old"):
            os.utime(tmp_path / names[key], (old, old))
        checkpoint.write(tmp_path / "x.lrc", {"a": np.ones(1)}, {})
        left = {p.name for p in tmp_path.iterdir()}
        gone = {k for k, n in names.items() if n not in left}
        assert gone == {"dead", "old other host", "legacy old"}
        assert f".lrcore-{host}-{dead.pid}-ffffffffffff.tmp" in left     # a symlink: kept
    finally:
        live.kill()
        live.wait()


# --------------------------------------------------------------------------------------------
# Fuzz: corrupted, truncated, bit-flipped and re-checksummed files
# --------------------------------------------------------------------------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_FUZZ = {}


def _fuzz_source():
    """One small checkpoint with every kind of entry (params of 4 shapes incl. 0-d, Adam state
    with amsgrad, schedules, extras incl. a boolean and an integer array)."""
    if not _FUZZ:
        import tempfile
        opt, params = build("Adam", shapes=[(3, 2), (5,), (1,), ()])
        train(opt, params, 3)
        d = tempfile.mkdtemp(prefix="lrcore-fuzz-")
        path = pathlib.Path(d) / "src.lrc"
        lrcore.save(path, opt, params={"mask": np.array([True, False]),
                                       "count": np.array([3, 4], np.int64)}, meta={"e": 1})
        _FUZZ.update(blob=path.read_bytes(), dir=pathlib.Path(d))
    return _FUZZ


def _fuzz_target():
    opt, params = build("Adam", seed=11, shapes=[(3, 2), (5,), (1,), ()])
    train(opt, params, 1)
    extra = {"mask": np.array([False, True]), "count": np.array([-1, -1], np.int64)}
    return opt, extra


def _try_load(blob, original):
    src = _fuzz_source()
    path = src["dir"] / "fuzz.lrc"
    path.write_bytes(blob)
    opt, extra = _fuzz_target()
    before = snapshot(opt, extra.values())
    try:
        lrcore.load(path, opt, params=extra)
    except checkpoint.CheckpointError:
        assert snapshot(opt, extra.values()) == before
        return False
    assert not original or blob == src["blob"], "a damaged file loaded"
    return True


_FUZZ_SETTINGS = settings(max_examples=int(os.environ.get("LRCORE_FUZZ_EXAMPLES", "300")),
                          deadline=None, derandomize=True,
                          suppress_health_check=list(HealthCheck))


@_FUZZ_SETTINGS
@given(data=st.data())
def test_fuzz_damaged_bytes(data):
    """Truncations, bit flips, overwritten, inserted and deleted ranges, checksum NOT fixed:
    always CheckpointError (unless the bytes are unchanged), nothing modified."""
    blob = bytearray(_fuzz_source()["blob"])
    for _ in range(data.draw(st.integers(1, 4))):
        kind = data.draw(st.sampled_from(["flip", "truncate", "overwrite", "insert", "delete"]))
        at = data.draw(st.integers(0, max(len(blob) - 1, 0)))
        if kind == "flip" and blob:
            blob[at] ^= 1 << data.draw(st.integers(0, 7))
        elif kind == "truncate":
            del blob[at:]
        elif kind == "overwrite":
            chunk = data.draw(st.binary(min_size=1, max_size=40))
            blob[at:at + len(chunk)] = chunk
        elif kind == "insert":
            blob[at:at] = data.draw(st.binary(min_size=1, max_size=40))
        else:
            del blob[at:at + data.draw(st.integers(1, 100))]
    _try_load(bytes(blob), original=True)


_json_leaf = (st.none() | st.booleans() | st.text(max_size=6)
              | st.floats(allow_nan=True, allow_infinity=True)
              | st.integers(-(2 ** 80), 2 ** 80)
              | st.sampled_from([0, 1, -1, 2 ** 53, 2 ** 63, 2 ** 64, 2 ** 70, "50", 50.0,
                                 "<f4", "<f8", "|b1", "|O", "param/0", "state/0/exp_avg"]))
_json = st.recursive(_json_leaf, lambda c: st.lists(c, max_size=3)
                     | st.dictionaries(st.text(max_size=6), c, max_size=3), max_leaves=6)


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, prefix + (i,))


def _mutate_header(data, header):
    """Replace, delete or duplicate one node anywhere in the header."""
    paths = [p for p in _paths(header) if p]
    path = data.draw(st.sampled_from(paths))
    parent = header
    for k in path[:-1]:
        parent = parent[k]
    kind = data.draw(st.sampled_from(["replace", "replace", "delete", "duplicate", "number"]))
    key = path[-1]
    if kind == "delete":
        del parent[key]
    elif kind == "duplicate" and isinstance(parent, list):
        parent.append(json.loads(json.dumps(parent[key])))
    elif kind == "number" and isinstance(parent[key], int) and not isinstance(parent[key], bool):
        parent[key] += data.draw(st.sampled_from([-65, -64, -1, 1, 8, 64, 2 ** 40]))
    else:
        parent[key] = data.draw(_json)


@_FUZZ_SETTINGS
@given(data=st.data())
def test_fuzz_crafted_headers_with_valid_checksums(data):
    """The header mutated anywhere (values replaced by arbitrary JSON, keys deleted, entries
    duplicated, numbers nudged) and the checksum recomputed, so that the parser and every
    check behind it are reached: a CheckpointError or a load, never another exception, and
    a refused file changes nothing."""
    src = _fuzz_source()
    path = src["dir"] / "hdr.lrc"
    path.write_bytes(src["blob"])
    header, body = _good_header(path)
    for _ in range(data.draw(st.integers(1, 3))):
        _mutate_header(data, header)
    if data.draw(st.booleans()):                      # and maybe a data byte, re-checksummed
        at = data.draw(st.integers(0, len(body) - 1))
        body = body[:at] + bytes([body[at] ^ 0xFF]) + body[at + 1:]
    _try_load(_craft(header, body), original=False)


# --------------------------------------------------------------------------------------------
# Update-task files (lrcore.task.persistence): the same guarantees through UpdateTask.load
# --------------------------------------------------------------------------------------------


def _task_problem(n=20):
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(n, 3)), rng.normal(size=n)

    def loss_and_grad(batch, params, grads):
        xb, yb = batch
        r = xb @ params[0] + params[1][0] - yb
        grads[0][...] = xb.T @ r / len(yb)
        grads[1][0] = r.mean()
        return float(np.mean(r * r))
    return loss_and_grad, (X, y)


def _saved_task(path, mid_epoch=True):
    """Save an Adam task with a schedule, mid-epoch (a sample order in the file)."""
    from lrcore.task import Event, ParameterKey, ProgressHandlers, UpdateTask
    fn, data = _task_problem()

    def stop(ctx):
        if ctx.task.step_count == 7:
            ctx.task.pause()
    task = UpdateTask([np.zeros(3), np.zeros(1)], fn, data, optimizer="adam",
                      parameters={ParameterKey.EPOCHS: 3, ParameterKey.MINI_BATCH_SIZE: 3,
                                  ParameterKey.LEARNING_RATE: S.Cosine(0.1, 30)},
                      progress_handlers=ProgressHandlers(Event.MINI_BATCH_END, stop))
    task.resume()
    assert task.mini_batch == 0 or mid_epoch
    task.save(path, meta={"run": 1})
    return task


def _load_task(path, params):
    from lrcore.task import UpdateTask
    fn, data = _task_problem()
    return UpdateTask.load(path, fn, data, params=params)


def _meta_of(h):
    return h["meta"]


TASK_HOSTILE = {
    # used to be KeyError / IndexError / TypeError / AttributeError from UpdateTask.load
    "group param index out of range": (
        lambda h: _meta_of(h)["optimizer"]["state_dict"]["groups"][0]["params"].append(7),
        "parameter groups hold params"),
    "group params not ints": (
        lambda h: _meta_of(h)["optimizer"]["state_dict"]["groups"][0].update(params=[0, True]),
        "parameter groups hold params"),
    "more state names than params": (
        lambda h: _meta_of(h)["optimizer"]["state_names"].append([]), "params"),
    "state names not a list": (
        lambda h: _meta_of(h)["optimizer"].update(state_names=3), "no parameters"),
    "position missing a key": (lambda h: _meta_of(h)["position"].pop("epoch"), "position"),
    "position not a dict": (lambda h: _meta_of(h).update(position=[1]), "position"),
    "position offset string": (lambda h: _meta_of(h)["position"].update(offset="3"), "offset"),
    "position offset past the data": (lambda h: _meta_of(h)["position"].update(offset=21),
                                      "past the 20 samples"),
    "position epoch 2**70": (lambda h: _meta_of(h)["position"].update(epoch=2 ** 70), "epoch"),
    "position loss huge int": (lambda h: _meta_of(h)["position"].update(loss_sum=10 ** 400),
                               "too large"),
    "position began not bool": (lambda h: _meta_of(h)["position"].update(began=1), "began"),
    "loop unknown key": (lambda h: _meta_of(h)["loop"].update(LEARNING_RATE=0.1), "loop"),
    "loop missing key": (lambda h: _meta_of(h)["loop"].pop("SEED"), "loop"),
    "loop bad value": (lambda h: _meta_of(h)["loop"].update(EPOCHS=0), "EPOCHS"),
    "loop key not a name": (lambda h: _meta_of(h).update(loop=[["EPOCHS", 1]]), "loop"),
    "optimizer class unknown": (lambda h: _meta_of(h)["optimizer"].update(**{"class": "Nope"}),
                                "names optimizer 'Nope'"),
    "optimizer class not a string": (lambda h: _meta_of(h)["optimizer"].update(**{"class": 1}),
                                     "names optimizer 1"),
    "optimizer record missing": (lambda h: _meta_of(h).pop("optimizer"), "optimizer record"),
    "fixed flags missing": (lambda h: _meta_of(h)["optimizer"]["fixed"][0].pop("amsgrad"),
                            "fixed options"),
    "fixed flags not bool": (lambda h: _meta_of(h)["optimizer"]["fixed"][0].update(amsgrad=2),
                             "fixed options"),
    "num_threads string": (lambda h: _meta_of(h)["optimizer"].update(num_threads="2"),
                           "num_threads"),
    "num_threads 2**70": (lambda h: _meta_of(h)["optimizer"].update(num_threads=2 ** 70),
                          "num_threads"),
    "samples zero": (lambda h: _meta_of(h).update(samples=0), "samples"),
    "step 2**70": (lambda h: _meta_of(h)["optimizer"]["state_dict"].update(step=2 ** 70),
                   "step"),
    "order of another length": (lambda h: _entry(h, "order").update(shape=[19], nbytes=152),
                                "sample order"),
    "order of floats": (lambda h: _entry(h, "order").update(dtype="<f8"), "sample order"),
    "param missing": (lambda h: h["arrays"].remove(_entry(h, "param/1")),
                      r"params\[1\] is missing"),
    "param shape": (lambda h: _entry(h, "param/0").update(shape=[1, 3]), r"params\[0\]"),
    "state shape": (lambda h: _entry(h, "state/0/exp_avg").update(shape=[1, 3]), "exp_avg"),
    "hyperparameter huge int": (
        lambda h: _meta_of(h)["optimizer"]["state_dict"]["groups"][0]["hyperparameters"]
        .update(eps=10 ** 400), "load_state_dict"),
    "not a task file": (lambda h: _meta_of(h).update(format="lrcore.checkpoint"),
                        "not an UpdateTask checkpoint"),
}


@pytest.mark.parametrize("case", sorted(TASK_HOSTILE), ids=sorted(TASK_HOSTILE))
def test_hostile_task_file_is_a_checkpoint_error_and_changes_nothing(tmp_path, case):
    path = tmp_path / "task.lrc"
    _saved_task(path)
    mutate, words = TASK_HOSTILE[case]
    _recraft(path, mutate)
    target = [np.full(3, 7.0), np.full(1, 7.0)]
    with pytest.raises(checkpoint.CheckpointError, match=words):
        _load_task(path, target)
    assert target[0].tolist() == [7.0] * 3 and target[1].tolist() == [7.0]


def test_task_order_must_be_a_permutation(tmp_path):
    path = tmp_path / "task.lrc"
    _saved_task(path)
    header, data = _good_header(path)
    e = _entry(header, "order")
    start = e["offset"]
    order = np.frombuffer(data[start:start + e["nbytes"]], "<i8").copy()
    order[1] = order[0]
    path.write_bytes(_craft(header, data[:start] + order.tobytes() + data[start + e["nbytes"]:]))
    target = [np.full(3, 7.0), np.full(1, 7.0)]
    with pytest.raises(checkpoint.CheckpointError, match="not a permutation"):
        _load_task(path, target)
    assert target[0].tolist() == [7.0] * 3


def test_task_load_reads_params_last_and_into_the_given_arrays(tmp_path):
    path = tmp_path / "task.lrc"
    task = _saved_task(path)
    target = [np.full(3, 7.0), np.full(1, 7.0)]
    ro = [np.full(3, 7.0), np.full(1, 7.0)]
    ro[1].flags.writeable = False
    with pytest.raises((checkpoint.CheckpointError, ValueError), match="read-only"):
        _load_task(path, ro)
    assert ro[0].tolist() == [7.0] * 3
    loaded = _load_task(path, target)
    assert loaded.params[0] is target[0] and same_bytes(target, task.params)
    assert loaded.meta == {"run": 1} and loaded.step_count == 7
    assert loaded.resume().name == "COMPLETED"
    task.resume()
    assert same_bytes(loaded.params, task.params)


@_FUZZ_SETTINGS
@given(data=st.data())
def test_fuzz_task_files(data):
    """UpdateTask.load over damaged and re-checksummed task files: CheckpointError or a
    load, never KeyError/IndexError/TypeError..., the given arrays untouched when refused."""
    if "task" not in _FUZZ:
        src = _fuzz_source()
        _saved_task(src["dir"] / "task-src.lrc")
        _FUZZ["task"] = (src["dir"] / "task-src.lrc").read_bytes()
    path = _FUZZ["dir"] / "task-fuzz.lrc"
    path.write_bytes(_FUZZ["task"])
    if data.draw(st.booleans()):
        header, body = _good_header(path)
        for _ in range(data.draw(st.integers(1, 3))):
            _mutate_header(data, header)
        path.write_bytes(_craft(header, body))
    else:
        blob = bytearray(_FUZZ["task"])
        at = data.draw(st.integers(0, len(blob) - 1))
        blob[at] ^= 1 << data.draw(st.integers(0, 7))
        path.write_bytes(bytes(blob[:data.draw(st.integers(0, len(blob)))]))
    target = [np.full(3, 7.0), np.full(1, 7.0)]
    try:
        _load_task(path, target)
    except checkpoint.CheckpointError:
        assert target[0].tolist() == [7.0] * 3 and target[1].tolist() == [7.0]


# A file written by lrcore before issue 11 (commit 1ed583a): SGD(momentum=0.9) over a (2, 3)
# float32 and a 0-d float64 param after one step, an extra boolean array, meta {"epoch": 1}.
_OLD_FILE = (
    "eNqdUsFu00AQdcWpJy58QLTnqontEKUINZEAcUFCKscoVBtnNrYSe1frdalJjRAfwAVxACS4I3HhSqV+QNMf6JUL"
    "x16QQMqB2SFQOxRoO5Il+83b997O+N7Wrftbd5yV91ccqimLwXB2ozZl4ygZ4gub6EBqWA9CCMZKRolhazUmlYni"
    "6DFoogqpY25K5NM2cndAp5FMsO0unWQP7t62jNSAWrRHWmYqxY/elIW5Aq245pgJNchqYs811i01ljEkJosJ2EBg"
    "yGMFSZSMCGkg8giiUWi2hxDw/DeYAPppuYOA4JMUrBTfpVC/oAIxMqYkeMjtlwy3U8O1ATsdozMo+hX2lKUhV1aq"
    "563VfNscmpwAJiaSG99jqF+i/UlpNRmpopEhSu/UfJAJgdPD9hlg3yaHXaPtDrHP07FlsixdrAqUDEI768IyudY8"
    "X6ROcMw2AHnWG/Vl7XLIm6JJe1u+qBQiBfsj0JwHuQEr7jXpvlUD9z8G7YpBRbzVLKu3K+K0h3rjYmldr/2PvD8l"
    "3fPncze8vwek5dRpMWXBvYFbzVhR9K63KgGLfuEs6unm2c9F6uTAuWQdzWb7r1/lnaPZvCPEZleIJ13ff9c973mf"
    "6nPnsv4rTnv12sv8xaerbvbxa/Dl8MOb59/m84M9bo5Pnj38nr/9AbnwSF0=")


def test_files_written_before_the_hardening_still_load(tmp_path):
    """The container format is unchanged (version 1): a file from the old writer loads."""
    import base64
    import zlib
    path = tmp_path / "old.lrc"
    path.write_bytes(zlib.decompress(base64.b64decode(_OLD_FILE)))
    p = [np.zeros((2, 3), np.float32), np.array(0.0)]
    opt = lrcore.SGD(p, lr=0.1, momentum=0.9)
    mask = np.zeros(2, bool)
    assert lrcore.load(path, opt, params={"mask": mask}) == {"epoch": 1}
    assert p[0].tobytes().hex() == "cdccccbc9a99793fcdccfc3f66663e4066667e4033339f40"
    assert p[1].tobytes().hex() == "333333333333e33f" and mask.tolist() == [True, False]
    assert opt.step_count == 1
    opt.step([np.zeros((2, 3), np.float32), np.array(0.0)])     # momentum carried on:
    assert abs(p[1] - (0.6 + 0.1 * 0.9)) < 1e-15                # 0.6 - lr * (0.9 * -1)
