"""Profiling on a device over SSH: copy the runner and the artifact, run them there, bring the JSON back.

Plain OpenSSH clients (``ssh``/``scp``), key authentication only (``BatchMode=yes``: never a password
prompt); new host keys are accepted on first use and checked afterwards.
"""
from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

from ... import ui
from ...errors import UserError

TIMEOUT_S = 3600


def _base(ssh: dict, scp: bool = False) -> list[str]:
    exe = ["scp", "-q", "-r"] if scp else ["ssh"]
    opts = ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=accept-new", "-o", "ConnectTimeout=15"]
    for o in ssh.get("options") or []:
        opts += ["-o", o]
    if ssh.get("port"):
        opts += ["-P" if scp else "-p", str(ssh["port"])]
    if ssh.get("identity"):
        opts += ["-i", str(ssh["identity"])]
    return exe + opts


def _run(cmd: list[str], what: str, host: str) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S)
    except FileNotFoundError:
        raise UserError(f"{cmd[0]} is not installed here", "install the OpenSSH client (apt-get install openssh-client)") from None
    except subprocess.TimeoutExpired:
        raise UserError(f"{what} on {host} took over {TIMEOUT_S} s", "try fewer --runs or batch sizes") from None
    if proc.returncode != 0:
        err = [x for x in proc.stderr.strip().splitlines() if x.strip()] or ["(no message)"]
        hint = ("check that `ssh " + host + "` works without a password (ssh-copy-id), the --port and --identity"
                if proc.returncode == 255 else "the device needs python3, numpy and the artifact's runtime")
        raise UserError(f"{what} on {host} failed: {err[-1][:300]}", hint)
    return proc.stdout


def run_remote(host: str, files: list[Path], args: list[str], ssh: dict) -> dict:
    from . import RUNNER, last_json

    if not host.strip():
        raise UserError("--host is empty", "use --host user@device")
    py = ssh.get("python") or "python3"
    keep = ssh.get("remote_dir")
    rdir = keep or _run(_base(ssh) + [host, "mktemp -d /tmp/vitforge-profile-XXXXXX"], "creating a work folder",
                        host).strip()
    if keep:
        _run(_base(ssh) + [host, f"mkdir -p {shlex.quote(rdir)}"], "creating the work folder", host)
    try:
        ui.info(f"profile: copying {', '.join(f.name for f in files)} to {host}:{rdir}")
        _run(_base(ssh, scp=True) + [str(RUNNER), *map(str, files), f"{host}:{rdir}/"], "copying the artifact", host)
        cmd = " ".join(shlex.quote(x) for x in [py, "device_runner.py", *args, "--json", "report.json"])
        ui.info(f"profile: running on {host}: {cmd}")
        out = _run(_base(ssh) + [host, f"cd {shlex.quote(rdir)} && {cmd}"], "running the profile", host)
        return last_json(out)
    finally:
        if not keep:
            subprocess.run(_base(ssh) + [host, f"rm -rf {shlex.quote(rdir)}"], capture_output=True, text=True)
