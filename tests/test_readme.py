"""The README's commands are the ones CI runs, and every Python example runs as shown.

The convention (README.md, "Development", says the same to authors):

- Every ```` ```python ```` block runs on its own, in a fresh interpreter, in an empty
  temporary directory: it imports what it uses and defines what it needs.
- What it prints is the ```` ```output ```` block right after it (only blank lines between).
  ``...`` on a line of its own stands for any number of lines; inside a line, for any text
  (digits that depend on the machine's BLAS, say). A block with no output block must print
  nothing.
- A block that cannot run here says so on the line just before its fence, in an HTML comment
  (invisible on GitHub): ``<!-- readme-test: needs torch -->`` (skipped when the module is not
  installed) or ``<!-- readme-test: skip: why -->`` (never run; the reason is required and
  shown, e.g. a fragment of a program that needs mpiexec).

New blocks are picked up automatically: nothing to register here.
"""
import importlib.util
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()

_FENCE = re.compile(r"^```(?!`)([\w+-]*)[^\n]*\n(.*?)^```[ \t]*$", re.S | re.M)
_MARK = re.compile(r"<!--\s*readme-test:\s*(.*?)\s*-->\s*$")


def _blocks():
    """Every fenced block: (language, body, first line number, marker text or None, the text
    between the previous block's end and this block's start)."""
    out, last_end = [], 0
    for m in _FENCE.finditer(README):
        before = README[last_end:m.start()]
        lines = before.rstrip("\n").splitlines()
        marker = _MARK.search(lines[-1]) if lines else None
        line = README.count("\n", 0, m.start()) + 1
        out.append((m.group(1), m.group(2), line, marker.group(1) if marker else None, before))
        last_end = m.end()
    return out


def _heading(line):
    """The README heading above `line` (comment lines inside code blocks are not headings)."""
    prose = _FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), README)
    heads = [h for h in re.finditer(r"^#+ (.*)$", prose, re.M)
             if prose.count("\n", 0, h.start()) + 1 < line]
    return heads[-1].group(1) if heads else "top"


def _python_examples():
    blocks = _blocks()
    examples = []
    for i, (lang, body, line, marker, _) in enumerate(blocks):
        if lang != "python":
            continue
        expected = None
        if i + 1 < len(blocks) and blocks[i + 1][0] == "output" and not blocks[i + 1][4].strip():
            expected = blocks[i + 1][1]
        examples.append(pytest.param(body, expected, marker,
                                     id=f"line{line}-{_heading(line)[:30]}"))
    return examples


def _matches(expected, actual):
    """Line-by-line match; '...' alone is any number of lines, inside a line any text."""
    pattern = ""
    for line in expected.rstrip("\n").split("\n"):
        if line.strip() == "...":
            pattern += r"(?:[^\n]*\n)*?"
        else:
            pattern += r"[^\n]*?".join(re.escape(part) for part in line.split("...")) + r"\n"
    return re.fullmatch(pattern, actual.rstrip("\n") + "\n", re.S) is not None


def _bash_blocks():
    return [body for lang, body, *_ in _blocks() if lang == "bash"]


def test_readme_opens_with_the_two_commands():
    first, second = _bash_blocks()[:2]
    assert first.strip() == 'pip install ".[cli]" && lrcore train'
    assert second.strip().startswith('pip install ".[test')
    assert "pytest" in second


def test_ci_runs_the_readme_test_command_verbatim():
    ci = (ROOT / ".ci" / "run").read_text()
    test_command = _bash_blocks()[1].strip()
    assert test_command in ci.splitlines(), "the README's test command must appear in .ci/run"


def test_every_output_block_follows_a_python_block():
    blocks = _blocks()
    for i, (lang, _, line, _, before) in enumerate(blocks):
        if lang == "output":
            assert i and blocks[i - 1][0] == "python" and not before.strip(), \
                f"README line {line}: an output block must directly follow a python block"


def test_markers_are_well_formed():
    for lang, _, line, marker, _ in _blocks():
        if marker is None:
            continue
        assert lang == "python", f"README line {line}: a readme-test marker before a {lang} block"
        assert re.fullmatch(r"needs [\w.]+|skip: \S.*", marker), \
            f"README line {line}: unknown marker {marker!r} (needs MODULE, or skip: REASON)"


def test_there_are_examples_with_output():
    examples = _python_examples()
    assert len(examples) >= 5 and sum(p.values[1] is not None for p in examples) >= 3


@pytest.mark.parametrize("code,expected,marker", _python_examples())
def test_python_example_runs_and_prints_what_the_readme_shows(code, expected, marker, tmp_path):
    if marker and marker.startswith("skip:"):
        pytest.skip(marker[5:].strip())
    if marker and marker.startswith("needs "):
        module = marker.split()[1]
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed")
    (tmp_path / "example.py").write_text(code)
    env = dict(os.environ, OMP_NUM_THREADS="1")      # torch (and lrcore) on one thread
    r = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"the example failed:\n{r.stderr[-3000:]}"
    if expected is None:
        assert r.stdout == "", ("the example prints but the README shows no ```output block "
                                f"after it:\n{r.stdout[:2000]}")
    else:
        assert _matches(expected, r.stdout), \
            f"the README shows:\n{expected}\nthe example printed:\n{r.stdout}"


def test_the_matcher_can_fail():
    assert _matches("a 0.5...\n...\nz\n", "a 0.5123\nb\nc\nz\n")
    assert _matches("x\n", "x\n") and not _matches("0.01\n", "0.010000000000000002\n")
    assert not _matches("a\n...\nz\n", "a\nb\n")
