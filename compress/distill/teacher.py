"""The teacher's outputs on a data subset: computed once, kept in memory (fp16) and cached on disk per chunk."""
from __future__ import annotations

import hashlib

import numpy as np
import torch

from ..utils.io import cache_dir


def teacher_outputs(teacher, batches: list[torch.Tensor]) -> list[torch.Tensor]:
    with torch.inference_mode():
        return [teacher(x).float() for x in batches]


class TeacherTargets:
    """Images of a data subset with the teacher's outputs, computed once (fp16, in memory) and cached
    on disk per chunk (keyed by teacher weights, data and preprocessing) for later runs."""

    CHUNK = 128

    def __init__(self, teacher, ds, fingerprint: str, batch_size: int, disk: bool = True):
        self.teacher, self.ds, self.bs = teacher.eval(), ds, batch_size
        key = f"{fingerprint}|{getattr(ds.source, 'root', '')}|{ds.preprocess}|{np.asarray(ds.indices).tobytes().hex()}"
        self.dir = cache_dir("prune-teacher", hashlib.sha256(key.encode()).hexdigest()[:20]) if disk else None
        self.chunks: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.ds)

    def _chunk(self, k: int) -> torch.Tensor:
        if k in self.chunks:
            return self.chunks[k]
        path = self.dir / f"{k:05d}.safetensors" if self.dir else None
        if path is not None and path.is_file():
            from ..errors import UserError
            from ..models.checkpoint import load_state_dict

            try:
                self.chunks[k] = load_state_dict(path)["t"]
                return self.chunks[k]
            except (UserError, KeyError):
                pass
        idx = range(k * self.CHUNK, min((k + 1) * self.CHUNK, len(self.ds)))
        outs = []
        for s in range(0, len(idx), self.bs):
            x = torch.stack([self.ds[i][0] for i in idx[s:s + self.bs]])
            with torch.inference_mode():
                outs.append(self.teacher(x).to(torch.float16))
        self.chunks[k] = torch.cat(outs)
        if path is not None:
            from safetensors.torch import save_file

            from ..utils.io import atomic_path

            with atomic_path(path) as tmp:
                save_file({"t": self.chunks[k].contiguous()}, str(tmp))
        return self.chunks[k]

    def batch(self, idxs: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.stack([self.ds[i][0] for i in idxs])
        t = torch.stack([self._chunk(i // self.CHUNK)[i % self.CHUNK] for i in idxs]).float()
        return x, t
