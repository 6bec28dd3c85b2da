"""Every Triton kernel under TRITON_INTERPRET=1 against the PyTorch reference, with the error bounds stated here.

Collected through tests/test_kernels_triton.py (in its process, or a fresh one when Triton was already
imported in compiler mode). Run alone: ``python -m pytest tests/kernels_triton_cases.py``.

Bounds: the kernels compute in fp32 and round once to the output dtype, so |kernel - fp32 reference| is at
most the fp32 error (2e-6 for probabilities in [0, 1], 1e-6 * max(1, |x|) for GELU) plus half an output ulp
(probabilities: 2^-11 fp16, 2^-8 bf16; GELU: relative 2^-11 fp16, 2^-8 bf16).
"""
from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"  # before the kernels are decorated

import pytest  # noqa: E402
import torch  # noqa: E402

from compress.kernels import reference as R  # noqa: E402
from compress.kernels import ops  # noqa: E402
from compress.kernels.triton_kernels import gelu as tgelu  # noqa: E402
from compress.kernels.triton_kernels import softmax as tsoftmax  # noqa: E402
from compress.kernels.triton_kernels import softmax_codes as tcodes  # noqa: E402
from compress.kernels.triton_softmax import FUSED_MAX  # noqa: E402

pytestmark = pytest.mark.timeout(120)

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
HALF_ULP = {torch.float32: 0.0, torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}
BIG = {torch.float32: 1e30, torch.float16: 6e4, torch.bfloat16: 1e30}


def _scores(dtype, shape, seed=0) -> torch.Tensor:
    """Random logits with the edge rows: huge values (one-hot), tiny values (uniform), a repeated maximum."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * 4
    flat = x.view(-1, shape[-1])
    if flat.shape[0] >= 3 and shape[-1] >= 3:
        flat[0] = torch.linspace(-BIG[dtype], BIG[dtype], shape[-1])
        flat[1] = 1e-30
        flat[2, :2] = 50.0
    return x.to(dtype)


def _check_softmax(y, x, scale, mask, method):
    ref = R.softmax_f32(x, scale, mask, method)
    tol = 2e-6 + HALF_ULP[x.dtype]
    assert y.dtype == x.dtype and y.shape == x.shape
    err = (y.float() - ref).abs().max().item()
    assert err <= tol, f"{method} {x.dtype} {tuple(x.shape)}: max error {err:.3g} > {tol:.3g}"
    return ref


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("method", R.SOFTMAX_METHODS)
def test_softmax_matches_reference(method, dtype):
    # a length-1 row, a tiny non-power-of-two width, huge / tiny / repeated-max rows
    for shape in [(1, 1), (4, 7), (3, 37)]:
        x = _scores(dtype, shape)
        y = tsoftmax(x, 1.0, None, method)
        _check_softmax(y, x, 1.0, None, method)
        assert torch.allclose(y.float().sum(-1), torch.ones(shape[0]), atol=shape[-1] * (2e-6 + 2 * HALF_ULP[dtype]))
    # [B, H, N, N] scores with a fused scale and a [N, N] mask: one fully masked row, one masked to -1e9
    x = _scores(dtype, (2, 3, 5, 257), seed=1)
    mask = torch.zeros(5, 257)
    mask[1] = float("-inf")
    mask[3, 100:] = -1e9
    y = tsoftmax(x, 0.125, mask, method)
    _check_softmax(y, x, 0.125, mask, method)
    assert torch.count_nonzero(y[:, :, 1]) == 0  # fully masked rows are zeros, not NaN
    assert torch.count_nonzero(y[:, :, 3, 100:]) == 0


@pytest.mark.parametrize("method", ["exact", "online", "online-poly2"])
def test_softmax_streaming_layout(method):
    """The single-pass running max / sum over several chunks, with a key-padding mask [B, 1, 1, N]."""
    x = _scores(torch.float32, (2, 3, 4, 300), seed=2)
    mask = torch.zeros(2, 1, 1, 300)
    mask[1, ..., 250:] = float("-inf")
    y = tsoftmax(x, 0.5, mask, method, block=64)  # 5 chunks per row
    ref = _check_softmax(y, x, 0.5, mask, method)
    if method != "online-poly2":
        assert torch.allclose(ref, torch.softmax(x * 0.5 + mask, -1), atol=1e-6)


def test_softmax_row_wider_than_registers_streams():
    x = torch.randn(2, FUSED_MAX + 1000, generator=torch.Generator().manual_seed(3)) * 8
    y = tsoftmax(x, 1.0, None, "exact")
    assert (y - torch.softmax(x.double(), -1)).abs().max() <= 2e-6


@pytest.mark.filterwarnings("ignore:divide by zero")  # log2(0) = -inf: the log2 top code, as intended
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("codes", [R.LogCodes.log2(4), R.LogCodes.sulq(4, 0.01), R.LogCodes.sulq(8, 0.001)], ids=str)
def test_softmax_codes(codes, dtype):
    x = _scores(dtype, (6, 197), seed=4)
    for method in ("exact", "online-poly2"):
        q = tcodes(x, codes, 1.0, None, method)
        want = R.softmax_codes(x, codes, 1.0, None, method)
        assert q.dtype == torch.uint8 and int(q.max()) <= codes.qmax
        diff = (q.int() - want.int()).abs()
        # the fp32 probabilities differ by an ulp at most, so a code may flip only at a rounding boundary
        assert int(diff.max()) <= 1 and float((diff > 0).float().mean()) <= 1e-3
    if codes.eta == 0.0:  # log2 codes: the decoded value is within a factor sqrt(2) of p (inside the range)
        p = R.softmax_f32(x)
        inside = p > 2.0 ** -(codes.qmax - 0.5)
        ratio = codes.decode(q)[inside] / p[inside]
        assert float(ratio.min()) >= 2**-0.5 - 1e-6 and float(ratio.max()) <= 2**0.5 + 1e-6


def _activations(dtype, shape, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * 3
    flat = x.view(-1)
    edge = torch.tensor([1e4, 0.0, 1e-30, -1e-30, -1e4, 6.0])  # huge, zero, tiny, the table's end
    flat[: len(edge)] = edge[: flat.numel()]
    return x.to(dtype)


@pytest.mark.filterwarnings("ignore:overflow encountered in exp")  # tanh form: e^(2u) = inf gives exactly 1
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("method", R.GELU_METHODS)
def test_gelu_matches_reference(method, dtype):
    table = R.GeluTable("gelu", 64, 6.0)
    values, inv = table.values(), table.inv_step
    rel = {torch.float32: 0.0, torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}[dtype]
    for shape, with_bias in [((1,), False), ((5, 37), True), ((3, 2, 129), False)]:
        x = _activations(dtype, shape)
        bias = torch.randn(shape[-1], generator=torch.Generator().manual_seed(5)) if with_bias else None
        y = tgelu(x, bias, method, values, inv)
        ref = R.gelu_f32(x, bias, method, values, inv)
        z = x.float() + (bias if bias is not None else 0)
        bound = 1e-6 * z.abs().clamp_min(1) + rel * ref.abs()
        assert y.dtype == dtype and y.shape == x.shape
        assert bool(((y.float() - ref).abs() <= bound).all()), f"{method} {dtype} {shape}"


def test_custom_ops_reach_triton_under_the_interpreter():
    assert ops.resolve_backend("triton", torch.device("cpu")) == "triton"
    assert ops.resolve_backend("auto", torch.device("cpu")) == "reference"
    x = _scores(torch.float32, (3, 37))
    assert torch.allclose(ops.softmax(x, 0.5, None, "online-poly3", "triton"), R.softmax(x, 0.5, None, "online-poly3"),
                          atol=2e-6)
    t = R.GeluTable("quick_gelu", 32, 8.0)
    a = _activations(torch.float32, (4, 33))
    assert torch.allclose(ops.gelu(a, None, "relu-lut", t.values(), t.inv_step, "triton"),
                          R.gelu(a, None, "relu-lut", t.values(), t.inv_step), atol=1e-5)


# -- integer softmax / GELU: codes equal to the reference's, bit for bit ------------------------------------------
from compress.kernels import integer as I  # noqa: E402
from compress.kernels import triton_integer as tint  # noqa: E402


@pytest.mark.parametrize("shape,k", [((1, 1), 1), ((3, 7), 8), ((2, 3, 5, 257), 8), ((4, 1000), 14), ((2, 4097), 3)])
def test_triton_int_softmax_codes_equal_reference(shape, k):
    g = torch.Generator().manual_seed(k)
    for c in (torch.randint(-32768, 32768, shape, generator=g, dtype=torch.int32),
              I.quantize(torch.randn(shape, generator=g) * 30, k)):  # logits of a ViT's range
        assert torch.equal(tint.int_softmax_codes(c, k), I.softmax_codes(c, k))


@pytest.mark.parametrize("k", [0, 5, 11, 14])
def test_triton_int_gelu_codes_equal_reference_on_every_code(k):
    c = torch.arange(-32768, 32768, dtype=torch.int32).reshape(64, 1024)  # every int16 code
    assert torch.equal(tint.int_gelu_codes(c, k), I.gelu_codes(c, k))
    assert torch.equal(tint.int_gelu_codes(c[:3, :5], k, tile=4), I.gelu_codes(c[:3, :5], k))  # ragged tail
