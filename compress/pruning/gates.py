"""Per-sample structure gates: multiplicative ones on the output of every prunable structure.

For a gate m_s on structure s, dL/dm_s = sum over the structure's weights of w * dL/dw (its whole
contribution), and setting m_s = 0 removes the structure. Giving every sample its own gates
([B, ...] tensors of ones) yields per-sample group gradients from one backward pass, which is what
the Gauss-Newton saliency needs (second moments of per-sample gradients).

Gate sites, with m = 1 exactly the unmodified model:
- MLP unit j: the activation output ``mlp.act`` [B, N, M].
- V dim (head h, dim d): the attention output ``av_matmul`` [B, H, N, dv]; a head is all its V dims.
- QK dim (h, d): the scaled query entering ``qk_matmul`` [B, H, N, dqk] (zeroing it drops q_d k_d).
- Embedding channel c: the embedded tokens, both branch outputs of every block (so the residual
  stream's channel c is zero) and every LayerNorm output that reads the stream (norm1, norm2, and the
  final norm unless its output width is kept by ``WidthRestore``). Removing a channel also changes the
  LayerNorm statistics (mean/variance over D' channels); the gate leaves that second effect out.
"""
from __future__ import annotations

import contextlib

import torch


def _bcast(g: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """[B, C] gate against [B, ..., C] (or [B, H, dv] against [B, H, N, dv])."""
    if g.ndim == 2:
        return g.view(g.shape[0], *([1] * (out.ndim - 2)), g.shape[1])
    return g.unsqueeze(2)


class Gates:
    def __init__(self, model, batch: int, embed_output: bool):
        self.model, self.embed_output = model, embed_output
        one = lambda *s: torch.ones(batch, *s, requires_grad=True)  # noqa: E731
        self.mlp = [one(b.mlp.fc1.out_features) for b in model.blocks]
        self.v = [one(b.attn.num_heads, b.attn.v_dim) for b in model.blocks]
        self.qk = [one(b.attn.num_heads, b.attn.qk_dim) for b in model.blocks]
        self.embed = one(model.cfg.embed_dim)

    def tensors(self) -> list[torch.Tensor]:
        return self.mlp + self.v + self.qk + [self.embed]

    def split(self, grads: list[torch.Tensor]) -> dict:
        n = len(self.mlp)
        return {"mlp": grads[:n], "v": grads[n:2 * n], "qk": grads[2 * n:3 * n], "embed": grads[3 * n]}

    @contextlib.contextmanager
    def attached(self):
        m, hs = self.model, []

        def mul(g):
            return lambda _mod, _inp, out: out * _bcast(g, out)

        def qk_pre(g):
            return lambda _mod, args: (args[0] * _bcast(g, args[0]), *args[1:])

        try:
            for i, blk in enumerate(m.blocks):
                hs.append(blk.mlp.act.register_forward_hook(mul(self.mlp[i])))
                hs.append(blk.attn.av_matmul.register_forward_hook(mul(self.v[i])))
                hs.append(blk.attn.qk_matmul.register_forward_pre_hook(qk_pre(self.qk[i])))
                for site in (blk.ls1, blk.ls2, blk.norm1, blk.norm2):
                    hs.append(site.register_forward_hook(mul(self.embed)))
            hs.append(m.norm_pre.register_forward_hook(mul(self.embed)))
            if self.embed_output:
                hs.append(m.norm.register_forward_hook(mul(self.embed)))
            yield self
        finally:
            for h in hs:
                h.remove()
