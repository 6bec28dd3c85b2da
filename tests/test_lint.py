"""ruff, with the rule set in pyproject.toml ([tool.ruff]), passes on the whole repository."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _ruff(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    pytest.importorskip("ruff")  # the `test` extra installs it
    return subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", *args],
                          capture_output=True, text=True, cwd=cwd, timeout=300)


def test_ruff_passes_on_the_repository():
    r = _ruff(".")
    assert r.returncode == 0, r.stdout + r.stderr


def test_ruff_fails_on_a_violation(tmp_path):
    """The same configuration catches an unused import and an undefined name (the check can fail)."""
    (tmp_path / "pyproject.toml").write_text((REPO / "pyproject.toml").read_text())
    (tmp_path / "bad.py").write_text("import os\n\n\ndef f():\n    return undefined_name\n")
    r = _ruff(".", cwd=tmp_path)
    assert r.returncode == 1
    assert "bad.py:1:8: F401" in r.stdout and "bad.py:5:12: F821" in r.stdout, r.stdout
