"""The README's commands are the ones CI runs, and its examples run."""
import pathlib
import re

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _bash_blocks():
    return re.findall(r"```bash\n(.*?)```", README, flags=re.S)


def test_readme_opens_with_the_two_commands():
    first, second = _bash_blocks()[:2]
    assert first.strip() == 'pip install ".[cli]" && lrcore train'
    assert second.strip().startswith('pip install ".[test')
    assert "pytest" in second


def test_ci_runs_the_readme_test_command_verbatim():
    ci = (ROOT / ".ci" / "run").read_text()
    test_command = _bash_blocks()[1].strip()
    assert test_command in ci.splitlines(), "the README's test command must appear in .ci/run"


def test_kernel_example_runs():
    block = re.search(r"## The kernels in 15 lines\n\n```python\n(.*?)```", README, re.S).group(1)
    block = block.replace("n = 1_000_000", "n = 1_003").replace("help(kernels.rmsprop)", "")
    scope = {}
    exec(compile(block, "README", "exec"), scope)
    assert np.all(np.isfinite(scope["param"]))


def _python_block(heading):
    return re.search(rf"## {re.escape(heading)}.*?```python\n(.*?)```", README, re.S).group(1)


def test_optimizer_schedule_checkpoint_and_task_examples_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    scope = {}
    for heading in ("Optimizers", "Schedules", "Checkpoints", "Update tasks"):
        exec(compile(_python_block(heading), f"README {heading}", "exec"), scope)
    out = capsys.readouterr().out
    assert "done: TaskState.COMPLETED" in out or "COMPLETED" in out
