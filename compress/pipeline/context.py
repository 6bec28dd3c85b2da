"""What a pass may use while it runs: the recipe, data, the fp32 reference model, the run folder."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..data import Subset, load_subset
from ..recipes.schema import Recipe
from .state import ModelState


@dataclass
class RunContext:
    recipe: Recipe
    run_dir: Path
    reference: ModelState  # the unmodified fp32 model (teacher, relevance source)
    targets: list[dict] = field(default_factory=list)
    draws: list[dict] = field(default_factory=list)  # image sets the running pass drew (checked for leakage)

    def data(self, split: str, count: int, seed: int | None = None, cfg=None, role: str = "data") -> Subset:
        ds = load_subset(self.recipe.data.path, split, count, self.recipe.seed if seed is None else seed,
                         cfg or self.reference.cfg)
        self.draws.append({"role": role, "split": split, "indices": ds.indices})
        return ds

    def calibration(self, count: int | None = None) -> Subset:
        c = self.recipe.data.calibration
        return self.data(c.split, count or c.count, c.seed, role="calibration")

    def calibration_batches(self, count: int | None = None, batch_size: int | None = None) -> list[torch.Tensor]:
        """Calibration images as a list of batches (kept in memory: passes iterate them several times)."""
        ds = self.calibration(count)
        bs = batch_size or self.recipe.data.batch_size
        images = [ds[i][0] for i in range(len(ds))]
        return [torch.stack(images[i:i + bs]) for i in range(0, len(images), bs)]

    def pass_dir(self, name: str) -> Path:
        d = self.run_dir / "work" / name
        d.mkdir(parents=True, exist_ok=True)
        return d
