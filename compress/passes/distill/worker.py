"""One training phase of a stage (mask learning or distillation) from a job file, in-process or under torchrun:

    torchrun --standalone --nproc_per_node 2 -m compress.passes.distill.worker <job.json>

The job names the starting tower folder, the teacher cache, the data subset (re-drawn identically on every rank),
the loop config, the checkpoint file and the output folder; rank 0 writes the checkpoint and the result.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from ...data import load_subset
from ...distill import clip_cache
from ...distill.clip_loop import LoopConfig, train
from ...distill.views import Views, ViewSpec
from ...models.checkpoint import load_state_dict
from ...models.vit import ViTConfig
from ...pruning.masks import HardConcreteMasks
from ...utils.io import write_json
from .student import ImageStudent, load_tower, save_tower


def student_of(job: dict) -> ImageStudent:
    tower, _ = load_tower(Path(job["init"]))
    proj = load_state_dict(Path(job["proj"]))["weight"] if job.get("proj") else None
    masks = HardConcreteMasks(tower.cfg, job["masks"]) if job.get("masks") else None
    return ImageStudent(tower, proj, job["pool"], job["params0"], masks, job["loop"]["seed"])


def images_of(job: dict):
    d = job["data"]
    ds = load_subset(d["path"], d["split"], d["count"], d["seed"], ViTConfig.from_dict(d["vit"]))
    v = d.get("views") or {}
    return Views(ds, ViewSpec(v.get("views", 1), tuple(v.get("scale", (0.5, 1.0))), v.get("flip", True),
                              d["seed"])).images


def run_job(job: dict, stop_at: int | None = None) -> dict:
    """Train the job's student; rank 0 saves the result folder (tower, masks, record) when the phase finished."""
    rank = int(os.environ.get("RANK", 0))
    student = student_of(job)
    rec = train(student, clip_cache.load(Path(job["cache"])), images_of(job), LoopConfig(**job["loop"]),
                Path(job["ckpt"]), job.get("desc", "distill"), stop_at)
    finished = len(rec["losses"]) >= rec["steps"]
    if rank == 0 and finished:
        out = Path(job["out"])
        save_tower(out, student.tower, record={k: v for k, v in rec.items() if k != "config"})
        if student.masks is not None:
            from safetensors.torch import save_file

            save_file({k: v.detach().contiguous() for k, v in student.masks.state_dict().items()},
                      str(out / "masks.safetensors"))
    return rec | {"finished": finished}


def main(argv: list[str]) -> int:
    job = json.loads(Path(argv[0]).read_text())
    world = int(os.environ.get("WORLD_SIZE", 1))
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", 1)))
    if world > 1:
        import torch.distributed as dist

        dist.init_process_group(job.get("backend", "gloo"))
    try:
        rec = run_job(job)
        if int(os.environ.get("RANK", 0)) == 0 and len(argv) > 1:
            write_json(Path(argv[1]), rec)
    finally:
        if world > 1:
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
