"""The dequantize -> matmul rewrite: every hand-written form, every activation / scale dtype, 2-D and 3-D."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from conftest import compile_and_run, constant_bytes, int8_weight, verify
from torch import nn
from torch._dynamo.utils import counters
from torch.testing import FileCheck

import inductor_quant as iq
from inductor_quant.primitives import int8_linear_reference

K = 64


def _lin(x, w):
    return F.linear(x, w.to(x.dtype))


# form name -> (rewrite counter it must bump, forward(x, w, s, b)); each line is the source the pattern stands for
FORMS = {
    "scale_after": ("scale_after", lambda x, w, s, b: F.linear(x, w.to(x.dtype)) * s),
    "scale_after_bias": ("scale_after_bias", lambda x, w, s, b: F.linear(x, w.to(x.dtype)) * s + b),
    "scale_before": ("scale_before", lambda x, w, s, b: F.linear(x, w.to(x.dtype) * s.to(x.dtype)[:, None])),
    "scale_before_bias": (
        "scale_before_bias",
        lambda x, w, s, b: F.linear(x, w.to(x.dtype) * s.to(x.dtype)[:, None], b),
    ),
    "matmul_operator": ("scale_after", lambda x, w, s, b: (x @ w.to(x.dtype).t()) * s),
    "torch_matmul": ("scale_after", lambda x, w, s, b: torch.matmul(x, w.to(x.dtype).t()) * s),
    "addmm": (
        "scale_before_bias",
        lambda x, w, s, b: torch.addmm(
            b, x.reshape(-1, K), (w.to(x.dtype) * s.to(x.dtype)[:, None]).t()
        ).reshape(*x.shape[:-1], -1),
    ),
    "weight_int8pack_mm": (
        "weight_int8pack_mm",
        lambda x, w, s, b: torch._weight_int8pack_mm(x.reshape(-1, K), w, s.to(x.dtype)).reshape(
            *x.shape[:-1], -1
        ),
    ),
}


class AllForms(nn.Module):
    """One int8 linear per form, each with its own output width so each gets its own kernel."""

    def __init__(self, act_dtype, scale_dtype):
        super().__init__()
        self.names = list(FORMS)
        for i, name in enumerate(self.names):
            n = 16 + 8 * i
            _, q, s = int8_weight(n, K, seed=i)
            self.register_buffer(f"{name}_w", q)
            self.register_buffer(f"{name}_s", s.to(scale_dtype))
            self.register_buffer(f"{name}_b", torch.randn(n).to(act_dtype))

    def forward(self, x):
        return [FORMS[name][1](x, *self.parts(name)) for name in self.names]

    def parts(self, name):
        return getattr(self, f"{name}_w"), getattr(self, f"{name}_s"), getattr(self, f"{name}_b")


def _expected(model, name, x):
    """fp32 reference of one form, in the dtype the form's source produces (fp32 scales promote)."""
    q, s, b = model.parts(name)
    out = FORMS[name][1](x, q, s, b)
    x2 = x.reshape(-1, K)
    scale = (
        s.to(x.dtype) if name in ("scale_before", "scale_before_bias", "addmm", "weight_int8pack_mm") else s
    )
    bias = b if FORMS[name][0].endswith("bias") else None
    return int8_linear_reference(x2, q, scale, bias, out.dtype).reshape(out.shape)


@pytest.mark.parametrize("rank", [2, 3])
@pytest.mark.parametrize("act_dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("scale_dtype", [torch.float32, torch.bfloat16])
def test_every_form_is_rewritten_and_keeps_int8_weights(rank, act_dtype, scale_dtype):
    model = AllForms(act_dtype, scale_dtype)
    x = torch.randn(*([2, 3] if rank == 3 else [5]), K, dtype=act_dtype)
    outs, code = compile_and_run(model, x)

    want: dict[str, int] = {}
    for counter, _ in FORMS.values():
        want[counter] = want.get(counter, 0) + 1
    got = {
        k.removeprefix("int8_rewrite_"): v
        for k, v in counters["inductor_quant"].items()
        if k.startswith("int8_rewrite_")
    }
    assert got == want
    # every linear runs a GEMV kernel on a prepacked int8 weight (the linears of one input fused into one GEMV
    # where their bias and dtypes match: prepack's sibling fusion); no dense matmul is left
    gemvs = len(FORMS) - counters["inductor_quant"]["linears_fused"]
    assert counters["inductor_quant"]["int8_prepacked"] == gemvs
    FileCheck().check_count("inductor_quant int8_gemv", gemvs, exactly=True).run(code)
    FileCheck().check_count("weight=packed", gemvs, exactly=True).run(code)
    for dense in ("extern_kernels.mm", "extern_kernels.addmm", "mkldnn", "aten.mm"):
        assert dense not in code
    # the compiled graph holds int8 weights, and floats only for scales and biases (never a folded float weight)
    held = constant_bytes(code)
    n_total = sum(16 + 8 * i for i in range(len(FORMS)))
    assert held["int8"] >= n_total * K
    float_bytes = sum(v for dt, v in held.items() if dt != "int8")
    assert float_bytes <= 2 * n_total * 4, held

    for name, out in zip(model.names, outs, strict=True):
        verify(out, _expected(model, name, x), precision=act_dtype)


def test_unfrozen_graph_still_runs_int8_kernels():
    """With grad enabled there is no freezing: weights stay graph inputs and the row-major GEMV reads them."""
    model = AllForms(torch.bfloat16, torch.bfloat16)
    x = torch.randn(5, K, dtype=torch.bfloat16)
    outs, code = compile_and_run(model, x, grad=True, options={})
    assert counters["inductor_quant"]["int8_rewrite"] == len(FORMS)
    assert counters["inductor_quant"]["int8_prepacked"] == 0
    assert "extern_kernels.mm" not in code and "_frozen_param" not in code
    for name, out in zip(model.names, outs, strict=True):
        verify(out, _expected(model, name, x), precision=torch.bfloat16)


def test_freezing_option_off_keeps_weights_as_inputs():
    model = AllForms(torch.bfloat16, torch.float32)
    x = torch.randn(3, K, dtype=torch.bfloat16)
    _, code = compile_and_run(model, x, options={"inductor_quant.freezing": False})
    assert "_frozen_param" not in code and counters["inductor_quant"]["int8_rewrite"] == len(FORMS)


@pytest.mark.parametrize("act_dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_subclass_graph_lowers_to_the_int8_op(act_dtype):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(K, 96), nn.SiLU(), nn.Linear(96, 40, bias=False)).to(act_dtype)
    iq.quantize_(model, iq.Int8WeightOnlyConfig())
    x = torch.randn(2, 3, K, dtype=act_dtype)
    with torch.no_grad():
        eager = model(x)
    out, code = compile_and_run(model, x)
    assert counters["inductor_quant"]["int8_lowered"] == 2
    FileCheck().check_count("inductor_quant int8_gemv", 2, exactly=True).run(code)
    assert "extern_kernels.mm" not in code
    verify(out, eager)


def test_bias_before_scale_is_left_alone_and_logged(caplog):
    """`linear(x, w.to(dt), b) * s` scales the bias too: not this op's contract, so it is not rewritten."""

    class BiasThenScale(nn.Module):
        def __init__(self):
            super().__init__()
            _, q, s = int8_weight(32, K)
            self.register_buffer("w", q)
            self.register_buffer("s", s.to(torch.bfloat16))
            self.register_buffer("b", torch.randn(32, dtype=torch.bfloat16))

        def forward(self, x):
            return F.linear(x, self.w.to(x.dtype), self.b) * self.s

    model = BiasThenScale()
    x = torch.randn(4, K, dtype=torch.bfloat16)
    with caplog.at_level(logging.INFO, logger="inductor_quant"):
        out, _ = compile_and_run(model, x)
    assert counters["inductor_quant"]["int8_rewrite"] == 0
    assert "bias is added before the scale" in caplog.text
    with torch.no_grad():
        verify(out, model(x))


def test_rewrite_is_logged_per_linear(caplog):
    model = AllForms(torch.bfloat16, torch.bfloat16)
    with caplog.at_level(logging.INFO, logger="inductor_quant"):
        compile_and_run(model, torch.randn(2, K, dtype=torch.bfloat16))
    assert caplog.text.count("-> inductor_quant.int8_weight_linear") == len(FORMS)
    # after sibling fusion (logged too: one line per fused set) one packed GEMV per remaining linear
    fused = counters["inductor_quant"]["linears_fused"]
    assert fused > 0 and "linears reading" in caplog.text
    assert caplog.text.count("-> blocked decode layout") == len(FORMS) - fused
    assert caplog.text.count("chose int8_gemv_packed") == len(FORMS) - fused


def test_scale_and_bias_stored_as_rows_are_flattened():
    """A `[1, N]` scale and bias (as some checkpoints store them) broadcast like `[N]` ones."""

    class RowShaped(nn.Module):
        def __init__(self):
            super().__init__()
            _, q, s = int8_weight(48, K)
            self.register_buffer("w", q)
            self.register_buffer("s", s.to(torch.bfloat16)[None, :])
            self.register_buffer("b", torch.randn(1, 48, dtype=torch.bfloat16))

        def forward(self, x):
            return F.linear(x, self.w.to(x.dtype)) * self.s + self.b

    model = RowShaped()
    for x in (torch.randn(1, K, dtype=torch.bfloat16), torch.randn(2, 3, K, dtype=torch.bfloat16)):
        torch._dynamo.reset()
        counters.clear()
        out, _ = compile_and_run(model, x)
        assert counters["inductor_quant"]["int8_rewrite_scale_after_bias"] == 1
        expected = int8_linear_reference(x.reshape(-1, K), model.w, model.s[0], model.b[0]).reshape(out.shape)
        verify(out, expected)
