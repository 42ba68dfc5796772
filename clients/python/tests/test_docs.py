"""Every Python example in docs/python.md runs, against a real lockd."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

from helpers import REPO, Server

DOC = REPO / "docs" / "python.md"


def examples() -> List[str]:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    # The API summary shows signatures, not programs.
    return [block for block in blocks if "import lockd" in block]


def test_the_guide_has_an_example_per_recipe() -> None:
    assert len(examples()) >= 5


@pytest.mark.parametrize("index", range(len(examples())))
def test_example_runs(index: int, server: Server, tmp_path: Path) -> None:
    script = tmp_path / f"example{index}.py"
    script.write_text(examples()[index])
    env = dict(os.environ, LOCKD_ADDR=server.addr)
    result = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip(), "every example prints what it did"
