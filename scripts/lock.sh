#!/usr/bin/env bash
# Regenerates requirements.lock: every dependency of `pip install .[all]`, direct and transitive, at one
# exact version, for CPython 3.11 on x86-64 Linux. setup.py keeps ranges for library users; make setup,
# make test, make demo and CI install exactly this file (scripts/setup.sh).
# torch resolves to the CPU wheel (2.13.0+cpu): pip finds it through --find-links (this machine's
# /opt/wheels); elsewhere, point pip at PyTorch's CPU wheel index.
set -euo pipefail
cd "$(dirname "$0")/.."
UV_VERSION=0.13.10
uv=${UV:-}
if [ -z "$uv" ]; then
  tools=${TMPDIR:-/tmp}/vitforge-lock-tools
  [ -x "$tools/bin/uv" ] || { python3 -m venv "$tools" && "$tools/bin/python" -m pip install -q "uv==$UV_VERSION"; }
  uv="$tools/bin/uv"
fi
"$uv" pip compile setup.py --extra all --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
  ${PIP_FIND_LINKS:+--find-links "$PIP_FIND_LINKS"} --no-emit-find-links \
  --custom-compile-command "bash scripts/lock.sh" -o requirements.lock "$@"
