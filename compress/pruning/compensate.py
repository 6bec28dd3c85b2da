"""Least-squares compensation of the linear that consumes removed units (Optimal Brain Surgeon for
structured input removal): after fc2 loses MLP units or proj loses V dims, its remaining weights and
bias are refitted so its output on the calibration images stays as close as possible::

    [W' b'] = [W b] H[:, K] (H[K, K] + lambda I)^-1,   H = E[x x^T],  x = [inputs, 1],  K = kept inputs + bias

H is the layer's input Hessian of the squared output error (the same curvature OBS uses), collected
on the current model before removal; lambda = ``damp`` * mean diagonal keeps the solve well-posed.
"""
from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def input_moments(layers: dict[str, torch.nn.Linear]):
    """Accumulate E[x x^T] (x with a trailing 1) of each layer's input while the block runs."""
    acc: dict[str, list] = {k: [None, 0] for k in layers}

    def hook(name):
        def fn(_m, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
            x = torch.cat([x, torch.ones(len(x), 1)], 1)
            h = (x.T @ x).double()
            a = acc[name]
            a[0] = h if a[0] is None else a[0] + h
            a[1] += len(x)
        return fn

    hs = [m.register_forward_pre_hook(hook(k)) for k, m in layers.items()]
    try:
        yield acc
    finally:
        for h in hs:
            h.remove()


def collect(model, batches: list[torch.Tensor], layers: dict[str, torch.nn.Linear]) -> dict[str, torch.Tensor]:
    if not layers:
        return {}
    with input_moments(layers) as acc, torch.inference_mode():
        for x in batches:
            model(x)
    return {k: h / n for k, (h, n) in acc.items()}


def refit(layer: torch.nn.Linear, H: torch.Tensor, keep: list[int], damp: float = 0.01) -> tuple:
    """New (weight [out, len(keep)], bias [out]) of ``layer`` reading only the ``keep`` inputs."""
    n, has_bias = layer.in_features, layer.bias is not None
    idx = torch.tensor(list(keep) + ([n] if has_bias else []))
    b = layer.bias.detach() if has_bias else torch.zeros(layer.out_features)
    W = torch.cat([layer.weight.detach(), b[:, None]], 1).double()
    Hkk = H[idx][:, idx]
    Hkk = Hkk + damp * Hkk.diagonal().mean() * torch.eye(len(idx), dtype=H.dtype)
    Wn = torch.linalg.solve(Hkk, (W @ H[:, idx]).T).T  # Hkk is symmetric
    return (Wn[:, :-1].float(), Wn[:, -1].float()) if has_bias else (Wn.float(), None)


def assign(layer: torch.nn.Linear, new: tuple) -> None:
    w, b = new
    with torch.no_grad():
        layer.weight.copy_(w)
        if b is not None:
            layer.bias.copy_(b)
