"""Reference math, the kernels pass, the ONNX export of the approximations, and their error on a real ViT."""
from __future__ import annotations

import collections
import json
import math
from pathlib import Path
from types import SimpleNamespace

import onnx
import pytest
import torch
import torch.nn as nn

from compress.errors import UserError
from compress.kernels import KernelGELU, KernelSoftmax, reference as R
from compress.kernels.measure import capture_inputs, gelu_errors, softmax_errors
from compress.models.vit import Softmax
from compress.passes.kernel_swap import KernelsConfig, apply, lut_error
from compress.pipeline.checkpoint import load_checkpoint

pytestmark = pytest.mark.timeout(180)

POLY_REL = {1: 0.0615, 2: 0.00268, 3: 1.04e-4}  # max relative error of the 2^f polynomials on [0, 1)


def lut_bound(table: R.GeluTable) -> float:
    """Linear interpolation error h^2/8 max|delta''|; delta'' = (t^2 - 2) phi(t) for GELU, max 2 phi(0)."""
    h = table.x_max / table.entries
    return h * h / 8 * 2 / math.sqrt(2 * math.pi) + 1e-6


def test_exp2_polynomials_meet_their_bound_and_are_continuous():
    d = torch.linspace(-30, 0, 300_001, dtype=torch.float64)
    for k, eps in POLY_REL.items():
        rel = (R.exp2_poly(d.float(), k).double() / torch.exp2(d) - 1).abs().max()
        assert rel <= eps, (k, rel)
        at_int = R.exp2_poly(torch.tensor([-3.0 - 1e-7, -3.0]), k)  # P(1) = 2 P(0): no jump at integers
        assert abs(at_int[0] - at_int[1]) < 1e-6
    assert R.exp2_poly(torch.tensor([-126.5, -127.0, -float("inf")]), 2).tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("degree", [1, 2, 3])
def test_poly_softmax_relative_error_is_bounded_by_twice_the_exp_error(degree):
    x = torch.randn(64, 257, generator=torch.Generator().manual_seed(0)) * 6
    p = R.softmax_f32(x, 1.0, None, f"online-poly{degree}").double()
    exact = torch.softmax(x.double(), -1)
    rel = ((p - exact).abs() / exact)[exact > 1e-20].max()
    assert rel <= 2 * POLY_REL[degree] + 1e-5 and rel > POLY_REL[degree] / 20  # bounded, and not exact
    assert torch.allclose(p.sum(-1), torch.ones(64, dtype=torch.float64), atol=1e-5)


def test_masked_reference_and_broadcast_geometry():
    from compress.kernels.layout import mask_view

    x = torch.randn(2, 3, 4, 9)
    mask = torch.zeros(2, 1, 1, 9)
    mask[0, ..., 5:] = float("-inf")
    want = torch.softmax(x * 0.3 + mask, -1)
    assert torch.allclose(R.softmax(x, 0.3, mask), want, atol=1e-6)
    mv = mask_view(mask, x.shape)  # read in place: the head and query axes have stride 0
    assert mv.tensor.data_ptr() == mask.data_ptr() and mv.geometry() == [3, 4, 9, 0, 0, 1]
    full = torch.full((4, 9), float("-inf"))
    assert torch.count_nonzero(R.softmax(x, 1.0, full)) == 0  # fully masked rows: zeros, not NaN


def test_log_codes_follow_the_quantize_pass_conventions():
    p = torch.tensor([1.0, 0.5, 0.3, 2.0**-15, 2.0**-16, 0.0])
    log2 = R.LogCodes.of(SimpleNamespace(mode="log2", bits=4))
    assert log2.encode(p).tolist() == [0, 1, 2, 15, 15, 15]
    assert log2.decode(log2.encode(p)).tolist()[:3] == [1.0, 0.5, 0.25]
    q = SimpleNamespace(mode="sulq", bits=4, eta=torch.tensor(0.01), lo=torch.tensor(math.log2(0.01)),
                        delta=torch.tensor(-math.log2(0.01) / 15))
    sulq = R.LogCodes.of(q)
    x = torch.rand(1000, generator=torch.Generator().manual_seed(1))
    t = (torch.log2(x + 0.01) - sulq.lo) / sulq.step
    want = torch.exp2(sulq.lo + t.round().clamp(0, 15) * sulq.step) - 0.01  # the LogQuantizer's sulq formula
    assert torch.allclose(sulq.decode(sulq.encode(x)), want, atol=1e-6)


@pytest.mark.parametrize("act", ["gelu", "gelu_tanh", "quick_gelu"])
def test_relu_minus_table_is_exact_at_knots_and_within_bound(act):
    table = R.GeluTable(act, 32, 4.0)
    knots = torch.arange(32) / table.inv_step
    for sign in (1, -1):
        y = R.gelu_f32(sign * knots, None, "relu-lut", table.values(), table.inv_step)
        assert torch.allclose(y.double(), R.ACT_FNS[act]((sign * knots).double()), atol=1e-6)
    big = torch.tensor([4.0, 9.0, -9.0])
    assert R.gelu(big, None, "relu-lut", table.values(), table.inv_step).tolist() == [4.0, 9.0, 0.0]
    if act == "gelu":
        assert lut_error(table) <= lut_bound(table)


def _tiny():
    from compress.models import build
    from tests.conftest import tiny_config

    torch.manual_seed(0)
    model = build(tiny_config(layer_scale=False))  # blocks count fully (LayerScale starts at 1e-5)
    with torch.no_grad():  # sharper attention and wider activations than a fresh init, so approximations show
        for blk in model.blocks:
            blk.attn.q.weight.mul_(40)
            blk.mlp.fc1.weight.mul_(60)
    return model.eval()


def test_pass_swaps_drop_in_modules_and_errors():
    model = _tiny()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        exact = model(x)
    rec = apply(model, KernelsConfig(softmax="online-poly2", gelu="relu-lut"))
    assert len(rec["swapped"]) == 4 and rec["lut"]["max_abs_error"] <= lut_bound(R.GeluTable())
    for blk in model.blocks:
        assert isinstance(blk.attn.softmax, Softmax) and isinstance(blk.attn.softmax, KernelSoftmax)
        assert isinstance(blk.mlp.act, nn.GELU) and blk.mlp.act.method == "relu-lut"
    with torch.no_grad():
        approx = model(x)
    diff = (approx - exact).abs().max()
    assert 1e-5 < diff < 0.05 * exact.abs().max()
    # swapping again (e.g. after a wrapper) replaces the kernel modules, and triton = exact math
    apply(model, KernelsConfig(softmax="triton", gelu="triton"))
    assert model.blocks[0].attn.softmax.method == "exact" and model.blocks[0].attn.softmax.backend == "triton"
    with torch.no_grad():
        assert (model(x) - exact).abs().max() < 1e-5
    with pytest.raises(UserError, match="softmax: triton contradicts backend: cuda"):
        apply(model, KernelsConfig(softmax="triton", backend="cuda"))
    model.cfg.act = "quick_gelu"
    with pytest.raises(UserError, match="gelu: tanh would replace this model's quick_gelu"):
        apply(model, KernelsConfig(gelu="tanh"))
    model.blocks[1].attn.softmax = nn.Identity()
    with pytest.raises(UserError, match="blocks.1.attn.softmax is a Identity with no Softmax inside"):
        apply(model, KernelsConfig(softmax="online"))


def test_op_inside_a_wrapper_is_swapped_in_place():
    model = _tiny()

    class Wrapper(nn.Module):  # e.g. a quantizer around the activation
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x)

    model.blocks[0].mlp.act = Wrapper(model.blocks[0].mlp.act)
    rec = apply(model, KernelsConfig(gelu="tanh"))
    assert "blocks.0.mlp.act.inner" in rec["swapped"] and isinstance(model.blocks[0].mlp.act.inner, KernelGELU)


def test_approximations_export_to_plain_onnx_and_checkpoint_reloads(tmp_path):
    from compress.export.onnx_export import export_onnx
    from compress.passes.kernel_swap import KernelsPass
    from compress.pipeline.state import ModelState
    from compress.runtime import OrtRunner

    model = _tiny()
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        exact = model(x)
    cfg = KernelsConfig(softmax="online-poly1", gelu="relu-lut", lut={"entries": 4, "x_max": 4.0})
    rec = apply(model, cfg)
    with torch.no_grad():
        approx = model(x)
    proto = export_onnx(model, tmp_path / "k.onnx")
    ops_used = collections.Counter(n.op_type for n in proto.graph.node)
    assert "Softmax" not in ops_used and "Erf" not in ops_used and ops_used["Floor"] == 4 and ops_used["Relu"] == 2
    ort = OrtRunner(tmp_path / "k.onnx")(x)
    assert (ort - approx).abs().max() < 1e-4  # the artifact computes what PyTorch evaluated...
    assert (ort - exact).abs().max() > 100 * (ort - approx).abs().max()  # ...which is not the exact model
    # the pass record rebuilds the modules before a checkpoint's weights load
    state = ModelState(model, "tiny", [{"name": "kernels", "type": "kernels", "config": cfg.model_dump(), **rec}])
    state.save(tmp_path / "ckpt")
    loaded, _ = load_checkpoint(tmp_path / "ckpt")
    assert isinstance(loaded.model.blocks[1].mlp.act, KernelGELU) and loaded.model.blocks[1].mlp.act.spec.entries == 4
    with torch.no_grad():
        assert torch.equal(loaded.model(x), approx)
    assert KernelsPass.name == "kernels" and json.dumps(rec)  # the record is JSON-able


def test_real_vit_activations_errors_within_bounds(real_images):
    """Logits and GELU inputs of the embedded DINOv2 ViT-S on real (Fashion-MNIST) images."""
    from compress.data import load_subset
    from compress.models import load_model

    model = load_model("dinov2-s14-focus").model.eval()
    ds = load_subset(real_images, "test", 2, 0, model.cfg)
    images = torch.stack([ds[i][0] for i in range(2)])
    logits, acts = capture_inputs(model, images, keep_every=3)
    assert logits.shape[1] == 257 and float(acts.abs().max()) > 6.0  # the real range passes the table's end
    assert softmax_errors(logits, "online")["max_abs"] <= 2e-6
    for k in (1, 2, 3):
        e = softmax_errors(logits, f"online-poly{k}")
        assert e["max_rel_p>1e-3"] <= 2 * POLY_REL[k] + 1e-5, e
    assert gelu_errors(acts, "tanh")["max_abs"] <= 5e-4
    table = R.GeluTable("gelu", 64, 6.0)
    assert gelu_errors(acts, "relu-lut", table)["max_abs"] <= lut_bound(table)
    from compress.models.pooling import token_cosine

    with torch.no_grad():
        exact = model(images)
        apply(model, KernelsConfig(softmax="online-poly2", gelu="relu-lut"))
        approx = model(images)
    assert token_cosine(exact, approx) > 0.999


def test_quantize_pass_on_top_keeps_the_kernels_and_reloads(tmp_path):
    """kernels then quantize (recipes/kernels-int8.yaml): the quantizers calibrate on the approximated ops,
    the kernel modules stay in place, and the checkpoint rebuilds both passes."""
    from compress.pipeline.base import available_passes
    from compress.pipeline.state import ModelState

    model = _tiny()
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    kcfg = KernelsConfig(softmax="online-poly2", gelu="relu-lut")
    history = [{"name": "kernels", "type": "kernels", "config": kcfg.model_dump(), **apply(model, kcfg)}]
    with torch.no_grad():
        approx = model(x)
    qp = available_passes()["quantize"]
    qcfg = qp.Config(weights={"rounding": "nearest"})
    ctx = SimpleNamespace(calibration_batches=lambda count=None, batch_size=None: [x[:4], x[4:]])
    state = ModelState(model, "tiny", history)
    state.history.append({"name": "quantize", "type": "quantize", "config": qcfg.model_dump(),
                          **qp(qcfg).run(state, ctx)})
    assert isinstance(model.blocks[1].attn.softmax, KernelSoftmax) and isinstance(model.blocks[1].mlp.act, KernelGELU)
    with torch.no_grad():
        quant = model(x)
    assert torch.nn.functional.cosine_similarity(quant.flatten(1), approx.flatten(1)).min() > 0.999
    state.save(tmp_path / "ckpt")
    loaded, _ = load_checkpoint(tmp_path / "ckpt")
    with torch.no_grad():
        assert torch.equal(loaded.model(x), quant)
    # the Q/DQ graph (raised to opset 21) of a float graph exported as the recipe does (opset 18) runs in ORT
    # and computes the fake-quant model; at opset 17 the approximation's ReduceMax keeps an axes attribute
    from compress.export.onnx_export import export_onnx
    from compress.passes.quantize.export_qdq import build_qdq
    from compress.models.float_view import float_view
    from compress.pipeline.plan import load_recipe
    from compress.runtime import OrtRunner

    opset = load_recipe(str(Path(__file__).parents[1] / "recipes" / "kernels-int8.yaml"), []).recipe.export.onnx.opset
    assert opset >= 18
    with float_view(model):
        export_onnx(model, tmp_path / "f.onnx", opset=opset)
    proto, _ = build_qdq(tmp_path / "f.onnx", model, "onnxruntime")
    onnx.save(proto, str(tmp_path / "q.onnx"))
    got = OrtRunner(tmp_path / "q.onnx")(x)
    assert torch.nn.functional.cosine_similarity(got.flatten(1), quant.flatten(1)).min() > 0.999
