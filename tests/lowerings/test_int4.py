"""Lowering of int4_weight_linear (and of aten's int4 matmul on constants): every kernel, every group size and
activation dtype, odd N, prefill and unsupported K; epilogue fusion; tuning once."""

from __future__ import annotations

import logging
import re

import pytest
import torch
import torch.nn.functional as F
from conftest import compile_and_run, verify
from torch import nn
from torch._dynamo.utils import counters
from torch.testing import FileCheck

import inductor_quant as iq
from inductor_quant.primitives import INT4_GROUP_SIZES, int4_linear_reference
from inductor_quant.settings import INT4_KERNEL_ENV
from inductor_quant.templates.cpp.int4_gemv import amx_min_m

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


class EveryGroup(nn.Module):
    """One int4 linear per group size, on the same input: N = 65 (a partial block of rows), bias on two. The weights
    are held plain (``[N, K / 2]``: the row-major kernels, and the prepack pass for frozen graphs) unless ``layout``
    says otherwise (``"auto"``: blocked, as ``quantize_`` holds CPU weights by default)."""

    def __init__(self, k=512, n=65, dtype=torch.bfloat16, zero_point_dtype=torch.uint8, layout="plain"):
        super().__init__()
        torch.manual_seed(0)
        self.linears = nn.ModuleList(
            iq.quantize_(
                nn.Linear(k, n, bias=i % 2 == 0).to(dtype),
                iq.Int4WeightOnlyConfig(group_size=g, zero_point_dtype=zero_point_dtype, layout=layout),
            )
            for i, g in enumerate(INT4_GROUP_SIZES)
        )

    def forward(self, x):
        return torch.cat([lin(x) for lin in self.linears], dim=-1)

    def reference(self, x, weight_dtype=torch.float32):
        outs = []
        for lin in self.linears:
            w = lin.weight
            outs.append(
                int4_linear_reference(
                    x,
                    w.plain_qdata(),
                    w.scale,
                    w.zero_point,
                    w.group_size,
                    lin.bias,
                    weight_dtype=weight_dtype,
                )
            )
        return torch.cat(outs, dim=-1)


# (how the weight reaches the kernel, what the generated code shows, compile under grad?)
PATHS = [
    ("frozen", "weight=packed", False),  # frozen decode: weight prepacked at compile time
    ("input", "weight=row-major", True),  # weights are graph inputs: the plain [N, K / 2] storage
]


@pytest.mark.parametrize("path, marker, grad", PATHS, ids=[p[0] for p in PATHS])
@pytest.mark.parametrize("m", [1, 5])
@pytest.mark.parametrize("dtype", DTYPES)
def test_gemv_every_group_size_matches_reference(path, marker, grad, m, dtype, monkeypatch):
    # reference: fp32 math on the exact int4 values; the kernel multiplies exact nibbles, sums in fp32, so only
    # the output rounding differs (bf16 / fp16), whatever the activation dtype
    monkeypatch.setenv(INT4_KERNEL_ENV, "int4_gemv")
    model = EveryGroup(dtype=dtype)
    x = torch.randn(m, 512, dtype=dtype)
    out, code = compile_and_run(model, x, grad=grad)
    assert counters["inductor_quant"]["int4_lowered"] == 4
    assert code.count(f"inductor_quant int4_gemv: M={m} N=65 K=512") == 4
    FileCheck().check(marker).run(code)
    if path == "frozen":
        assert counters["inductor_quant"]["int4_prepacked"] == 4
        assert "dtype=torch.bfloat16" not in code.split("def call")[0] or dtype == torch.bfloat16
    verify(out, model.reference(x))


def _gemv_sources(code: str):
    """(group size, source) of each int4 GEMV kernel in ``code``."""
    for part in code.split("// inductor_quant int4_gemv: ")[1:]:
        yield int(re.match(r".*? group=(\d+)", part).group(1)), part.split('extern "C"')[0]


@pytest.mark.parametrize(
    ("m", "zero_point_dtype", "grad"),
    [(4, torch.uint8, False), (17, torch.float16, False), (32, torch.uint8, True)],
    ids=["4", "17-fp16-zero-points", "32-input"],
)
def test_bf16_decode_gemv_per_cpu_isa_matches_reference(m, zero_point_dtype, grad, cpu_isa, monkeypatch):
    """bf16 decode from ``amx_min_m(group)`` rows on AMX tiles where the CPU has them (32 weight rows of 128 + q as A tiles,
    X permuted into B tiles of 16 rows, each group's tile sums times its scale), the AVX512 kernel where forced:
    every group size, N = 65 (a partial block of 32 rows and of 4), packed and row-major weights, integer and
    fractional zero points. Reference: fp32 math on the exact int4 values."""
    monkeypatch.setenv(INT4_KERNEL_ENV, "int4_gemv")
    model = EveryGroup(zero_point_dtype=zero_point_dtype)
    x = torch.randn(m, 512, dtype=torch.bfloat16, generator=torch.Generator().manual_seed(m))
    out, code = compile_and_run(model, x, grad=grad)
    assert code.count(f"inductor_quant int4_gemv: M={m} N=65 K=512") == 4
    amx = {(g, "#define IQ4_PATH_AMX" in src) for g, src in _gemv_sources(code)}
    assert amx == {(g, cpu_isa == "amx" and m >= amx_min_m(g)) for g in INT4_GROUP_SIZES}
    verify(out, model.reference(x))


@pytest.mark.parametrize("path, marker, grad", PATHS, ids=[p[0] for p in PATHS])
@pytest.mark.parametrize("zero_point_dtype", [torch.float16, torch.bfloat16])
def test_gemv_reads_float_zero_points(path, marker, grad, zero_point_dtype, monkeypatch):
    """Fractional zero points (each group on its own range) in their stored dtype, through the same GEMV."""
    monkeypatch.setenv(INT4_KERNEL_ENV, "int4_gemv")
    model = EveryGroup(zero_point_dtype=zero_point_dtype)
    assert model.linears[0].weight.zero_point.dtype == zero_point_dtype
    x = torch.randn(1, 512, dtype=torch.bfloat16)
    out, code = compile_and_run(model, x, grad=grad)
    assert counters["inductor_quant"]["int4_kernel_int4_gemv" + ("_packed" if path == "frozen" else "")] == 4
    FileCheck().check(marker).run(code)
    verify(out, model.reference(x))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_prefill_widens_chunks_and_keeps_int4(dtype):
    model = EveryGroup(dtype=dtype)
    x = torch.randn(40, 512, dtype=dtype)
    out, code = compile_and_run(model, x)
    assert counters["inductor_quant"]["int4_kernel_dequant_mm"] == 4
    assert counters["inductor_quant"]["int4_prepacked"] == 0
    FileCheck().check("extern_kernels.inductor_quant_int4_dequant_mm").run(code)
    # the chunks are widened to x's dtype before the dense GEMM: reference with the weight rounded to it
    verify(out, model.reference(x, weight_dtype=dtype), precision=dtype)


@pytest.mark.parametrize("grad", [False, True], ids=["frozen", "input"])
def test_blocked_weights_take_the_packed_kernels_at_every_m(grad, cpu_isa):
    """quantize_'s default on the CPU (K % 128 == 0): the weights are held blocked, so no graph packs a copy; decode
    takes the packed GEMV on the module's own bytes (frozen constants or graph inputs alike), prefill and a dynamic M
    the widening GEMM on the same layout. Reference: fp32 math on the exact values (prefill: the weight rounded to
    bf16, as the GEMM does), per matrix ISA of the CPU (AMX tiles for the bf16 prefill where the CPU has them)."""
    model = EveryGroup(layout="auto")
    assert {lin.weight.layout for lin in model.linears} == {"blocked"}
    for m in (1, 40):
        x = torch.randn(m, 512, dtype=torch.bfloat16)
        out, code = compile_and_run(model, x, grad=grad)
        verify(out, model.reference(x, weight_dtype=torch.float32 if m == 1 else torch.bfloat16))
    assert counters["inductor_quant"]["int4_prepacked"] == 0
    assert counters["inductor_quant"]["int4_kernel_int4_gemv_packed"] == 4
    assert counters["inductor_quant"]["int4_kernel_dequant_mm_packed"] == 4
    assert counters["inductor_quant"][f"int4_gemm_{cpu_isa}"] == 4
    FileCheck().check("extern_kernels.inductor_quant_int4_packed_gemm").run(code)
    compiled = torch.compile(model, backend="quant_inductor", dynamic=True)
    for m in (7, 40):
        x = torch.randn(m, 512, dtype=torch.bfloat16)
        with torch.set_grad_enabled(grad):
            verify(compiled(x), model.reference(x, weight_dtype=torch.bfloat16))


class OddK(nn.Module):
    """int4 linears whose K is not a multiple of the GEMV's 128-value step: K = 320 at g32 and g64, and SmolLM2's
    K = 576 at g64 (its default-config group); N = 24 and 65."""

    def __init__(self, dtype):
        super().__init__()
        torch.manual_seed(0)
        self.linears = nn.ModuleList(
            iq.quantize_(nn.Linear(k, n, bias=g == 64).to(dtype), iq.Int4WeightOnlyConfig(group_size=g))
            for k, n, g in ((320, 24, 32), (320, 65, 64), (576, 24, 64))
        )

    def forward(self, x320, x576):
        a, b, c = self.linears
        return a(x320), b(x320), c(x576)

    def reference(self, x320, x576):
        return [
            int4_linear_reference(
                x,
                lin.weight.plain_qdata(),
                lin.weight.scale,
                lin.weight.zero_point,
                lin.weight.group_size,
                lin.bias,
            )
            for lin, x in zip(self.linears, (x320, x320, x576), strict=True)
        ]


@pytest.mark.parametrize("m", [1, 5])
@pytest.mark.parametrize("dtype", DTYPES)
def test_k_not_multiple_of_128_is_packed_with_a_zero_padded_tail(m, dtype):
    """Frozen: the packed weight is zero-padded to K = 384 / 640 (zero scales and zero points for the padded
    groups) and the GEMV reads the padding against zero activations; reference: fp32 math on the exact values."""
    model = OddK(dtype)
    xs = (torch.randn(m, 320, dtype=dtype), torch.randn(m, 576, dtype=dtype))
    outs, code = compile_and_run(model, *xs)
    assert counters["inductor_quant"]["int4_prepacked"] == 3
    assert counters["inductor_quant"]["int4_kernel_int4_gemv_packed"] == 3
    assert code.count(f"inductor_quant int4_gemv: M={m} N=24 K=320") == 1
    assert code.count(f"inductor_quant int4_gemv: M={m} N=24 K=576") == 1
    for out, expected in zip(outs, model.reference(*xs), strict=True):
        verify(out, expected)


def test_k_not_multiple_of_128_on_graph_input_weights_takes_dequant_mm():
    """The row-major (graph-input) weight is not padded: the GEMV is not offered there, the prefill kernel serves."""
    model = OddK(torch.bfloat16)
    xs = (torch.randn(2, 320, dtype=torch.bfloat16), torch.randn(2, 576, dtype=torch.bfloat16))
    outs, _ = compile_and_run(model, *xs, options={"inductor_quant.freezing": False})
    assert counters["inductor_quant"]["int4_kernel_dequant_mm"] == 3
    for out, expected in zip(outs, model.reference(*xs), strict=True):
        verify(out, expected)


def test_unfrozen_decode_autotunes_and_logs_timings(caplog):
    model = EveryGroup()
    x = torch.randn(2, 512, dtype=torch.bfloat16)
    with caplog.at_level(logging.DEBUG, logger="inductor_quant"):
        out, _ = compile_and_run(model, x, grad=True)
    assert "offered ['dequant_mm', 'int4_gemv']" in caplog.text
    assert "autotune inductor_quant_int4_weight_linear" in caplog.text and " us" in caplog.text
    verify(out, model.reference(x))


def test_identical_layers_are_tuned_once():
    torch.manual_seed(0)
    layers = [
        iq.quantize_(
            nn.Linear(256, 256, bias=False).to(torch.bfloat16),
            iq.Int4WeightOnlyConfig(group_size=64, layout="plain"),
        )
        for _ in range(4)
    ]
    x = torch.randn(4, 256, dtype=torch.bfloat16)
    out, _ = compile_and_run(nn.Sequential(*layers), x, grad=True)
    assert counters["inductor_quant"]["int4_lowered"] == 4
    assert counters["inductor_quant"]["int4_tuning_reused"] == 3
    with torch.no_grad():
        verify(out, nn.Sequential(*layers)(x), precision=torch.bfloat16)


def test_activation_after_gemv_is_fused_into_the_template():
    lin = iq.quantize_(nn.Linear(256, 64).to(torch.bfloat16), iq.Int4WeightOnlyConfig(group_size=32))
    x = torch.randn(2, 256, dtype=torch.bfloat16)
    out, code = compile_and_run(nn.Sequential(lin, nn.SiLU()), x)
    assert counters["inductor"]["cpp_epilogue_fusion_counter"] >= 1
    FileCheck().check("inductor_quant int4_gemv").check("fused epilogue nodes").check("exp").run(code)
    w = lin.weight
    verify(out, F.silu(int4_linear_reference(x, w.plain_qdata(), w.scale, w.zero_point, 32, lin.bias)))


class AtenInt4(nn.Module):
    """gpt-fast / torchao style: aten's CPU int4 packing and matmul, written by hand."""

    def __init__(self, n, k, group_size, dtype):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        q = torch.randint(0, 16, (n, k), dtype=torch.int32, generator=g)
        self.register_buffer("w", torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1))
        scale = torch.rand(k // group_size, n, generator=g) / 20 + 1e-3
        zero = torch.randn(k // group_size, n, generator=g) / 20
        self.register_buffer("sz", torch.stack([scale, zero], dim=-1).to(dtype))
        self.group_size = group_size

    def forward(self, x):
        return torch.ops.aten._weight_int4pack_mm_for_cpu(x, self.w, self.group_size, self.sz)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n, group_size", [(80, 32), (64, 256)])
def test_aten_int4_matmul_on_constants_is_taken_over(dtype, n, group_size):
    # N = 80: a full 64-row block of aten's layout plus a 16-row tail block
    model = AtenInt4(n, 512, group_size, dtype)
    x = torch.randn(3, 512, dtype=dtype)
    out, code = compile_and_run(model, x)
    assert counters["inductor_quant"]["int4_prepacked_from_aten"] == 1
    FileCheck().check("weight=packed").check_not("aten._weight_int4pack_mm_for_cpu").run(code)
    with torch.no_grad():
        verify(out, model(x))  # reference: aten's own kernel, eager


def test_aten_int4_matmul_on_graph_inputs_stays_on_aten():
    model = AtenInt4(64, 256, 64, torch.bfloat16)
    x = torch.randn(3, 256, dtype=torch.bfloat16)
    out, code = compile_and_run(model, x, options={"inductor_quant.freezing": False})
    assert counters["inductor_quant"]["int4_prepacked_from_aten"] == 0
    assert "aten._weight_int4pack_mm_for_cpu" in code
    with torch.no_grad():
        verify(out, model(x))


@pytest.mark.parametrize("grad", [False, True], ids=["frozen", "unfrozen"])
def test_dynamic_shapes_compile_and_match(grad):
    """With a symbolic M nothing can be specialised: the prefill kernel serves every M, correctly. (Dynamo still
    specialises M = 1, whose static graph may take the decode kernel: exact nibbles, so the same reference holds.)"""
    model = EveryGroup()
    compiled = torch.compile(model, backend="quant_inductor", dynamic=True)
    for m in (1, 7, 40):
        x = torch.randn(m, 512, dtype=torch.bfloat16)
        with torch.set_grad_enabled(grad):
            out = compiled(x)
        verify(out, model.reference(x, weight_dtype=torch.bfloat16))
    assert counters["inductor_quant"]["int4_kernel_dequant_mm"] >= 4


@pytest.mark.parametrize("grad", [False, True], ids=["frozen", "input"])
def test_fewer_rows_than_a_block(grad, monkeypatch):
    # N = 3 < the template's 4-row block: a padded packed block, or a clamped last row of the plain weight
    monkeypatch.setenv(INT4_KERNEL_ENV, "int4_gemv")
    lin = iq.quantize_(nn.Linear(128, 3).to(torch.bfloat16), iq.Int4WeightOnlyConfig(group_size=128))
    x = torch.randn(2, 128, dtype=torch.bfloat16)
    out, code = compile_and_run(lin, x, grad=grad)
    assert "inductor_quant int4_gemv: M=2 N=3 K=128" in code
    w = lin.weight
    verify(out, int4_linear_reference(x, w.plain_qdata(), w.scale, w.zero_point, 128, lin.bias))


def _aten_int4_call(group_size):
    def f(x, w, sz):
        return torch.ops.aten._weight_int4pack_mm_for_cpu(x, w, group_size, sz)

    return f


def test_aten_int4_matmul_with_a_transposed_scales_view_is_made_right():
    # aten's kernel reads a non-contiguous scales_and_zeros as if contiguous: eagerly and under stock Inductor the
    # result below is wrong by ~10; quant_inductor makes the operand contiguous first (reference: the contiguous call)
    n, k, g = 64, 256, 64
    q = torch.randint(0, 16, (n, k), dtype=torch.int32, generator=torch.Generator().manual_seed(0))
    w = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
    sz = (torch.rand(n, k // g, 2, dtype=torch.bfloat16) / 10).transpose(0, 1)
    x = torch.randn(3, k, dtype=torch.bfloat16)
    f = _aten_int4_call(g)
    out = torch.compile(f, backend="quant_inductor")(x, w, sz)
    assert counters["inductor_quant"]["int4_aten_made_contiguous"] == 1
    verify(out, f(x, w, sz.contiguous()))


def test_aten_int4_matmul_with_too_few_groups_is_an_error_naming_the_shape():
    # aten would read past the end of scales_and_zeros (values ~1e38): refused at compile time instead
    n, k, g = 64, 256, 64
    w = torch.ops.aten._convert_weight_to_int4pack_for_cpu(torch.zeros(n, k, dtype=torch.int32), 1)
    sz = torch.rand(2, n, 2, dtype=torch.bfloat16)
    x = torch.randn(3, k, dtype=torch.bfloat16)
    with pytest.raises(Exception, match=r"scales_and_zeros has shape \(2, 64, 2\), expected .* \[4, 64, 2\]"):
        torch.compile(_aten_int4_call(g), backend="quant_inductor")(x, w, sz)
