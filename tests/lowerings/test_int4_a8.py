"""Lowering of the W4A8 option (``int4_a8_mm``: int4 groupwise weights, int8 per-token activations): the
activation quantization fused in front, the int4_gemv template's VNNI path on frozen and graph-input weights, every
group size and activation dtype, prefill, unsupported K, epilogue fusion, logs."""

from __future__ import annotations

import logging
import re

import pytest
import torch
import torch.nn.functional as F
from conftest import compile_and_run, constant_bytes, verify
from torch import nn
from torch._dynamo.utils import counters
from torch.testing import FileCheck

import inductor_quant as iq
from inductor_quant.primitives import INT4_GROUP_SIZES, int4_a8_linear_reference
from inductor_quant.settings import INT4_KERNEL_ENV

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def a8_linear(k, n, group_size, dtype=torch.bfloat16, bias=True, seed=0):
    torch.manual_seed(seed)
    lin = nn.Linear(k, n, bias=bias).to(dtype)
    return iq.quantize_(lin, iq.Int8DynamicActivationInt4WeightConfig(group_size=group_size))


class EveryGroupA8(nn.Module):
    """One W4A8 linear per group size on the same input: N = 65 (a partial block of rows), bias on two."""

    def __init__(self, k=512, n=65, dtype=torch.bfloat16):
        super().__init__()
        self.linears = nn.ModuleList(
            a8_linear(k, n, g, dtype, bias=i % 2 == 0, seed=i) for i, g in enumerate(INT4_GROUP_SIZES)
        )

    def forward(self, x):
        return torch.cat([lin(x) for lin in self.linears], dim=-1)

    def reference(self, x):
        outs = []
        for lin in self.linears:
            w = lin.weight
            outs.append(int4_a8_linear_reference(x, w.qdata, w.scale, w.zero_point, w.group_size, lin.bias))
        return torch.cat(outs, dim=-1)


# (how the weight reaches the kernel, the kernel's header line, what else the code shows, compile under grad?)
PATHS = [
    # frozen decode: weight, scales and zero points prepacked at compile time into the lane layout
    ("frozen", "inductor_quant int4_a8_gemv", "weight=lanes", False),
    # weights are graph inputs: int4_gemv's int8 path on the plain [N, K / 2] storage
    ("input", "inductor_quant int4_gemv", "#define IQ4_PATH_I8 1", True),
]


@pytest.mark.parametrize("path, header, marker, grad", PATHS, ids=[p[0] for p in PATHS])
@pytest.mark.parametrize("m", [1, 5, 16])
@pytest.mark.parametrize("dtype", DTYPES)
def test_gemv_every_group_size_matches_reference(path, header, marker, grad, m, dtype, monkeypatch):
    # reference: the same per-token int8 activations times the exact int4 values in fp32; the kernels' sums per
    # group are exact integers, so only fp32 summation order and the output rounding differ
    monkeypatch.setenv(INT4_KERNEL_ENV, "int4_gemv")
    model = EveryGroupA8(dtype=dtype)
    x = torch.randn(m, 512, dtype=dtype)
    out, code = compile_and_run(model, x, grad=grad)
    assert counters["inductor_quant"]["int4_a8_lowered"] == 4
    assert code.count(f"{header}: M={m} N=65 K=512") == 4
    FileCheck().check(marker).run(code)
    if path == "frozen":
        assert counters["inductor_quant"]["int4_a8_prepacked"] == 4
    else:
        FileCheck().check("activations=int8").run(code)
    verify(out, model.reference(x))


def test_frozen_graph_holds_int4_only_and_quantizes_activations_in_one_kernel():
    model = EveryGroupA8(k=256, n=64)
    x = torch.randn(2, 256, dtype=torch.bfloat16)
    out, code = compile_and_run(model, x)
    # packed nibbles (uint8), bf16 group scales, uint8 zero points, bf16 bias: no float [N, K] weight
    held = constant_bytes(code)
    nibbles = 4 * 64 * 256 // 2
    groups = sum(256 // g for g in INT4_GROUP_SIZES)  # per row, over the four layers
    assert held == {"uint8": nibbles + 64 * groups, "bfloat16": 2 * 64 * groups + 2 * 2 * 64}
    # the prepack pass made the lane-layout copies: nibbles, bf16 scales, uint8 zero points (the plain ones dropped)
    assert counters["inductor_quant"]["int4_prepacked_bytes"] == nibbles + 3 * 64 * groups
    # the four layers read the same input: Inductor quantizes it once (absmax, round, int8: one kernel) before
    # the four templates, which take its int8 rows and fp32 scales
    assert code.count("inductor_quant int4_a8_gemv") == 4
    call = code[code.index("def call") :]
    assert len(re.findall(r"cpp_fused_\w*amax\w*round\w*\(", call)) == 1
    FileCheck().check("amax").check_count("int4_a8_mm", 4, exactly=True).run(call)
    verify(out, model.reference(x))


def test_sums_are_exact_for_extreme_values():
    # nibbles 0 and 15, zero points 0 and 15, activations at +-127: the int32 sums and the zero-point term must
    # be exact (an fp32 GEMM reference on these integers is exact too)
    k, n, g = 256, 8, 32
    lin = a8_linear(k, n, g, torch.float32, bias=False)
    w = lin.weight
    w.qdata.copy_(torch.tensor([0x0F, 0xF0, 0xFF, 0x00], dtype=torch.uint8).repeat(n, k // 8))
    w.zero_point.copy_(torch.tensor([0, 15], dtype=torch.uint8).repeat(n, k // g // 2))
    x = torch.full((3, k), -1.0)
    x[:, ::3] = 1.0  # +-127 after quantization
    out, _ = compile_and_run(lin, x)
    assert counters["inductor_quant"]["int4_a8_kernel_int4_a8_gemv"] == 1
    torch.testing.assert_close(
        out, int4_a8_linear_reference(x, w.qdata, w.scale, w.zero_point, g), rtol=1e-6, atol=0
    )


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_prefill_takes_dequant_mm(dtype):
    model = EveryGroupA8(dtype=dtype)
    x = torch.randn(40, 512, dtype=dtype)
    out, code = compile_and_run(model, x)
    assert counters["inductor_quant"]["int4_a8_kernel_dequant_mm"] == 4
    assert counters["inductor_quant"]["int4_a8_prepacked"] == 0
    FileCheck().check("extern_kernels.inductor_quant_int4_a8_dequant_mm").run(code)
    # the chunks are widened to the output dtype before the dense GEMM (as W4A16's prefill)
    verify(out, model.reference(x), precision=dtype)


def test_k_not_multiple_of_128_frozen_takes_the_lane_kernel_input_takes_dequant_mm(caplog):
    # the lane layout steps 8 values of K: any K the group divides; int4_gemv's steps are 128 values
    lin = a8_linear(320, 24, 64)
    x = torch.randn(2, 320, dtype=torch.bfloat16)
    w = lin.weight
    expected = int4_a8_linear_reference(x, w.qdata, w.scale, w.zero_point, 64, lin.bias)
    out, code = compile_and_run(lin, x)
    assert "inductor_quant int4_a8_gemv: M=2 N=24 K=320" in code
    verify(out, expected)
    torch._dynamo.reset()
    counters.clear()
    with caplog.at_level(logging.DEBUG, logger="inductor_quant"):
        out, _ = compile_and_run(lin, x, grad=True)
    assert counters["inductor_quant"]["int4_a8_kernel_dequant_mm"] == 1
    assert "offered ['dequant_mm']" in caplog.text
    verify(out, expected)


def test_unfrozen_decode_autotunes_and_logs(caplog):
    model = EveryGroupA8()
    x = torch.randn(2, 512, dtype=torch.bfloat16)
    with caplog.at_level(logging.DEBUG, logger="inductor_quant"):
        out, _ = compile_and_run(model, x, grad=True)
    assert "inductor_quant_int4_a8_mm M=2 N=65 K=512" in caplog.text
    assert "offered ['dequant_mm', 'int4_gemv']" in caplog.text
    assert "autotune inductor_quant_int4_a8_mm" in caplog.text and " us" in caplog.text
    verify(out, model.reference(x))


def test_activation_after_gemv_is_fused_into_the_template():
    lin = a8_linear(256, 64, 32)
    x = torch.randn(2, 256, dtype=torch.bfloat16)
    out, code = compile_and_run(nn.Sequential(lin, nn.SiLU()), x)
    assert counters["inductor"]["cpp_epilogue_fusion_counter"] >= 1
    FileCheck().check("inductor_quant int4_a8_gemv").check("fused epilogue nodes").check("exp").run(code)
    w = lin.weight
    verify(out, F.silu(int4_a8_linear_reference(x, w.qdata, w.scale, w.zero_point, 32, lin.bias)))


def test_fewer_rows_than_a_block_and_3d_input():
    lin = a8_linear(128, 3, 128)
    x = torch.randn(1, 2, 128, dtype=torch.bfloat16)
    out, code = compile_and_run(lin, x)
    assert "inductor_quant int4_a8_gemv: M=2 N=3 K=128" in code  # one block of 16 lanes, 13 of them padding
    w = lin.weight
    expected = int4_a8_linear_reference(x.reshape(2, 128), w.qdata, w.scale, w.zero_point, 128, lin.bias)
    verify(out, expected.reshape(1, 2, 3))


def test_dynamic_m_matches_reference():
    model = EveryGroupA8()
    compiled = torch.compile(model, backend="quant_inductor", dynamic=True)
    for m in (1, 7, 40):
        x = torch.randn(m, 512, dtype=torch.bfloat16)
        with torch.no_grad():
            verify(compiled(x), model.reference(x))
    assert counters["inductor_quant"]["int4_a8_kernel_dequant_mm"] >= 4
