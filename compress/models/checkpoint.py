"""Safe weight files: safetensors, or ``torch.load(weights_only=True)``; never pickled code."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import UserError
from ..utils.io import atomic_dir

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read tensors from a weights file; a corrupt or unsafe file is a one-line UserError."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"weights {path} is a directory, not a weights file",
                        f"name the weights file inside it ({', '.join(WEIGHT_SUFFIXES)})")
    if not path.is_file():
        raise UserError(f"weights file {path} does not exist", "check the path")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # safetensors raises several types on bad headers
            raise UserError(f"checkpoint {path} is corrupt or not a safetensors file ({_short(e)})",
                            "re-download or re-export it") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"checkpoint {path} cannot be loaded safely ({_short(e)})",
                        "provide a safetensors file or a plain tensor state dict") from None
    for key in ("state_dict", "model", "module"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"checkpoint {path} holds no tensor state dict", "save model.state_dict()")
    return obj


def tensor_shapes(path: str | Path) -> dict[str, tuple[int, ...]] | None:
    """Each tensor's shape from a safetensors header, without reading the tensors (None for other formats)."""
    path = Path(path)
    if path.suffix != ".safetensors" or not path.is_file():
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:  # safetensors raises several types on bad headers
        raise UserError(f"checkpoint {path} is corrupt or not a safetensors file ({_short(e)})",
                        "re-download or re-export it") from None


def _short(e: Exception) -> str:
    return str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__


def save_model_dir(dest: str | Path, state: dict[str, torch.Tensor], config: dict) -> None:
    """Write ``model.safetensors`` + ``config.json`` into ``dest`` atomically."""
    from safetensors.torch import save_file

    with atomic_dir(dest) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(tmp / "model.safetensors"))
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
