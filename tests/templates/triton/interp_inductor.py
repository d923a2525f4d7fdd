"""Level B: torch.compile(model, backend="quant_inductor") with Inductor emitting the package's Triton templates
for CPU tensors and running them in Triton's interpreter: the rewrite, the lowering's Triton choices, template
rendering, autotuning, epilogue fusion (bias, activations) and numerics.

Runs in its own process with ``interpreter_shim`` installed (``test_triton_templates.py`` starts it). References:
``primitives.int8_linear_reference`` / ``int4_linear_reference`` (fp32) with the conftest's ``TOLERANCES``.
"""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from conftest import compile_and_run, verify
from interpreter_shim import inductor_config
from torch import nn
from torch._dynamo.utils import counters
from torch._inductor import config
from torch.testing import FileCheck

import inductor_quant as iq
from inductor_quant import primitives as P

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
K = 96


@pytest.fixture(autouse=True)
def _triton_on_cpu():
    with config.patch(inductor_config()):
        yield


def _chosen(scheme: str) -> list[str]:
    prefix = f"{scheme}_kernel_"
    return [k.removeprefix(prefix) for k in counters["inductor_quant"] if k.startswith(prefix)]


def _int8_model(dtype, activation):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(K, 40), activation).to(dtype)
    # the layout a GPU weight has ("auto" holds a CPU weight in the CPU kernels' blocked layout)
    return iq.quantize_(model, iq.Int8WeightOnlyConfig(layout="plain"))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("m", (5, 37), ids=("decode", "prefill"))
def test_int8_template_with_bias_and_relu_fused(m, dtype, monkeypatch):
    monkeypatch.setenv("INDUCTOR_QUANT_INT8_KERNEL", "triton")
    model = _int8_model(dtype, nn.ReLU())
    x = torch.randn(m, K, generator=torch.Generator().manual_seed(1)).to(dtype)
    out, code = compile_and_run(model, x)

    w = model[0].weight
    verify(out, torch.relu(P.int8_linear_reference(x, w.qdata, w.scale, model[0].bias)))
    # one template kernel: the int8 dot, with the scale, bias and ReLU as its epilogue
    FileCheck().check("def triton_tem_fused_int8_weight_linear_relu").check("tl.dot(").check("tl.store").run(
        code
    )
    assert "extern_kernels.inductor_quant_int8" not in code
    assert code.count("async_compile.triton(") == 1
    (chosen,) = _chosen("int8")
    assert chosen.startswith("triton_16x" if m <= 16 else "triton_")
    assert not chosen.startswith("triton_16x") or m <= 16  # prefill takes the prefill configs


def test_int8_autotune_offers_triton_next_to_aten_and_logs_it(caplog):
    """Unforced: aten, dequant_mm and every Triton config are offered and timed; the log names them."""
    model = _int8_model(torch.float16, nn.Identity())
    x = torch.randn(3, K, dtype=torch.float16)
    with caplog.at_level(logging.DEBUG, logger="inductor_quant"):
        out, _ = compile_and_run(model, x)
    w = model[0].weight
    verify(out, P.int8_linear_reference(x, w.qdata, w.scale, model[0].bias))
    log = caplog.text
    assert "offered ['aten', 'dequant_mm', 'triton_16x64x128_w4_s4'" in log
    timings = next(line for line in log.splitlines() if "autotune inductor_quant_int8_weight_linear" in line)
    assert "triton_16x64x128_w4_s4" in timings and "dequant_mm" in timings
    assert counters["inductor_quant"]["int8_lowered"] == 1


class HandWrittenInt8(nn.Module):
    """gpt-fast's line: ``torch._weight_int8pack_mm(x, w, scale)``, then a residual add."""

    def __init__(self, q, s):
        super().__init__()
        self.register_buffer("q", q)
        self.register_buffer("s", s)

    def forward(self, x):
        return torch._weight_int8pack_mm(x, self.q, self.s) + x[:, : self.q.shape[0]]


def test_weight_int8pack_mm_is_served_by_the_template(monkeypatch):
    monkeypatch.setenv("INDUCTOR_QUANT_INT8_KERNEL", "triton")
    q, s = P.quantize_int8_per_channel(torch.randn(48, K))
    x = torch.randn(4, K, dtype=torch.bfloat16)
    model = HandWrittenInt8(q, s.to(torch.bfloat16))
    out, code = compile_and_run(model, x)
    verify(out, P.int8_linear_reference(x, q, s.to(torch.bfloat16)) + x[:, :48])
    assert counters["inductor_quant"]["int8_rewrite"] == 1
    FileCheck().check("def triton_tem_fused").check("tl.dot(").run(code)
    assert "_weight_int8pack_mm" not in code


@pytest.mark.parametrize(
    ("group_size", "dtype"),
    [(32, torch.bfloat16), (64, torch.float16), (128, torch.float32), (256, torch.bfloat16)],
    ids=str,
)
def test_int4_template_with_bias_and_silu_fused(group_size, dtype, monkeypatch):
    monkeypatch.setenv("INDUCTOR_QUANT_INT4_KERNEL", "triton")
    torch.manual_seed(0)
    k = 2 * max(group_size, 128)
    model = nn.Sequential(nn.Linear(k, 40), nn.SiLU()).to(dtype)
    iq.quantize_(model, iq.Int4WeightOnlyConfig(group_size=group_size, layout="plain"))
    x = torch.randn(3, k, generator=torch.Generator().manual_seed(2)).to(dtype)
    out, code = compile_and_run(model, x)

    w = model[0].weight
    ref = P.int4_linear_reference(x, w.qdata, w.scale, w.zero_point, group_size, model[0].bias, torch.float32)
    verify(out, F.silu(ref).to(dtype))
    FileCheck().check("def triton_tem_fused_int4_weight_linear").check("tl.dot(").check("tl.store").run(code)
    assert code.count("async_compile.triton(") == 1
    (chosen,) = _chosen("int4")
    assert chosen.startswith("triton_16x")


def test_int8_template_with_dynamic_m_and_gelu(monkeypatch):
    """Dynamic M: one compile (prefill configs, M a kernel argument) serves every row count; GELU (libdevice erf)
    fuses into the template's epilogue."""
    monkeypatch.setenv("INDUCTOR_QUANT_INT8_KERNEL", "triton")
    model = _int8_model(torch.float32, nn.GELU())
    compiled = torch.compile(model, backend="quant_inductor", dynamic=True)
    w = model[0].weight
    with torch.no_grad():
        for rows in (3, 21, 50):
            x = torch.randn(rows, K, generator=torch.Generator().manual_seed(rows))
            verify(compiled(x), F.gelu(P.int8_linear_reference(x, w.qdata, w.scale, model[0].bias)))
    assert counters["inductor_quant"]["int8_lowered"] == 1
    (chosen,) = _chosen("int8")
    assert not chosen.startswith("triton_16x")  # a symbolic M takes the prefill configs


@pytest.mark.parametrize(
    ("m", "dtype", "weight_granularity"),
    [(1, torch.bfloat16, "per_tensor"), (5, torch.float32, "per_channel"), (40, torch.float16, "per_tensor")],
    ids=str,
)
def test_ternary_template_for_bitlinear_with_relu_fused(m, dtype, weight_granularity, monkeypatch):
    """A deployed BitLinear: Inductor's activation-quantization kernel in front, then the ternary template with the
    weight scale, bias and ReLU in its epilogue; equal to the eager layer (same integer sums, same fp32 order)."""
    from inductor_quant import BitQuantConfig
    from inductor_quant.nn import BitLinear

    monkeypatch.setenv("INDUCTOR_QUANT_TERNARY_KERNEL", "triton")
    torch.manual_seed(0)
    config = BitQuantConfig(weight_granularity=weight_granularity)
    model = nn.Sequential(BitLinear(300, 37, quant_config=config), nn.ReLU()).to(dtype).eval()
    model[0].deploy()
    x = torch.randn(m, 300, generator=torch.Generator().manual_seed(m)).to(dtype)
    with torch.no_grad():
        expected = model(x)
    out, code = compile_and_run(model, x)
    verify(out, expected)
    FileCheck().check("def triton_tem_fused").check("tl.dot(a, t, out_dtype=tl.int32)").check("tl.store").run(
        code
    )
    assert code.count("async_compile.triton(") == 2  # activation quantization, then the template
    (chosen,) = _chosen("ternary")
    # a decode config (16-row tiles) for a small static M, one of the prefill configs (timed: any may win) otherwise
    assert chosen.startswith("triton_16x") == (m <= 16)


@pytest.mark.parametrize(("weight_bits", "block_size"), [(8, -1), (4, 32), (4, -1)])
def test_quantized_linear_a16_cells_reach_the_templates(weight_bits, block_size, monkeypatch):
    """``QuantizedLinear`` W8A16 / W4A16 (the quantized_matmul op): traced to the int8 / int4 ops, then served by
    their Triton templates, SiLU fused; equal to the eager layer within bf16 tolerance."""
    from inductor_quant.nn import swap_quantized_linear

    scheme = "int8" if weight_bits == 8 else "int4"
    monkeypatch.setenv(f"INDUCTOR_QUANT_{scheme.upper()}_KERNEL", "triton")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 48), nn.SiLU()).to(torch.bfloat16)
    swap_quantized_linear(model, weight_bits=weight_bits, block_size=block_size)
    x = torch.randn(3, 128, dtype=torch.bfloat16)
    with torch.no_grad():
        expected = model(x)
    out, code = compile_and_run(model, x)
    verify(out, expected)
    # one template kernel with the SiLU in it (a symmetric int4 cell also fills its zero point in a kernel in front)
    assert (
        code.count("def triton_tem_fused") == 1 and "libdevice.exp(" in code.split("def triton_tem_fused")[1]
    )
    (chosen,) = _chosen(scheme)
    assert chosen.startswith("triton_16x")


# Views of a [..., 2K] activation made inside the graph: the last position (HF's hidden[:, -1:, :] before lm_head, at
# a storage offset), middle rows, rows of a wider buffer; the templates read them through Inductor's offset-adjusted
# pointers and strides.
_VIEWS = (
    ((1, 9, K), lambda h: h[:, -1:, :K]),
    ((1, 9, K), lambda h: h[:, 3:5, K:]),
    ((5, K), lambda h: h[:, K:]),
)


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_templates_read_views_made_in_the_graph(scheme, monkeypatch):
    monkeypatch.setenv(f"INDUCTOR_QUANT_{scheme.upper()}_KERNEL", "triton")
    torch.manual_seed(0)
    pre = nn.Linear(K, 2 * K).to(torch.float16)
    lin = nn.Linear(K, 40).to(torch.float16)
    config = (
        iq.Int8WeightOnlyConfig(layout="plain")
        if scheme == "int8"
        else iq.Int4WeightOnlyConfig(group_size=32, layout="plain")
    )
    iq.quantize_(lin, config)
    bases = [
        torch.randn(shape, generator=torch.Generator().manual_seed(2)).to(torch.float16)
        for shape, _ in _VIEWS
    ]

    def model(*bs):
        return [lin(view(pre(b))) for b, (_, view) in zip(bs, _VIEWS, strict=True)]

    outs, _ = compile_and_run(model, *bases)
    w = lin.weight
    for b, (_, view), out in zip(bases, _VIEWS, outs, strict=True):
        x = view(pre(b)).reshape(-1, K)
        if scheme == "int8":
            expected = P.int8_linear_reference(x, w.qdata, w.scale, lin.bias)
        else:
            expected = P.int4_linear_reference(x, w.qdata, w.scale, w.zero_point, 32, lin.bias)
        verify(out.reshape(-1, 40), expected)
    assert all(c.startswith("triton_") for c in _chosen(scheme)), _chosen(scheme)
    # the views were read in place, through their offsets and strides (no copy)
    assert counters["inductor_quant"]["layout_copies"] == 0
