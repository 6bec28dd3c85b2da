"""Verification honesty: bounded relaxations, what each artifact was compared with, staged artifacts."""
from __future__ import annotations

import pytest
import torch

from compress.errors import VerificationError


def _chaos(x):
    """A reference so sensitive that 1e-6 of input noise scrambles its output (cosine ~0 to itself)."""
    return torch.sin(x * 1e9)


def test_noise_floor_relaxation_has_an_absolute_limit():
    from compress.export.verify import FLOOR_MIN_COSINE, verify

    x = torch.randn(8, 64, generator=torch.Generator().manual_seed(0))
    garbage = lambda t: torch.randn(t.shape, generator=torch.Generator().manual_seed(1))  # noqa: E731
    with pytest.raises(VerificationError, match="verification failed") as e:
        verify("a", garbage, _chaos, x, 10.0, 0.99, floor_noise=1e-6)
    assert f"cosine {FLOOR_MIN_COSINE:g}" in str(e.value)  # the limit the relaxation stopped at is named
    v = verify("a", garbage, _chaos, x, 10.0, 0.99, floor_noise=1e-6, strict=False)
    assert not v.passed and v.min_cosine == FLOOR_MIN_COSINE and v.requested_min_cosine == 0.99
    assert v.floor_cosine < 0.5 and v.to_dict()["min_cosine"] == FLOOR_MIN_COSINE


def test_every_check_is_bounded_element_wise_and_by_predictions():
    from compress.export.verify import verify

    x = torch.randn(8, 50, 16, generator=torch.Generator().manual_seed(0))
    ref = lambda t: t  # noqa: E731

    def one_token_off(t):  # one token of one image is wrong: the global cosine barely moves
        t = t.clone()
        t[3, 2, 5] += 6
        return t
    v = verify("a", one_token_off, ref, x, float("inf"), 0.99, max_rel=0.25, strict=False)
    assert v.cosine > 0.99 and not v.passed and v.max_abs_limit < 6
    assert v.agreement == 1.0

    def swapped(t):  # the class token's largest feature moves on every image: predictions differ
        t = t.clone()
        t[:, 0] = t[:, 0].roll(1, dims=-1)
        return t
    v = verify("a", swapped, ref, x, 100.0, 0.0, min_agreement=0.75, strict=False)
    assert v.agreement < 0.75 and not v.passed
    with pytest.raises(Exception, match="finite"):
        verify("a", ref, ref, x, float("inf"), 0.99)
