"""Hostile inputs, tried as a user would: each case runs ``python -m compress`` in a fresh process (cwd a sandbox,
HOME/TMPDIR/cache inside it, a timeout) and must end in exit 2 with exactly one line on stderr, no traceback,
nothing written outside its sandbox (and, for a refusal, nothing written at all)."""
from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(240)


def _env(box: Path, umask_home: bool = True) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VITFORGE_", "PYTEST"))}
    return env | {"HOME": str(box / "home"), "TMPDIR": str(box / "tmp"), "XDG_CACHE_HOME": str(box / "xdg"),
                  "VITFORGE_CACHE": str(box / "cache"), "OMP_NUM_THREADS": "1",
                  "PYTHONPATH": os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)}


def _sandbox(root: Path) -> tuple[Path, Path]:
    """``root/outside`` (must stay untouched) and the working folder ``root/a/b/work`` (deep, so '../..' stays in root)."""
    (root / "outside").mkdir(parents=True)
    (root / "outside" / "keep.txt").write_text("keep")
    work = root / "a" / "b" / "work"
    for d in (work, root / "home", root / "tmp"):
        d.mkdir(parents=True)
    return root, work


def _snapshot(root: Path, skip: Path | None = None) -> dict:
    """Every path and file's bytes under ``root``, but ``skip`` and the TMPDIR given to the tool (torch caches)."""
    skips = [s for s in (skip, root / "tmp") if s is not None]
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(root.rglob("*")) if not any(s in (p, *p.parents) for s in skips)}


def compress(work: Path, *argv, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "compress", *argv], cwd=work, env=_env(work.parents[2]),
                          capture_output=True, text=True, timeout=timeout, **kw)


def _one_error_line(r: subprocess.CompletedProcess) -> str:
    lines = r.stderr.strip().splitlines()
    assert "Traceback" not in r.stderr and len(lines) == 1, r.stderr[-3000:]
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


# -- the sweep: each case writes its inputs into ``work`` and returns (argv, pattern the one line must match) --------
def _w(work: Path, name: str, text: str | bytes) -> str:
    p = work / name
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return name


def _recipe(work: Path, text: str | bytes, *extra) -> list[str]:
    return ["--recipe", _w(work, "r.yaml", text), "--out", "out", *extra]


LAUGHS = 'a: &a ["x","x","x","x","x","x","x","x","x"]\n' + "".join(
    f"{c}: &{c} [*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p}]\n" for p, c in zip("abcdefgh", "bcdefghi"))

CASES = {
    # hostile YAML
    "billion_laughs": (lambda w: _recipe(w, LAUGHS), r"r\.yaml:\d+: recipe expands to more than \d+ values"),
    "self_anchor_list": (lambda w: _recipe(w, "a: &a [1, *a]\n"), r"r\.yaml:1: an anchor refers to itself"),
    "self_anchor_map": (lambda w: _recipe(w, "a: &a {b: {c: *a}}\n"), r"an anchor refers to itself"),
    "deep_nesting": (lambda w: _recipe(w, "a: " + "[" * 20000 + "]" * 20000 + "\n"), r"nested deeper than \d+ levels"),
    "deep_mappings": (lambda w: _recipe(w, "".join("  " * i + f"k{i}:\n" for i in range(60)) + "  " * 60 + "v: 1\n"),
                      r"nested deeper than \d+ levels"),
    "utf16": (lambda w: _recipe(w, "name: x\n".encode("utf-16")), r"r\.yaml is UTF-16 text; save it as UTF-8"),
    "latin1": (lambda w: _recipe(w, "name: caf\xe9\n".encode("latin-1")), r"is not UTF-8 text \(bad byte at offset 9\)"),
    "binary": (lambda w: _recipe(w, b"\x7fELF\x02\x01\x01\x00" * 64), r"r\.yaml is a binary file"),
    "over_1MiB": (lambda w: _recipe(w, "# pad\n" * 200_000), r"r\.yaml is \d+ bytes \(limit 1048576\)"),
    "python_tag": (lambda w: _recipe(w, "name: !!python/object/apply:os.system [touch pwned]\n"),
                   r"r\.yaml:1: tag 'tag:yaml.org,2002:python/object/apply:os.system' not allowed in a recipe"),
    "python_scalar_tag": (lambda w: _recipe(w, "name: !!python/name:os.system x\n"), r"r\.yaml:1: value not allowed"),
    "dev_zero": (lambda w: ["--recipe", "/dev/zero", "--out", "out"], r"/dev/zero is not a regular file"),
    "fifo": (lambda w: (os.mkfifo(w / "pipe.yaml"), ["--recipe", "pipe.yaml", "--out", "out"])[1],
             r"pipe\.yaml is not a regular file"),
    "recipe_is_directory": (lambda w: ((w / "d.yaml").mkdir(), ["--recipe", "d.yaml"])[1], r"d\.yaml is a directory"),
    # misleading messages
    "extends_cycle": (lambda w: (_w(w, "b.yaml", "extends: r.yaml\n"), _recipe(w, "extends: b.yaml\n"))[1],
                      r"b\.yaml:1: extends cycle: r\.yaml -> b\.yaml -> r\.yaml"),
    "extends_itself": (lambda w: _recipe(w, "extends: r.yaml\n"), r"r\.yaml:1: extends cycle: r\.yaml -> r\.yaml"),
    "extends_directory": (lambda w: ((w / "base").mkdir(), _recipe(w, "extends: base\n"))[1],
                          r"r\.yaml:1: extends 'base' is a directory"),
    "weights_directory": (lambda w: ((w / "wdir").mkdir(), ["inspect", "timm:test_vit", "--weights", "wdir",
                                                            "--images", "0"])[1], r"weights wdir is a directory"),
    "set_list_index_past_end": (lambda w: _recipe(w, "name: x\ntargets: [x86-avx512]\n", "--set", "targets.3=x"),
                                r"^error: --set targets\.3: '3' is not an index of a list of 1"),
    "set_index_where_base_has_no_list": (lambda w: _recipe(w, "name: x\n", "--set", "targets.0=x86-avx512"),
                                         r"^error: --set targets\.0: targets: input should be a valid list"),
    "set_list_item_unknown_target": (lambda w: _recipe(w, "targets: [x86-avx512]\n", "--set", "targets.0=x86"),
                                     r"^error: --set targets\.0: unknown target 'x86'"),
    # run folder name from the recipe (no --out)
    "name_absolute": (lambda w: ["--recipe", _w(w, "r.yaml", f"name: {w.parents[2] / 'outside' / 'run'}\n")],
                      r"r\.yaml:1: recipe name '/.*' cannot be a run folder name"),
    "name_dotdot": (lambda w: ["--recipe", _w(w, "r.yaml", "name: ../../../outside/run\n")],
                    r"recipe name '\.\./\.\./\.\./outside/run' cannot be a run folder name"),
    "name_with_slash": (lambda w: ["--recipe", _w(w, "r.yaml", "name: a/b\n")], r"cannot be a run folder name"),
    "name_dots_only": (lambda w: ["--recipe", _w(w, "r.yaml", "name: '..'\n")], r"cannot be a run folder name"),
    # validation gaps
    "seed_2_pow_32": (lambda w: _recipe(w, "seed: 4294967296\n"), r"r\.yaml:1: seed: input should be less than"),
    "seed_negative": (lambda w: _recipe(w, "data: {calibration: {seed: -1}}\n"), r"data\.calibration\.seed: input"),
    "pass_type_list": (lambda w: _recipe(w, "passes:\n  q:\n    type: [quantize]\n"),
                       r"r\.yaml:3: passes\.q\.type must be one pass name, not a list"),
    "max_abs_inf": (lambda w: _recipe(w, "export: {verify: {max_abs: 1e400}}\n"),
                    r"export\.verify\.max_abs: input should be a finite number"),
    "min_cosine_nan": (lambda w: _recipe(w, "export: {verify: {min_cosine: .nan}}\n"), r"input should be a finite number"),
    "unknown_exporter": (lambda w: _recipe(w, "targets:\n  - name: x86-avx512\n    exporters: [onnxruntim]\n"),
                         r"r\.yaml:3: unknown exporter 'onnxruntim' at targets\.0\.exporters\.0; did you mean"),
    "threads_negative": (lambda w: ["list", "--threads", "-1"], r"argument --threads: -1 is outside 1\.\.256"),
    "threads_huge": (lambda w: ["list", "--threads", "100000"], r"argument --threads: 100000 is outside"),
    "inspect_images_negative": (lambda w: ["inspect", "--images", "-3"], r"argument --images: -3 is outside 0\.\."),
    "unknown_option": (lambda w: ["list", "--bogus"], r"unrecognized arguments: --bogus; see compress list --help"),
    # bad --out
    "resume_nothing": (lambda w: _recipe(w, "name: x\n", "--resume"), r"nothing to resume in out"),
    "out_is_a_file": (lambda w: (_w(w, "out", "i am a file"), _recipe(w, "name: x\n"))[1], r"--out out is a file"),
    "out_under_a_file": (lambda w: (_w(w, "f", "x"), ["--recipe", _w(w, "r.yaml", "name: x\n"), "--out", "f/run"])[1],
                         r"cannot create run folder f/run: Not a directory"),
    "out_foreign_folder": (lambda w: ((w / "out").mkdir(), _w(w, "out/mine.txt", "x"), _recipe(w, "name: x\n"))[2],
                           r"out is not empty and holds no vitforge run"),
    "export_out_is_a_file": (lambda w: (_w(w, "o", "x"), ["export", "timm:test_vit", "--out", "o"])[1],
                             r"--out o is a file"),
}
_INPUTS = {"out_is_a_file": {"out"}, "out_under_a_file": {"f"}, "out_foreign_folder": {"out"}, "out_in_read_only_folder": {"ro"}}
if os.geteuid() != 0:  # root writes anywhere
    CASES["out_in_read_only_folder"] = (
        lambda w: ((w / "ro").mkdir(), (w / "ro").chmod(0o555), _recipe(w, "name: x\n")[:-2] + ["--out", "ro/run"])[2],
        r"cannot create run folder ro/run: Permission denied")


# A process start costs ~3 s of CPU (torch); 40 of them would take minutes on a shared machine. So one process
# imports compress once and forks a fresh child per case that runs `python -m compress ARGV` exactly as the
# shell would (runpy of the package's __main__: argv, cwd, environment, stdout/stderr, exit status), with a timeout.
ZYGOTE = r"""
import json, os, runpy, signal, sys, tempfile, time
import compress.cli, compress.commands, compress.pipeline.run, compress.targets  # the expensive imports, once
from compress.pipeline.base import available_passes
available_passes()
for line in sys.stdin:
    job = json.loads(line)
    out, err = job["cwd"] + "/../.stdout", job["cwd"] + "/../.stderr"
    pid = os.fork()
    if pid == 0:
        os.chdir(job["cwd"]); os.environ.clear(); os.environ.update(job["env"]); tempfile.tempdir = None
        for fd, path in ((1, out), (2, err)):
            os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
        sys.stdout = os.fdopen(1, "w", buffering=1); sys.stderr = os.fdopen(2, "w", buffering=1)
        sys.argv = ["compress", *job["argv"]]
        code = 0
        try:
            runpy.run_module("compress", run_name="__main__", alter_sys=True)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:
            import traceback; traceback.print_exc(); code = 1
        sys.stdout.flush(); sys.stderr.flush()
        os._exit(code)
    t, status = time.time(), None
    while status is None:
        done, st = os.waitpid(pid, os.WNOHANG)
        if done:
            status = os.waitstatus_to_exitcode(st)
        elif time.time() - t > job["timeout"]:
            os.kill(pid, signal.SIGKILL); os.waitpid(pid, 0); status = "timeout"
        else:
            time.sleep(0.01)
    res = {"rc": status, "seconds": time.time() - t, "stdout": open(out).read(), "stderr": open(err).read()}
    os.unlink(out); os.unlink(err)
    print(json.dumps(res), flush=True)
"""


@pytest.fixture(scope="module")
def sweep(request, tmp_path_factory) -> dict:
    wanted = sorted({it.callspec.params["case"] for it in request.session.items
                     if it.module is request.module and hasattr(it, "callspec") and "case" in it.callspec.params})
    base = tmp_path_factory.mktemp("sweep")
    zygote = subprocess.Popen([sys.executable, "-c", ZYGOTE], cwd=base, env=_env(base), stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    results = {}
    try:
        for case in wanted:
            root, work = _sandbox(base / case)
            argv = CASES[case][0](work)
            before = _snapshot(root, skip=root / "a" / "b")  # .stdout/.stderr of the runner live in a/b
            zygote.stdin.write(json.dumps({"cwd": str(work), "env": _env(root), "argv": argv, "timeout": 30}) + "\n")
            zygote.stdin.flush()
            res = json.loads(zygote.stdout.readline())
            r = subprocess.CompletedProcess(argv, res["rc"], res["stdout"], res["stderr"])
            results[case] = (r if res["rc"] != "timeout" else None, res["seconds"], before,
                             _snapshot(root, skip=root / "a" / "b"), _snapshot(work), root, work)
    finally:
        zygote.stdin.close()
        zygote.wait(timeout=30)
    return results


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_input_exits_2_with_one_line_and_writes_nothing(case, sweep):
    r, seconds, before, after, work_after, root, work = sweep[case]
    assert r is not None, f"{case}: hung (no exit within 30 s)"
    line = _one_error_line(r)
    assert r.returncode == 2, (r.returncode, line)
    assert re.search(CASES[case][1], line), line
    assert after == before, sorted(set(after) ^ set(before))  # a refusal writes nothing outside ...
    assert not {"out", "runs", "f", "ro"} & {Path(k).parts[0] for k in work_after if not Path(k).parts[0]
                                             .endswith(".yaml")} - _INPUTS.get(case, set()), sorted(work_after)


# -- runs into one folder ----------------------------------------------------------------------------------------
RECIPE = """
name: tiny
model: {model}
seed: 3
data: {{path: {data}, calibration: {{count: 4}}, batch_size: 4}}
passes:
  fold: {{}}
evaluation: {{probe_train: 12, test: 12, fidelity_images: 2, latency: {{runs: 1, warmup: 0}}}}
export: {{verify: {{images: 2}}}}
"""


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> dict:
    """A real run of a tiny model (umask 022) with a second run started into the same --out while it holds it."""
    import torch
    from conftest import make_image_folder, tiny_config
    from compress.models import build
    from compress.pipeline.state import ModelState

    root, work = _sandbox(tmp_path_factory.mktemp("runs"))
    torch.manual_seed(0)
    ModelState(build(tiny_config()), "tiny").save(work / "ckpt")
    make_image_folder(work / "imgs", split="train")
    (work / "r.yaml").write_text(RECIPE.format(model=work / "ckpt", data=work / "imgs"))
    cmd = [sys.executable, "-m", "compress", "--recipe", "r.yaml", "--out", "run", "--quiet"]
    procs = [subprocess.Popen(cmd, cwd=work, env=_env(root), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              preexec_fn=lambda: os.umask(0o022)) for _ in range(2)]  # both at once, one folder
    done = [(p.pid, *reversed(p.communicate(timeout=200)), p.returncode) for p in procs]
    return {"root": root, "work": work, "run": work / "run", "done": done,
            "winner": next((d for d in done if d[3] == 0), None), "loser": next((d for d in done if d[3] != 0), None)}


def test_second_run_into_a_held_folder_exits_2_naming_the_holder(finished):
    winner, loser = finished["winner"], finished["loser"]
    assert winner and loser, [(d[0], d[3], d[1][-2000:]) for d in finished["done"]]  # exactly one ran
    pid, err, _, rc = loser
    line = _one_error_line(subprocess.CompletedProcess([], rc, "", err))
    assert rc == 2 and f"is in use by another compress run (pid {winner[0]})" in line, line
    assert json.loads((finished["run"] / "manifest.json").read_text())["artifacts"]
    assert (finished["run"] / ".lock").read_text() == ""  # released


def test_run_outputs_respect_the_umask(finished):
    run = finished["run"]
    assert finished["winner"]
    files = [run / "report.json", run / "manifest.json", run / "recipe.yaml", run / "export.json",
             *(run / "artifacts").glob("*.onnx"), *(run / "passes").rglob("*.json")]
    dirs = [run / "artifacts", run / "passes", *(run / "passes").iterdir()]
    assert len(files) > 6 and len(dirs) >= 3
    for p in files:
        assert stat.S_IMODE(p.stat().st_mode) == 0o644, (p, oct(p.stat().st_mode))
    for p in dirs:
        assert stat.S_IMODE(p.stat().st_mode) == 0o755, (p, oct(p.stat().st_mode))


def test_a_different_recipe_never_overwrites_a_finished_run(finished):
    """The same model, seed and data but another pass chain (none): refused, every byte left as it was."""
    work, run = finished["work"], finished["run"]
    assert finished["winner"]
    (work / "plain.yaml").write_text(RECIPE.format(model=work / "ckpt", data=work / "imgs")
                                     .replace("passes:\n  fold: {}\n", ""))
    before = _snapshot(run)
    r = compress(work, "--recipe", "plain.yaml", "--out", "run", "--quiet", timeout=120)
    line = _one_error_line(r)
    assert r.returncode == 2 and "passes/01-fold was made by a different recipe" in line, line
    assert _snapshot(run) == before  # recipe.yaml, run.json, checkpoints, artifacts: byte for byte
    # a changed pass config is refused the same way, before recipe.yaml is touched
    (work / "other.yaml").write_text(RECIPE.format(model=work / "ckpt", data=work / "imgs")
                                     .replace("fold: {}", "fold: {layer_scale: false}"))
    r = compress(work, "--recipe", "other.yaml", "--out", "run", "--quiet", timeout=120)
    assert r.returncode == 2 and "was made by a different recipe" in _one_error_line(r)
    assert _snapshot(run) == before


# -- internal errors -------------------------------------------------------------------------------------------
def test_internal_error_is_one_line_with_a_log_of_the_traceback(tmp_path):
    """A bug (here: a command that raises) prints one line naming a log that holds the traceback; exit 1."""
    root, work = _sandbox(tmp_path)
    code = ("import sys, compress.commands as c\n"
            "def boom(args): raise ZeroDivisionError('deliberate bug')\n"
            "c.list_all = boom\nfrom compress.cli import main\nsys.exit(main(['list']))\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=work, env=_env(root), capture_output=True, text=True,
                       timeout=60)
    line = _one_error_line(r)
    assert r.returncode == 1 and "internal error (ZeroDivisionError: deliberate bug)" in line, line
    log = Path(re.search(r"the traceback is in (\S+?);", line).group(1))
    assert log.is_relative_to(root / "cache") and "Traceback" in log.read_text() and "boom" in log.read_text()


def test_internal_error_in_a_run_logs_into_the_run_folder(tmp_path, monkeypatch, capsys):
    import compress.pipeline.run as run_mod
    from compress.cli import main

    def broken(lr, opts):
        opts.out.mkdir(parents=True)
        (opts.out / run_mod.RUN_FILE).write_text("{}")
        raise KeyError("missing")

    monkeypatch.setattr(run_mod, "run_recipe", broken)
    (tmp_path / "r.yaml").write_text("name: x\n")
    assert main(["--recipe", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "internal error (KeyError" in err[0]
    logs = list((tmp_path / "run").glob("error-*.log"))
    assert len(logs) == 1 and "Traceback" in logs[0].read_text()


def test_quantize_override_of_a_missing_module_exits_2_before_calibrating(finished):
    work = finished["work"]
    (work / "q.yaml").write_text(RECIPE.format(model=work / "ckpt", data=work / "imgs").replace(
        "fold: {}", "quantize: {overrides: {blocks.9.mlp.fc2: 4}}"))
    r = compress(work, "--recipe", "q.yaml", "--out", "q", "--quiet", timeout=120)
    line = _one_error_line(r)
    assert r.returncode == 2 and "quantize overrides: the model has no quantizable module 'blocks.9.mlp.fc2'" in line
    assert not (work / "q" / "passes").exists()


def test_quantize_overrides_must_name_modules_of_the_model(tiny_model):
    from compress.errors import UserError
    from compress.passes.quantize import ptq
    from compress.passes.quantize.config import QuantizeConfig

    ptq.check_paths(tiny_model, QuantizeConfig(overrides={"blocks.1.mlp.fc2": 4}, skip=["patch_embed.proj"]))
    for cfg in (QuantizeConfig(overrides={"blocks.7.mlp.fc2": 4}), QuantizeConfig(overrides={"blocks.0.mlp.fc3": 4}),
                QuantizeConfig(skip=["head"])):
        with pytest.raises(UserError, match="the model has no quantizable module"):
            ptq.check_paths(tiny_model, cfg)
