"""compress profile: parsers on documented output formats, local profiling, and SSH against a real sshd."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import tiny_config

pytestmark = pytest.mark.timeout(120)

# trtexec's performance summary as printed by samples/common/sampleReporting.cpp (printEpilog), TensorRT 10.3
TRTEXEC_LOG = """\
[11/28/2025-10:14:02] [I] === Performance summary ===
[11/28/2025-10:14:02] [I] Throughput: 412.551 qps
[11/28/2025-10:14:02] [I] Latency: min = 2.37305 ms, max = 2.81079 ms, mean = 2.41652 ms, median = 2.41016 ms, percentile(90%) = 2.43652 ms, percentile(95%) = 2.44922 ms, percentile(99%) = 2.58203 ms
[11/28/2025-10:14:02] [I] Enqueue Time: min = 0.46875 ms, max = 0.90039 ms, mean = 0.50415 ms, median = 0.49609 ms, percentile(90%) = 0.52539 ms, percentile(95%) = 0.54443 ms, percentile(99%) = 0.70312 ms
[11/28/2025-10:14:02] [I] H2D Latency: min = 0.08301 ms, max = 0.11328 ms, mean = 0.08713 ms, median = 0.08594 ms, percentile(90%) = 0.09131 ms, percentile(95%) = 0.09375 ms, percentile(99%) = 0.10205 ms
[11/28/2025-10:14:02] [I] GPU Compute Time: min = 2.27832 ms, max = 2.69531 ms, mean = 2.32275 ms, median = 2.31689 ms, percentile(90%) = 2.33984 ms, percentile(95%) = 2.35254 ms, percentile(99%) = 2.47998 ms
[11/28/2025-10:14:02] [I] D2H Latency: min = 0.00488 ms, max = 0.01221 ms, mean = 0.00661 ms, median = 0.00635 ms, percentile(90%) = 0.00732 ms, percentile(95%) = 0.00781 ms, percentile(99%) = 0.01025 ms
[11/28/2025-10:14:02] [I] Total Host Walltime: 3.00569 s
[11/28/2025-10:14:02] [I] Total GPU Compute Time: 2.88021 s
"""

# trtexec --exportProfile JSON (Profiler::exportJSONProfile): a count record, then one record per layer.
# TensorRT 8.5 (Xavier NX) writes timeMs/averageMs/percentage; TensorRT 10 adds medianMs.
TRT_PROFILE_85 = """[
  { "count" : 100 }
, { "name" : "Reformatting CopyNode for Input Tensor 0 to /patch_embed/proj/Conv", "timeMs" : 1.5, "averageMs" : 0.015, "percentage" : 1.0 }
, { "name" : "/patch_embed/proj/Conv", "timeMs" : 6.0, "averageMs" : 0.06, "percentage" : 4.0 }
, { "name" : "{ForeignNode[/blocks.0/norm1/LayerNormalization.../blocks.11/mlp/fc2/MatMul]}", "timeMs" : 135.0, "averageMs" : 1.35, "percentage" : 90.0 }
, { "name" : "/norm/LayerNormalization", "timeMs" : 7.5, "averageMs" : 0.075, "percentage" : 5.0 }
]
"""
TRT_PROFILE_10 = """[
  { "count" : 50 }
, { "name" : "/blocks.0/attn/q/MatMul + /blocks.0/attn/q/Add", "timeMs" : 10.0, "averageMs" : 0.2, "medianMs" : 0.19, "percentage" : 40.0 }
, { "name" : "/blocks.0/attn/softmax/Softmax", "timeMs" : 5.0, "averageMs" : 0.1, "medianMs" : 0.1, "percentage" : 20.0 }
, { "name" : "/blocks.0/mlp/fc1/MatMul", "timeMs" : 10.0, "averageMs" : 0.2, "medianMs" : 0.2, "percentage" : 40.0 }
]
"""

# tegrastats lines as documented in the Jetson Linux developer guide (JetPack 6 Orin: rails "current/average"
# in mW; JetPack 4 Nano: POM_* rails without units)
TEGRASTATS_ORIN = """\
11-28-2025 10:14:01 RAM 2330/7620MB (lfb 2x4MB) SWAP 0/3810MB (cached 0MB) CPU [2%@1510,1%@1510,0%@1510,0%@1510,0%@1510,0%@1510] EMC_FREQ 12%@3199 GR3D_FREQ 97%@[1020] NVDEC off NVJPG off VIC_FREQ 0%@115 APE 200 cpu@48.5C soc2@46.9C soc0@46.1C gpu@49.2C tj@49.2C soc1@46.2C VDD_IN 9800mW/9612mW VDD_CPU_GPU_CV 4804mW/4650mW VDD_SOC 2402mW/2390mW
11-28-2025 10:14:01 RAM 2410/7620MB (lfb 2x4MB) SWAP 0/3810MB (cached 0MB) CPU [3%@1510,1%@1510,0%@1510,0%@1510,0%@1510,0%@1510] EMC_FREQ 12%@3199 GR3D_FREQ 99%@[1020] NVDEC off NVJPG off VIC_FREQ 0%@115 APE 200 cpu@48.6C soc2@46.9C soc0@46.1C gpu@49.5C tj@49.5C soc1@46.2C VDD_IN 10200mW/9700mW VDD_CPU_GPU_CV 5206mW/4760mW VDD_SOC 2402mW/2392mW
"""
TEGRASTATS_NANO = """\
RAM 1520/3964MB (lfb 120x4MB) SWAP 0/1982MB (cached 0MB) IRAM 0/252kB(lfb 252kB) CPU [12%@1479,3%@1479,2%@1479,0%@1479] EMC_FREQ 6%@1600 GR3D_FREQ 76%@921 APE 25 PLL@31C CPU@33.5C PMIC@100C GPU@31.5C AO@40.5C thermal@32.5C POM_5V_IN 4512/4300 POM_5V_GPU 1802/1700 POM_5V_CPU 600/580
"""


def test_trtexec_summary_parser():
    from compress.targets.profiler import parse_trtexec_summary

    s = parse_trtexec_summary(TRTEXEC_LOG)
    assert s["throughput_qps"] == pytest.approx(412.551)
    assert s["latency"]["median_ms"] == pytest.approx(2.41016)
    assert s["latency"]["p90_ms"] == pytest.approx(2.43652) and s["latency"]["p99_ms"] == pytest.approx(2.58203)
    assert s["gpu_compute_time"]["mean_ms"] == pytest.approx(2.32275)
    assert s["h2d_latency"]["min_ms"] == pytest.approx(0.08301)


def test_trtexec_profile_parser_both_versions():
    from compress.targets.profiler import parse_trtexec_profile

    old = parse_trtexec_profile(json.loads(TRT_PROFILE_85))
    assert old["iterations"] == 100
    assert old["total_ms"] == pytest.approx(0.015 + 0.06 + 1.35 + 0.075)
    assert old["by_layer"][0]["name"].startswith("{ForeignNode") and old["by_layer"][0]["percent"] == pytest.approx(90.0)
    assert {r["op"] for r in old["by_op"]} >= {"Reformat", "Convolution", "Normalization"}
    new = parse_trtexec_profile(json.loads(TRT_PROFILE_10))
    kinds = {r["op"]: r["ms"] for r in new["by_op"]}
    assert kinds["MatMul"] == pytest.approx(0.4) and kinds["Softmax"] == pytest.approx(0.1)


def test_tegrastats_parser_orin_and_nano():
    from compress.targets.profiler import parse_tegrastats

    o = parse_tegrastats(TEGRASTATS_ORIN)
    assert o["samples"] == 2 and o["rail"] == "VDD_IN"
    assert o["mean_w"] == pytest.approx(10.0) and o["peak_w"] == pytest.approx(10.2)
    assert o["rails_mean_w"]["VDD_CPU_GPU_CV"] == pytest.approx(5.005)
    assert o["gpu_util_mean"] == pytest.approx(98.0) and o["ram_peak_mb"] == 2410
    n = parse_tegrastats(TEGRASTATS_NANO)
    assert n["rail"] == "POM_5V_IN" and n["mean_w"] == pytest.approx(4.512)
    assert parse_tegrastats("no rails here")["samples"] == 0


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory) -> Path:
    from compress.export.onnx_export import export_onnx
    from compress.models import build

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("prof") / "tiny.onnx"
    export_onnx(build(tiny_config()), path)
    return path


def test_local_profile_reports_latency_memory_and_ops(tiny_onnx, tmp_path):
    from compress.cli import main

    out = tmp_path / "p.json"
    assert main(["profile", str(tiny_onnx), "--batch", "1,4", "--runs", "8", "--warmup", "2", "--out", str(out),
                 "--quiet"]) == 0
    r = json.loads(out.read_text())
    assert r["runtime"] == "onnxruntime" and [b["batch"] for b in r["batches"]] == [1, 4]
    for b in r["batches"]:
        lat = b["latency"]
        assert 0 < lat["min_ms"] <= lat["p50_ms"] <= lat["p90_ms"] <= lat["p99_ms"]
        assert b["throughput_ips"] == pytest.approx(b["batch"] * 1e3 / lat["mean_ms"])
    assert r["peak_memory_mb"] > r["baseline_memory_mb"] > 10
    ops = r["ops"]
    assert ops["profiler"] == "ONNX Runtime profiling"
    names = {x["op"] for x in ops["by_op"]}
    assert {"MatMul", "LayerNormalization", "Softmax"} <= names  # what the tiny ViT is made of
    assert sum(x["percent"] for x in ops["by_op"]) == pytest.approx(100.0)


def test_profile_bad_inputs(tmp_path, tiny_onnx, capsys):
    from compress.cli import main

    assert main(["profile", str(tmp_path / "missing.onnx")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "x.bin").write_bytes(b"0")
    assert main(["profile", str(tmp_path / "x.bin")]) == 2
    assert "unknown artifact type" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["profile", str(tiny_onnx), "--batch", "0,2"])


def test_speedup_check_fails_a_slower_artifact(tiny_onnx, tmp_path, capsys, monkeypatch):
    """A graph that does extra work is slower than its baseline: --min-speedup 1.0 fails it, exit 3.
    Both are profiled for real; the check then sees a deterministic latency (one unit per graph node,
    the work the extra ops add) instead of wall time, which a shared machine makes noisy."""
    import onnx
    from onnx import helper

    from compress.cli import main
    from compress.targets import profiler

    real = profiler.profile_artifact

    def by_work(artifact, **kw):
        res = real(artifact, **kw)
        assert res["batches"][0]["latency"]["p50_ms"] > 0  # it ran
        res["latency"] = dict(res["latency"], p50_ms=float(len(onnx.load(str(artifact)).graph.node)))
        return res

    monkeypatch.setattr(profiler, "profile_artifact", by_work)

    m = onnx.load(str(tiny_onnx))
    out = m.graph.output[0].name
    last = next(n for n in m.graph.node if out in n.output)
    last.output[0] = "pre"
    nodes = [helper.make_node("Identity", ["pre"], ["h0"])]
    for i in range(400):  # 400 extra elementwise ops on the output: clearly more time
        nodes.append(helper.make_node("Relu" if i % 2 else "Neg", [f"h{i}"], [f"h{i + 1}"]))
    nodes.append(helper.make_node("Identity", ["h400"], [out]))
    m.graph.node.extend(nodes)
    slow = tmp_path / "slow.onnx"
    onnx.save(m, str(slow))
    rc = main(["profile", str(slow), "--baseline", str(tiny_onnx), "--min-speedup", "1.0", "--runs", "3",
               "--no-ops", "--out", str(tmp_path / "r.json")])
    assert rc == 3
    err = capsys.readouterr().err
    assert "FAILS targets_check min_speedup 1" in err and "slower than its baseline" in err
    r = json.loads((tmp_path / "r.json").read_text())
    n = len(onnx.load(str(tiny_onnx)).graph.node)
    assert r["check"]["speedup"] == pytest.approx(n / (n + 402)) and not r["check"]["passed"]


# -- SSH against a real sshd on loopback -----------------------------------------------------------
SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    if not os.path.isfile(SSHD):
        pytest.skip(f"sshd not installed at {SSHD} (Debian openssh-server; scripts/setup.sh installs it)")
    d = tmp_path_factory.mktemp("sshd")
    for key in ("host_key", "user_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / key)], check=True)
    (d / "authorized_keys").write_text((d / "user_key.pub").read_text())
    os.chmod(d / "authorized_keys", 0o600)
    port = _free_port()
    (d / "sshd_config").write_text(f"""\
Port {port}
ListenAddress 127.0.0.1
HostKey {d / 'host_key'}
PidFile {d / 'sshd.pid'}
AuthorizedKeysFile {d / 'authorized_keys'}
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PermitRootLogin prohibit-password
Subsystem sftp internal-sftp
LogLevel ERROR
""")
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", exist_ok=True)  # privilege separation directory sshd wants when started as root
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")], stderr=subprocess.PIPE, text=True)
    for _ in range(100):
        if proc.poll() is not None:
            pytest.fail(f"sshd exited: {proc.stderr.read()[-400:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.05)
    user = os.environ.get("USER") or __import__("pwd").getpwuid(os.geteuid()).pw_name
    yield {"host": f"{user}@127.0.0.1", "port": port, "identity": str(d / "user_key"),
           "options": ["StrictHostKeyChecking=no", f"UserKnownHostsFile={d / 'known_hosts'}"]}
    proc.terminate()
    proc.wait(timeout=10)


def test_remote_profile_over_real_ssh(sshd, tiny_onnx, tmp_path):
    from compress.cli import main

    out = tmp_path / "remote.json"
    args = ["profile", str(tiny_onnx), "--host", sshd["host"], "--port", str(sshd["port"]),
            "--identity", sshd["identity"], "--remote-python", sys.executable, "--batch", "1,2", "--runs", "5",
            "--warmup", "1", "--out", str(out), "--quiet"]
    for o in sshd["options"]:
        args += ["--ssh-option", o]
    assert main(args) == 0
    r = json.loads(out.read_text())
    assert r["host"] == sshd["host"] and r["runtime"] == "onnxruntime"
    assert [b["batch"] for b in r["batches"]] == [1, 2] and r["latency"]["p50_ms"] > 0
    assert r["ops"]["by_op"] and r["peak_memory_mb"] > 0
    # the runner ran in its own temporary folder over there, which is removed afterwards
    left = list(Path("/tmp").glob("vitforge-profile-*"))
    assert not [p for p in left if (p / "device_runner.py").exists() and (p / tiny_onnx.name).exists()]


def test_remote_profile_bad_key_is_a_clear_error(sshd, tiny_onnx, tmp_path, capsys):
    from compress.cli import main

    bad = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(bad)], check=True)
    args = ["profile", str(tiny_onnx), "--host", sshd["host"], "--port", str(sshd["port"]), "--identity", str(bad),
            "--runs", "2"] + [x for o in sshd["options"] for x in ("--ssh-option", o)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "failed" in err and "without a password" in err


def test_ort_profile_parser_on_a_real_trace(tiny_onnx):
    from compress.runtime import ort_session
    from compress.targets.profiler import parse_ort_profile

    sess = ort_session(tiny_onnx, profile=True)
    x = np.zeros((1, 3, 32, 32), np.float32)
    for _ in range(3):
        sess.run(None, {"images": x})
    trace = Path(sess.end_profiling())  # written to the working folder: read, then removed
    events = json.loads(trace.read_text())
    trace.unlink()
    p = parse_ort_profile(events, 3)
    mm = next(r for r in p["by_op"] if r["op"] == "MatMul")
    assert mm["ms"] > 0 and any(r["name"].startswith("/blocks.0/attn") for r in p["by_layer"])


# -- hostile inputs to the SSH path and the device runner ------------------------------------------
def test_host_that_is_an_ssh_option_is_refused_before_anything_runs(tiny_onnx, tmp_path, capsys):
    from compress.cli import main

    marker = tmp_path / "ran"
    for host in (f"-oProxyCommand=touch {marker}", "-F/dev/null", "user@host;touch x", ""):
        assert main(["profile", str(tiny_onnx), f"--host={host}", "--runs", "1"]) == 2, host
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "--host" in err and "Traceback" not in err
    assert not marker.exists()
    assert main(["profile", str(tiny_onnx), "--host", "me@127.0.0.1", "--port", str(_free_port()),
                 "--remote-dir", f"x;touch {marker}", "--runs", "1"]) == 2
    err = capsys.readouterr().err
    assert "--remote-dir" in err and "remote shell would interpret" in err and not marker.exists()


def test_ssh_commands_end_options_before_the_host():
    from compress.targets.profiler.remote import _base

    for scp in (False, True):
        cmd = _base({"options": ["StrictHostKeyChecking=yes"], "port": 22}, scp=scp)
        assert cmd[-1] == "--"  # whatever follows is a host or a path, never an option
        opts = [cmd[i + 1] for i, x in enumerate(cmd) if x == "-o"]
        assert opts.index("StrictHostKeyChecking=yes") < opts.index("StrictHostKeyChecking=accept-new")


def test_users_strict_host_key_checking_wins_and_a_changed_key_is_named(sshd, tiny_onnx, tmp_path, capsys):
    """ssh keeps an option's first value: the user's StrictHostKeyChecking=yes must beat the default
    accept-new (an unknown host is then refused), and a changed host key gets a hint about the key."""
    from compress.cli import main

    base = ["profile", str(tiny_onnx), "--host", sshd["host"], "--port", str(sshd["port"]),
            "--identity", sshd["identity"], "--remote-python", sys.executable, "--runs", "2", "--no-ops", "--quiet"]
    known = tmp_path / "known_hosts"
    assert main(base + ["--ssh-option", f"UserKnownHostsFile={known}", "--ssh-option", "StrictHostKeyChecking=yes"]) == 2
    err = capsys.readouterr().err
    assert "Host key verification failed" in err and "ssh-copy-id" not in err and not known.exists()
    other = tmp_path / "other_host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    known.write_text(f"[127.0.0.1]:{sshd['port']} {(tmp_path / 'other_host_key.pub').read_text()}")
    assert main(base + ["--ssh-option", f"UserKnownHostsFile={known}"]) == 2
    err = capsys.readouterr().err
    assert "host key is not the one in known_hosts" in err and "ssh-copy-id" not in err


def test_artifact_named_like_an_option_profiles_here_and_over_ssh(sshd, tiny_onnx, tmp_path, monkeypatch):
    from compress.cli import main

    monkeypatch.chdir(tmp_path)
    shutil.copy(tiny_onnx, tmp_path / "-tiny.onnx")
    assert main(["profile", "./-tiny.onnx", "--runs", "2", "--no-ops", "--out", "here.json", "--quiet"]) == 0
    args = ["profile", "./-tiny.onnx", "--host", sshd["host"], "--port", str(sshd["port"]), "--identity",
            sshd["identity"], "--remote-python", sys.executable, "--runs", "2", "--no-ops", "--out", "there.json",
            "--quiet"] + [x for o in sshd["options"] for x in ("--ssh-option", o)]
    assert main(args) == 0
    for f in ("here.json", "there.json"):
        r = json.loads((tmp_path / f).read_text())
        assert r["artifact"] == "-tiny.onnx" and r["latency"]["p50_ms"] > 0


def test_runner_output_without_json_is_a_user_error():
    from compress.errors import UserError
    from compress.targets.profiler import last_json

    for text in ("", "Segmentation fault\n", "{not json\n"):
        with pytest.raises(UserError, match="no JSON report"):
            last_json(text)


FAKE_TRTEXEC = """#!{py}
import json, os, sys
from pathlib import Path
with open(os.environ["TRTEXEC_LOG"], "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if "=" in a)
if "saveEngine" in args:
    Path(args["saveEngine"]).write_bytes(b"engine")
if os.environ.get("TRTEXEC_FAIL") and "loadEngine" in args:
    sys.exit(1)
print("[I] Latency: min = 1 ms, max = 2 ms, mean = 1.5 ms, median = 1.5 ms, percentile(90%) = 2 ms")
"""


@pytest.fixture
def fake_device(tmp_path, monkeypatch):
    """A TensorRT kit and a trtexec that logs its arguments, as on a Jetson (no TensorRT here)."""
    import hashlib
    import tempfile

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "trtexec").write_text(FAKE_TRTEXEC.format(py=sys.executable))
    os.chmod(bin_dir / "trtexec", 0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("TRTEXEC_LOG", str(tmp_path / "trtexec.log"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    kit = tmp_path / "model-int8.trt-kit"
    kit.mkdir()
    (kit / "model.onnx").write_bytes(b"onnx graph")
    man = {"kind": "tensorrt-build-kit", "precision": "int8", "onnx": "model.onnx", "strongly_typed": True,
           "builder_flags": [], "input": {"name": "images", "shape": [1, 3, 32, 32], "dynamic": True, "min_batch": 1,
                                          "opt_batch": 1, "max_batch": 8},
           "trtexec": "trtexec --onnx=model.onnx --plugins=/tmp/evil.so --saveEngine=model.engine",
           "files": {"model.onnx": hashlib.sha256(b"onnx graph").hexdigest()}}
    (kit / "manifest.json").write_text(json.dumps(man))
    return {"kit": kit, "man": man, "log": tmp_path / "trtexec.log", "tmp": tmp_path / "tmp"}


def test_device_runner_builds_from_checked_manifest_fields_only(fake_device):
    from compress.targets.profiler.device_runner import profile_tensorrt
    from compress.targets.tensorrt.build_engine import trtexec_command

    res = profile_tensorrt(fake_device["kit"], [1], 3, 1, False, False)
    assert res["latency"]["p50_ms"] == 1.5
    build = json.loads(fake_device["log"].read_text().splitlines()[0])
    assert build == trtexec_command(fake_device["man"])[1:]  # the kit's own build line, from its fields
    assert not any("plugins" in a for a in build)
    assert not list(fake_device["tmp"].iterdir())  # the work folder is gone


@pytest.mark.parametrize("change", [{"input": {"name": "images --plugins=/tmp/evil.so"}}, {"builder_flags": ["plugins"]},
                                    {"onnx": "/etc/passwd"}, {"files": {"model.onnx": "0" * 64}}])
def test_device_runner_refuses_a_hostile_or_changed_kit(fake_device, change):
    from compress.targets.profiler.device_runner import profile_tensorrt

    man = fake_device["man"]
    man = man | {k: (man[k] | v if isinstance(v, dict) and k == "input" else v) for k, v in change.items()}
    (fake_device["kit"] / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(SystemExit, match="manifest|sha256"):
        profile_tensorrt(fake_device["kit"], [1], 3, 1, False, False)
    assert not fake_device["log"].exists()  # trtexec never ran


def test_device_runner_removes_its_work_folder_when_trtexec_fails(fake_device, monkeypatch):
    from compress.targets.profiler.device_runner import profile_tensorrt

    monkeypatch.setenv("TRTEXEC_FAIL", "1")
    with pytest.raises(subprocess.CalledProcessError):
        profile_tensorrt(fake_device["kit"], [1], 3, 1, False, False)
    assert not list(fake_device["tmp"].iterdir())
