"""Block-wise least-squares reconstruction towards the unpruned teacher (closed form, no training).

Block by block, in order, each block's two output linears (attn.proj, mlp.fc2; weights and bias) are
refitted so the student's residual stream after that branch matches the teacher's stream at the same
place (restricted to the kept embedding channels) in least squares, on the calibration images::

    proj:  x_s + g1 * proj(o_s)   ~= t_mid        ->  [W b] = argmin E|| [W b] [o_s; 1] - (t_mid - x_s) / g1 ||^2
    fc2:   x_mid + g2 * fc2(h_s)  ~= t_out

(g: the LayerScale gammas; the fit is per output channel, so dividing by g does not reweight it). Each
fit sees the student's inputs after the earlier blocks were refitted, so it also absorbs the error
that pruning upstream left in the stream. The output lift of an embed-pruned encoder (``WidthRestore``)
is fitted to the teacher's final stream the same way. Damping: ``damp`` x the mean diagonal of E[x x^T].
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ...models.vit import LayerScale
from ...distill.lstsq import Moments
from ...models.heads import WidthRestore


def _gamma(ls: nn.Module, like: torch.Tensor) -> torch.Tensor:
    return ls.gamma.detach() if isinstance(ls, LayerScale) else torch.ones(like.shape[-1])


def _token_weight(t: torch.Tensor) -> torch.Tensor:
    """1 / variance of each teacher token over channels: errors weighed as the next LayerNorm sees them
    (DINOv2's few high-norm tokens would otherwise dominate every fit)."""
    return 1.0 / t.float().var(-1).clamp_min(1e-6)


def _proj_input(attn, x: torch.Tensor) -> torch.Tensor:
    got = []
    h = attn.proj.register_forward_pre_hook(lambda _m, a: got.append(a[0]))
    try:
        attn(x)
    finally:
        h.remove()
    return got[0]


@torch.no_grad()
def reconstruct(student, teacher, batches: list[torch.Tensor], keep: list[int], damp: float = 0.01) -> dict:
    """Refit every block's proj and fc2 (and the output lift) of ``student`` towards ``teacher``;
    ``keep``: the teacher's embedding channels the student's stream still carries, in order."""
    k = torch.as_tensor(keep)
    xs = [student.embed(x) for x in batches]
    ts = [teacher.embed(x) for x in batches]
    err = []
    for sb, tb in zip(student.blocks, teacher.blocks):
        t_mid = [t + tb.ls1(tb.attn(tb.norm1(t))) for t in ts]
        m = Moments()
        outs = [_proj_input(sb.attn, sb.norm1(x)) for x in xs]
        for x, o, t in zip(xs, outs, t_mid):
            m.add(o, (t[..., k] - x) / _gamma(sb.ls1, x), sb.attn.proj.bias is not None, _token_weight(t))
        m.solve(sb.attn.proj, damp)
        xs = [x + sb.ls1(sb.attn.proj(o)) for x, o in zip(xs, outs)]
        ts = [t + tb.ls2(tb.mlp(tb.norm2(t))) for t in t_mid]
        m = Moments()
        hid = [sb.mlp.act(sb.mlp.fc1(sb.norm2(x))) for x in xs]
        for x, h, t in zip(xs, hid, ts):
            m.add(h, (t[..., k] - x) / _gamma(sb.ls2, x), sb.mlp.fc2.bias is not None, _token_weight(t))
        m.solve(sb.mlp.fc2, damp)
        xs = [x + sb.ls2(sb.mlp.fc2(h)) for x, h in zip(xs, hid)]
        err.append(float(sum((x - t[..., k]).pow(2).sum() for x, t in zip(xs, ts))
                         / sum(t.pow(2).sum() for t in ts)))
    if isinstance(student.norm, WidthRestore) and not student.cfg.fc_norm:
        m = Moments()
        for x, t in zip(xs, ts):
            m.add(x, t, True, _token_weight(t))
        m.solve(student.norm.proj, damp)
    return {"stream_error": err}
