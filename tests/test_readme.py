"""The README's Python example runs as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_trainer_example_runs(capsys):
    text = README.read_text()
    section = text.split("### Use the trainer in your own research", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    result = namespace["result"]
    assert result.snapshots.shape[:2] == (6, 4)
    assert result.test_accuracy[:, -1].max() > 0.8
    assert "(6, 4," in capsys.readouterr().out


def test_readme_quick_start_has_exactly_two_commands():
    text = README.read_text()
    block = re.search(r"## Quick start.*?```sh\n(.*?)```", text, re.S).group(1)
    commands = [line for line in block.splitlines() if line.strip()]
    assert [c.split("#")[0].strip() for c in commands] == ["make demo", "make test"]
