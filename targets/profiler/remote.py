"""Profiling on a device over SSH: copy the runner and the artifact, run them there, bring the JSON back.

Plain OpenSSH clients (``ssh``/``scp``), key authentication only (``BatchMode=yes``: never a password
prompt); new host keys are accepted on first use and checked afterwards, unless the user's
``--ssh-option`` says otherwise (ssh keeps the first value of an option, so the user's come first).
"""
from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

from ... import ui
from ...errors import UserError

TIMEOUT_S = 3600
# [user@]host: a name, an IPv4/IPv6 address or an ssh_config alias; never an option (no leading '-')
_HOST = re.compile(r"(?:[A-Za-z0-9_][A-Za-z0-9._-]*@)?[A-Za-z0-9_:\[][A-Za-z0-9._:%\]-]*")
_RDIR = re.compile(r"[A-Za-z0-9._/+][A-Za-z0-9._/+-]*")  # nothing a remote shell or scp would interpret
_OPTION = re.compile(r"[A-Za-z][A-Za-z0-9]*[= ].*")


def check_host(host: str | None) -> str:
    if not host or not host.strip():
        raise UserError("--host is empty", "use --host user@device")
    if not _HOST.fullmatch(host):
        raise UserError(f"--host {host!r} is not a [user@]host name or address",
                        "use --host user@device (options go in --ssh-option, --port, --identity)")
    return host


def check_remote_dir(rdir: str | None) -> str | None:
    if rdir is not None and not _RDIR.fullmatch(rdir):
        raise UserError(f"--remote-dir {rdir!r} has characters a remote shell would interpret",
                        "use letters, digits and . _ / + - (e.g. /tmp/vitforge)")
    return rdir


def _base(ssh: dict, scp: bool = False) -> list[str]:
    exe = ["scp", "-q", "-r"] if scp else ["ssh"]
    opts = ["-o", "BatchMode=yes"]  # first, so no option can turn on a password prompt
    for o in ssh.get("options") or []:
        if not _OPTION.fullmatch(str(o)):
            raise UserError(f"--ssh-option {o!r} is not an ssh option", "e.g. --ssh-option StrictHostKeyChecking=yes")
        opts += ["-o", str(o)]
    opts += ["-o", "StrictHostKeyChecking=accept-new", "-o", "ConnectTimeout=15"]  # defaults, after the user's
    if ssh.get("port"):
        opts += ["-P" if scp else "-p", str(ssh["port"])]
    if ssh.get("identity"):
        opts += ["-i", str(ssh["identity"])]
    return exe + opts + ["--"]


def _scp_target(host: str, rdir: str) -> str:
    user, _, name = host.rpartition("@")
    if ":" in name and not name.startswith("["):
        name = f"[{name}]"  # an IPv6 address
    return f"{user + '@' if user else ''}{name}:{rdir}/"


def _hint(err: str, host: str) -> str:
    if "IDENTIFICATION HAS CHANGED" in err or "Host key verification failed" in err:
        return (f"{host}'s host key is not the one in known_hosts: if the device was reinstalled, check its new "
                f"key and remove the old one (ssh-keygen -R {host.rpartition('@')[2]}); otherwise do not connect")
    return f"check that `ssh {host}` works without a password, and the --port and --identity"


def _run(cmd: list[str], what: str, host: str) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S)
    except FileNotFoundError:
        raise UserError(f"{cmd[0]} is not installed here",
                        "install the OpenSSH client (apt-get install openssh-client)") from None
    except subprocess.TimeoutExpired:
        raise UserError(f"{what} on {host} took over {TIMEOUT_S} s", "try fewer --runs or batch sizes") from None
    if proc.returncode != 0:
        err = [x for x in proc.stderr.strip().splitlines() if x.strip()] or ["(no message)"]
        hint = (_hint(proc.stderr, host) if proc.returncode == 255
                else "the device needs python3, numpy and the artifact's runtime")
        raise UserError(f"{what} on {host} failed: {err[-1][:300]}", hint)
    return proc.stdout


def run_remote(host: str, files: list[Path], args: list[str], ssh: dict) -> dict:
    from . import RUNNER, last_json

    host, keep = check_host(host), check_remote_dir(ssh.get("remote_dir"))
    py = ssh.get("python") or "python3"
    _base(ssh)  # options checked before anything runs
    rdir = keep or _run(_base(ssh) + [host, "mktemp -d /tmp/vitforge-profile-XXXXXX"], "creating a work folder",
                        host).strip()
    if not _RDIR.fullmatch(rdir):
        raise UserError(f"the device answered {rdir[:80]!r} for a temporary folder", "check mktemp on the device")
    if keep:
        _run(_base(ssh) + [host, f"mkdir -p -- {shlex.quote(rdir)}"], "creating the work folder", host)
    try:
        ui.info(f"profile: copying {', '.join(f.name for f in files)} to {host}:{rdir}")
        local = [str(Path(f).resolve()) for f in (RUNNER, *files)]  # absolute: a ':' in a name is not a host
        _run(_base(ssh, scp=True) + [*local, _scp_target(host, rdir)], "copying the artifact", host)
        cmd = " ".join(shlex.quote(x) for x in [py, "device_runner.py", "--json", "report.json", *args])
        ui.info(f"profile: running on {host}: {cmd}")
        out = _run(_base(ssh) + [host, f"cd {shlex.quote(rdir)} && {cmd}"], "running the profile", host)
        return last_json(out)
    finally:
        if not keep:
            subprocess.run(_base(ssh) + [host, f"rm -rf -- {shlex.quote(rdir)}"], capture_output=True, text=True)
