"""The Triton kernel tests (tests/kernels_triton_cases.py) under the Triton interpreter.

Triton picks interpreter or compiler mode for its own library when it is first imported, and other tests'
imports (torch._dynamo via torchvision) may import it first: then the cases run in a fresh process.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ["TRITON_INTERPRET"] = "1"
from compress.kernels.ops import triton_interpreting  # noqa: E402

CASES = Path(__file__).with_name("kernels_triton_cases.py")

if triton_interpreting():
    from tests.kernels_triton_cases import *  # noqa: F401,F403,E402
else:
    pytestmark = pytest.mark.timeout(150)

    def test_triton_kernels_in_a_fresh_interpreter_process():
        r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(CASES)],
                           cwd=CASES.parent.parent, env=os.environ | {"TRITON_INTERPRET": "1"}, capture_output=True,
                           text=True, timeout=140)
        assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
        assert " passed" in r.stdout and " failed" not in r.stdout
