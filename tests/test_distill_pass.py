"""The TinyCLIP ``distill`` pass: weight inheritance equals the teacher's masked computation, masks reach their
parameter target, a killed phase resumes to the same weights, 2-process DDP matches 1 process, the pass runs
from a recipe (manual and automatic inheritance, progressive stages) and bad configs exit 2.

Every model here is a small randomly initialised CLIP: mechanics only, no accuracy claim. (The affinity loss
itself is checked against hand-computed cases in tests/test_clip_losses.py.)"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from compress.distill import clip_cache
from compress.distill.clip_loop import LoopConfig, train
from compress.models import clip
from compress.pruning import inherit
from compress.pruning import masks as M
from compress.pruning.select import Limits

from test_clip_models import _tiny_clip

pytestmark = pytest.mark.timeout(600)


def _towers():
    m = _tiny_clip()
    return {"token (projection as head)": m.image_tower(), "headless": m.visual.eval()}


def _keep():
    return {"layers": [1], "heads": [[0], [1]], "mlp": [list(range(0, 128, 2)), list(range(0, 128, 3))],
            "embed": list(range(0, 32, 2)) + [1, 3]}


@pytest.mark.parametrize("kind", ["token (projection as head)", "headless"])
def test_inheritance_equals_masked_teacher(kind):
    tower = _towers()[kind]
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), M.attached(tower, M.binary(tower, _keep())):
        masked = tower(x)
    with torch.no_grad():
        full = tower(x)
    student = inherit.inherit(tower, _keep())
    with torch.no_grad():
        out = student(x)
    assert (out - masked).abs().max() < 1e-5  # the inherited sub-network computes what the masked teacher does
    assert (full - masked).abs().max() > 1e-2  # and the masks really changed the teacher's output
    assert student.cfg.depth == 1 and student.cfg.embed_dim == 18
    assert [b.num_heads for b in student.cfg.blocks] == [1] and [b.mlp_dim for b in student.cfg.blocks] == [43]
    for m in (tower, student):  # the analytic parameter count the budgets use is the real one
        assert inherit.ParamCount(m).model(m.cfg) == inherit.tower_params(m)
    # and the parent's count predicts the student's, the WidthRestore lift of a headless tower included
    assert inherit.ParamCount(tower).model(student.cfg) == inherit.tower_params(student)


def test_manual_inheritance_by_hessian_saliency_meets_its_target():
    from types import SimpleNamespace

    from compress.distill import Distiller, teacher_outputs

    tower = _towers()["token (projection as head)"]
    batches = [torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    t_out = teacher_outputs(tower, batches)
    d = Distiller(SimpleNamespace(num_classes=0, global_pool="token", num_prefix_tokens=0))
    target = 0.5 * inherit.tower_params(tower)
    plan, stats = inherit.saliency_plan(tower, batches, t_out, d, target, Limits(8, 1, 8, 8, 8), ["heads", "mlp", "embed"])
    keep = inherit.keep_of(tower.cfg, plan)
    student = inherit.inherit(tower, keep)
    assert stats["met"] and inherit.tower_params(student) <= target
    assert inherit.tower_params(student) > 0.4 * inherit.tower_params(tower)  # it stops near the budget
    with torch.no_grad(), M.attached(tower, M.binary(tower, keep)):
        masked = tower(batches[0])
    assert (student(batches[0]) - masked).abs().max() < 1e-5
    imp = inherit.layer_importance(tower, batches, t_out, d)
    assert len(imp) == 2 and min(imp) > 0  # skipping any layer costs loss


# -- the loop on a cached teacher -------------------------------------------------------------------------------
def _cache(tower, n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 3, 32, 32, generator=g)
    with torch.no_grad():
        img = tower(X)
    return X, {"image": img, "text": img + 0.3 * torch.randn(img.shape, generator=g), "labels": torch.arange(n) % 4,
               "class_text": torch.randn(4, img.shape[1], generator=g), "scale": torch.tensor(7.0)}


def _masked_student(tower):
    from compress.passes.distill.student import ImageStudent

    return ImageStudent(inherit.inherit(tower, {}), None, "token", inherit.tower_params(tower),
                        M.HardConcreteMasks(tower.cfg), seed=0)


def test_masks_reach_their_parameter_target():
    from compress import ui

    tower = _towers()["token (projection as head)"]
    X, cache = _cache(tower)
    st = _masked_student(tower)
    cfg = LoopConfig(steps=120, batch_size=8, lr=1e-3, losses={"affinity": 1.0}, mask_lr=0.05, lambda_lr=0.1,
                     penalty=100.0, target=0.5, start_ratio=1.0, target_warmup=0.5, save_every=10_000)
    ui.set_quiet(True)
    rec = train(st, cache, lambda idx: X[idx], cfg)
    assert abs(rec["ratio_end"] - 0.5) < 0.05  # the expected parameter ratio under the masks reached the target
    target = 0.5 * st.params0
    keep = inherit.masks_keep(st.tower, st.masks, target, Limits(8, 1, 8, 8, 8))
    student = inherit.inherit(st.tower, keep)
    assert 0.45 * st.params0 <= inherit.tower_params(student) <= target
    st.eval()
    with torch.no_grad(), M.attached(st.tower, M.binary(st.tower, keep)):
        masked = st.tower(X[:4])
    assert (student(X[:4]) - masked).abs().max() < 1e-5


def test_resume_after_a_simulated_kill_gives_the_same_weights(tmp_path):
    tower = _towers()["token (projection as head)"]
    X, cache = _cache(tower)
    cfg = LoopConfig(steps=8, batch_size=8, lr=1e-3, losses={"affinity": 1.0, "contrastive": 0.5}, save_every=3,
                     target=0.7, penalty=10.0)
    a = _masked_student(tower)
    rec_a = train(a, cache, lambda idx: X[idx], cfg, tmp_path / "a.pt")
    b = _masked_student(tower)
    train(b, cache, lambda idx: X[idx], cfg, tmp_path / "b.pt", stop_at=5)  # killed after step 5; saved at 3
    assert torch.load(tmp_path / "b.pt", weights_only=True)["step"] == 3
    c = _masked_student(tower)  # a fresh process: the same starting weights, the checkpoint on disk
    rec_c = train(c, cache, lambda idx: X[idx], cfg, tmp_path / "b.pt")
    assert rec_c["resumed_at"] == 3 and rec_c["losses"] == rec_a["losses"]
    for (k, va), vc in zip(a.state_dict().items(), c.state_dict().values()):
        assert torch.equal(va, vc), k


# -- jobs: a real kill -9 of the worker, and DDP ----------------------------------------------------------------
@pytest.fixture
def job(tmp_path, image_folder):
    from compress.data import load_subset
    from compress.passes.distill.student import save_tower

    m = _tiny_clip()
    tower = m.image_tower()
    ds = load_subset(str(image_folder), "train", 16, 0, tower.cfg)
    images = lambda idx: torch.stack([ds[i][0] for i in idx])  # noqa: E731
    clip_cache.build(m, images, [int(y) for y in ds.labels], list(ds.source.classes), tmp_path / "cache.safetensors")
    save_tower(tmp_path / "init", inherit.inherit(tower, _keep()))
    return {"init": str(tmp_path / "init"), "cache": str(tmp_path / "cache.safetensors"), "proj": None,
            "pool": "token", "params0": inherit.tower_params(tower),
            "data": {"path": str(image_folder), "split": "train", "count": 16, "seed": 0, "vit": tower.cfg.to_dict()},
            "loop": LoopConfig(steps=6, batch_size=8, lr=1e-3, seed=0, save_every=2,
                               losses={"affinity": 1.0, "feature": 0.5, "logit": 0.2, "contrastive": 0.1}).__dict__}


def _with(job, tmp, **kw):
    return job | {"ckpt": str(tmp / "ckpt.pt"), "out": str(tmp / "out")} | kw


def _env():
    return os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}


def test_worker_killed_mid_phase_resumes_to_the_same_weights(tmp_path, job):
    from compress.models.checkpoint import load_state_dict
    from compress.passes.distill.worker import run_job

    job = job | {"loop": job["loop"] | {"steps": 40}}
    ref = run_job(_with(job, tmp_path / "ref"))
    j = _with(job, tmp_path / "killed")
    (tmp_path / "killed").mkdir()
    (tmp_path / "job.json").write_text(json.dumps(j))
    cmd = [sys.executable, "-m", "compress.passes.distill.worker", str(tmp_path / "job.json")]
    p = subprocess.Popen(cmd, env=_env(), stderr=subprocess.DEVNULL)
    t0 = time.time()
    while not Path(j["ckpt"]).is_file() and p.poll() is None and time.time() - t0 < 120:
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)  # kill -9 mid-phase
    p.wait()
    assert not (tmp_path / "killed" / "out").exists()
    rec = run_job(j)
    assert 0 < rec["resumed_at"] < 40 and rec["losses"] == ref["losses"]
    a, b = load_state_dict(tmp_path / "ref/out/model.safetensors"), load_state_dict(tmp_path / "killed/out/model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


DDP_TOL = 1e-4  # relative: the gathered full-batch loss, summed in another order by the all-reduce


@pytest.mark.slow  # two torchrun processes start (about 20 s on a loaded 2-core machine)
def test_ddp_two_gloo_processes_match_one_on_the_same_global_batch(tmp_path, job):
    from compress.models.checkpoint import load_state_dict
    from compress.passes.distill.worker import run_job

    one = run_job(_with(job, tmp_path / "one"))
    j = _with(job, tmp_path / "two")
    (tmp_path / "job.json").write_text(json.dumps(j))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc_per_node", "2",
           "-m", "compress.passes.distill.worker", str(tmp_path / "job.json"), str(tmp_path / "two.json")]
    p = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    two = json.loads((tmp_path / "two.json").read_text())
    assert two["world"] == 2 and one["world"] == 1
    l1, l2 = torch.tensor(one["losses"], dtype=torch.float64), torch.tensor(two["losses"], dtype=torch.float64)
    rel = float(((l2 - l1).abs() / l1.abs().clamp_min(1e-12)).max())
    print(f"DDP: max relative loss difference, 2 processes vs 1: {rel:.2e}")
    assert rel < DDP_TOL, rel
    a, b = load_state_dict(tmp_path / "one/out/model.safetensors"), load_state_dict(tmp_path / "two/out/model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    assert max((a[k] - load_state_dict(Path(job["init"]) / "model.safetensors")[k]).abs().max() for k in a) > 1e-4


# -- the pass from a recipe ---------------------------------------------------------------------------------------
RECIPE = """name: tiny-distill
passes:
  distill:
    stages: [{{params: 0.75}}, {{params: 0.5}}]
    steps: 4
    batch_size: 8
    images: 16
    save_every: 2
    inheritance: {inheritance}
evaluation: {{enabled: false}}
export: {{verify: {{images: 2}}}}
"""


def _run(tmp_path, image_folder, inheritance: str, *sets, model=None, out="run"):
    from compress.cli import main

    if model is None:
        model = tmp_path / "clip"
        if not model.is_dir():
            clip.save_dir(_tiny_clip(), model)
    (tmp_path / "r.yaml").write_text(RECIPE.format(inheritance=inheritance))
    args = ["--recipe", str(tmp_path / "r.yaml"), "--model", str(model), "--data", str(image_folder), "--out",
            str(tmp_path / out), "--quiet", "--set", "data.calibration.count=8", "--set", "data.batch_size=4"]
    for s in sets:
        args += ["--set", s]
    return main(args)


def test_pass_progressive_manual_stages_from_a_recipe(tmp_path, image_folder):
    from compress.pipeline.checkpoint import load_checkpoint

    assert _run(tmp_path, image_folder, "{mode: manual, saliency_images: 8, layers: {keep: 1}}") == 0
    run = tmp_path / "run"
    rec = json.loads((run / "passes/01-distill/config.json").read_text())["history"][-1]
    s1, s2 = rec["stages"]
    assert s1["inheritance"]["layers"] in ([0], [1]) and s1["widths"]["depth"] == 1  # a layer by importance
    assert s1["ratio"] <= 0.75 and s2["ratio"] <= 0.5 and s2["params"] < s1["params"]
    assert s2["train"]["steps"] == 4 and len(s2["train"]["losses"]) == 4
    state, _ = load_checkpoint(run / "passes/01-distill")
    assert inherit.tower_params(state.model) == s2["params"]
    student = clip.load_dir(run / rec["student_clip"])  # both towers; the image side is the pipeline's model
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(student.encode_image(x, normalize=False), state.model(x), atol=1e-5)
    assert "stage 2: target 0.5" in (run / "report.md").read_text()
    work = run / rec["work"]
    assert (work / "stage-02/final/config.json").is_file() and any((work / "teacher").glob("*.safetensors"))
    _text_tower_artifact_matches(run, student)


def _text_tower_artifact_matches(run, student):
    """The exporters emit both towers: the text tower's ONNX, verified, computes the student's text embeddings."""
    import onnxruntime as ort

    art = next(a for a in json.loads((run / "export.json").read_text())["artifacts"] if a["name"] == "text-tower-fp32")
    assert art["inputs"] == "text" and art["verification"]["passed"] and not art["evaluate"]
    tok = student.tokenize(["a photo of a cat.", "a very blurry black and white photo of the big ship."])
    sess = ort.InferenceSession(str(run / art["path"]), providers=["CPUExecutionProvider"])
    got = sess.run(None, {i.name: tok[i.name].long().numpy() for i in sess.get_inputs()})[0]
    with torch.no_grad():
        want = student.encode_text(tok, normalize=False)
    assert torch.allclose(torch.from_numpy(got), want, atol=1e-4)


def _tiny_cls_mean_clip() -> clip.CLIPModel:
    """A LiT-like CLIP: a headless tower (tokens out) pooled [class token, mean patch token], as the LiT teacher."""
    from compress.models.vit import ViTConfig

    ref = _tiny_clip()
    vc = ViTConfig.uniform(32, 2, 2, img_size=32, patch_size=8, global_pool="none", mean=(0.5, 0.5, 0.5),
                           std=(0.25, 0.25, 0.25), name="tiny-tokens")
    torch.manual_seed(1)
    return clip.CLIPModel(clip.CLIPConfig(vc, 24, ref.cfg.text, "cls_mean", 2.0, "tiny-lit")).eval()


def test_pass_on_a_cls_mean_tower_keeps_the_teacher_projection(tmp_path, image_folder):
    from compress.models.pooling import pooled
    from compress.pipeline.checkpoint import load_checkpoint

    clip.save_dir(_tiny_cls_mean_clip(), tmp_path / "lit")
    assert _run(tmp_path, image_folder, "{mode: manual, saliency_images: 8, widths: [embed]}",
                "passes.distill.stages=[{params: 0.6}]", model=tmp_path / "lit") == 0
    run = tmp_path / "run"
    rec = json.loads((run / "passes/01-distill/config.json").read_text())["history"][-1]
    state, _ = load_checkpoint(run / "passes/01-distill")
    assert rec["stages"][0]["ratio"] <= 0.6 and inherit.tower_params(state.model) == rec["stages"][0]["params"]
    assert state.model.cfg.embed_dim < 32 and rec["output_width"] == 32  # narrower stream, lifted back to 32
    student, teacher = clip.load_dir(run / rec["student_clip"]), _tiny_cls_mean_clip()
    assert torch.equal(student.visual_projection.weight, teacher.visual_projection.weight)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = teacher.visual_projection(pooled(state.model(x), 1))
        assert torch.allclose(student.encode_image(x, normalize=False), want, atol=1e-5)


def test_pass_resumes_at_the_last_finished_stage(tmp_path, image_folder):
    inh = "{mode: manual, saliency_images: 8}"
    assert _run(tmp_path, image_folder, inh) == 0
    run = tmp_path / "run"
    rec = json.loads((run / "passes/01-distill/config.json").read_text())["history"][-1]
    work = run / rec["work"]
    final = (work / "stage-02/final/model.safetensors").read_bytes()
    import shutil

    from compress.passes.distill.worker import run_job

    shutil.rmtree(run / "passes")  # the run is killed in stage 2, after its step-2 checkpoint:
    shutil.rmtree(work / "stage-02/final")
    for f in ("train.json", "train.pt"):
        (work / "stage-02" / f).unlink()
    run_job(json.loads((work / "stage-02/train.job.json").read_text()), stop_at=3)
    assert torch.load(work / "stage-02/train.pt", weights_only=True)["step"] == 2
    stage1 = (work / "stage-01/final/model.safetensors").stat().st_mtime_ns
    assert _run(tmp_path, image_folder, inh) == 0
    assert (work / "stage-01/final/model.safetensors").stat().st_mtime_ns == stage1  # stage 1 reused
    rec2 = json.loads((run / "passes/01-distill/config.json").read_text())["history"][-1]
    assert rec2["stages"][1]["train"]["resumed_at"] == 2
    assert (work / "stage-02/final/model.safetensors").read_bytes() == final  # as if never killed


def test_pass_automatic_inheritance_by_masks(tmp_path, image_folder):
    inh = "{mode: auto, mask_steps: 100, saliency_images: 8}"
    assert _run(tmp_path, image_folder, inh, "passes.distill.stages=[{params: 0.5}]") == 0
    rec = json.loads((tmp_path / "run/passes/01-distill/config.json").read_text())["history"][-1]
    (s,) = rec["stages"]
    assert s["inheritance"]["mode"] == "auto" and 0.45 <= s["ratio"] <= 0.5
    assert abs(s["inheritance"]["mask_ratio_end"] - 0.5) < 0.1


@pytest.mark.parametrize("sets, model, says", [
    (["passes.distill.stages=[{params: 0.5}, {params: 0.75}]"], None, "smaller than the one it inherits"),
    (["passes.distill.colour=1"], None, "unknown key passes.distill.colour"),
    (["passes.distill.losses={affinity: 0}"], None, "at least one loss"),
    (["passes.distill.augment={views: 2, scale: [0.9, 0.5]}"], None, "0 < low <= high <= 1"),
    (["passes.distill.augment.views=0"], None, "views"),
    ([], "timm:test_vit", "needs a CLIP teacher with a text tower"),
])
def test_bad_configs_exit_2_with_one_line(tmp_path, image_folder, capsys, sets, model, says):
    rc = _run(tmp_path, image_folder, "{mode: manual}", *sets, model=model)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and says in err[-1] and "Traceback" not in "\n".join(err)


def test_pass_trains_its_stages_under_torchrun(tmp_path, image_folder, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[1]))
    assert _run(tmp_path, image_folder, "{mode: manual, saliency_images: 8}", "passes.distill.stages=[{params: 0.5}]",
                "passes.distill.ddp={procs: 2}") == 0
    rec = json.loads((tmp_path / "run/passes/01-distill/config.json").read_text())["history"][-1]
    t = rec["stages"][0]["train"]
    assert t["world"] == 2 and len(t["losses"]) == 4 and rec["stages"][0]["ratio"] <= 0.5


def test_lit_teacher_is_the_cached_build_and_must_fit_the_tower(tmp_path, image_folder, monkeypatch, capsys):
    """``teacher: lit`` takes clip_teacher.build()'s model (stood in for by a tiny cls_mean CLIP: the real build needs
    the DINOv2 and MiniLM weights) and refuses a tower its projection cannot read."""
    from compress.distill import clip_teacher

    calls = []
    monkeypatch.setattr(clip_teacher, "build", lambda *a, **k: calls.append(1) or (_tiny_cls_mean_clip(), {}))
    clip.save_dir(_tiny_cls_mean_clip(), tmp_path / "lit")
    assert _run(tmp_path, image_folder, "{mode: manual, saliency_images: 8}", "passes.distill.stages=[{params: 0.6}]",
                "passes.distill.teacher=lit", model=tmp_path / "lit") == 0 and calls
    rec = json.loads((tmp_path / "run/passes/01-distill/config.json").read_text())["history"][-1]
    assert rec["teacher"] == "lit" and rec["stages"][0]["ratio"] <= 0.6
    rc = _run(tmp_path, image_folder, "{mode: manual}", "passes.distill.teacher=lit", out="run-token")
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and "lit distils into the LiT teacher's own image tower family" in err[-1]


def test_random_init_keeps_the_inherited_structure_and_replaces_every_weight(tmp_path, image_folder):
    """The baseline TinyCLIP measures inheritance against: the same sub-network, freshly initialised."""
    from compress.pipeline.checkpoint import load_checkpoint

    clip.save_dir(_tiny_cls_mean_clip(), tmp_path / "lit")
    towers = {}
    for init in ("inherit", "random"):
        assert _run(tmp_path, image_folder, "{mode: manual, saliency_images: 8, widths: [embed, mlp]}",
                    "passes.distill.stages=[{params: 0.6}]", "passes.distill.steps=0",
                    f"passes.distill.inheritance.init={init}", model=tmp_path / "lit", out=init) == 0
        towers[init] = load_checkpoint(tmp_path / init / "passes/01-distill")[0].model
    a, b = (towers[k].state_dict() for k in ("inherit", "random"))
    assert a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)  # embed-pruned, width restored
    assert all(not torch.equal(a[k], b[k]) for k in a if a[k].numel() > 1 and a[k].float().std() > 0)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert towers["random"](x).shape == towers["inherit"](x).shape


def test_distill_bench_variants_parse_and_a_bad_one_exits_2(capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("distill_bench", Path(__file__).parents[1] / "benchmarks/distill_bench.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    v = bench.parse_variant("random-feature@0.75+0.5/int8")
    assert (v["init"], v["loss"], v["stages"], v["int8"], v["base"]) == ("random", "feature", [0.75, 0.5], True,
                                                                         "random-feature@0.75+0.5")
    for bad in ("inherit-affinity", "warm-affinity@0.5", "inherit-kl@0.5", "inherit-affinity@x", "inherit-affinity@0.5/int4"):
        assert bench.main(["--only", bad, "--out", "/nonexistent/never-written"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "is not <inherit|random>" in err[0]
    assert bench.main(["--only", "", "--merge", "/nonexistent/run", "--out", "/nonexistent/never-written"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no readable results.json" in err[0]
