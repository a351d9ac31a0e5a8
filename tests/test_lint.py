"""ruff and mypy are clean: CI runs them with the tests, so code that breaks either cannot land."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


def tool(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    assert found, f"{name} is not installed (pip install -e '.[test]')"
    return found


def test_ruff_is_clean() -> None:
    for args in (["check", "gigaseg", "tests", "bench"], ["format", "--check", "gigaseg", "tests", "bench"]):
        result = subprocess.run([tool("ruff"), *args], cwd=ROOT, capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_mypy_is_clean() -> None:
    result = subprocess.run([tool("mypy")], cwd=ROOT, capture_output=True, text=True)  # [tool.mypy] in pyproject
    assert result.returncode == 0, result.stdout + result.stderr
