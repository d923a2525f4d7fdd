"""Lowering of int8_weight_linear: every kernel choice, forced, on odd shapes; epilogue fusion; tuning once."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from conftest import ScaledLinear, compile_and_run, int8_weight, verify
from torch import nn
from torch._dynamo.utils import counters
from torch.testing import FileCheck

from inductor_quant.primitives import int8_linear_reference
from inductor_quant.settings import INT8_KERNEL_ENV
from inductor_quant.templates.cpp.int8_gemv import AMX_MIN_M


def _case(m, n, k, dtype, bias, seed=0):
    _, q, s = int8_weight(n, k, seed)
    b = torch.randn(n, dtype=dtype) if bias else None
    x = torch.randn(m, k, dtype=dtype)
    expected = int8_linear_reference(x, q, s.to(dtype), b)
    return ScaledLinear(q, s.to(dtype), b), x, expected


# (kernel forced, how it shows in the generated code, frozen?) -- each path is forced so timing cannot flip it
PATHS = [
    ("int8_gemv", "weight=packed", True),  # frozen decode: prepacked weight
    ("int8_gemv", "weight=row-major", False),  # unfrozen decode: plain [N, K] weight
    ("aten", "extern_kernels.inductor_quant_int8_linear_aten", True),
    ("dequant_mm", "extern_kernels.inductor_quant_int8_dequant_mm", True),
]


@pytest.mark.parametrize(
    "kernel, marker, frozen", PATHS, ids=[f"{p[0]}-{'frozen' if p[2] else 'input'}" for p in PATHS]
)
@pytest.mark.parametrize("m, n, k", [(1, 65, 96), (5, 128, 64), (17, 33, 160)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_forced_kernel_matches_reference(kernel, marker, frozen, m, n, k, dtype, monkeypatch):
    monkeypatch.setenv(INT8_KERNEL_ENV, kernel)
    model, x, expected = _case(m, n, k, dtype, bias=(m % 2 == 1))
    out, code = compile_and_run(model, x, grad=not frozen)
    FileCheck().check(marker).run(code)
    if marker == "weight=row-major" and m == 1 and dtype == torch.bfloat16:
        assert "#define IQ_ROWWISE" in code  # one bf16 row on a plain weight: the row-at-a-time walk
    assert counters["inductor_quant"]["int8_lowered"] == 1
    verify(out, expected)


@pytest.mark.parametrize("m", [16, 32])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_gemv_rows_in_uneven_passes_match_reference(m, dtype, monkeypatch):
    """The gemv kernel takes the rows of X in passes of up to 6 (bf16; fp32: 4) rows as even as possible:
    16 -> 6, 5, 5 and 32 -> 6, 6, 5, 5, 5, 5 (bf16). Every row must come out, in its place."""
    monkeypatch.setenv(INT8_KERNEL_ENV, "int8_gemv")
    model, x, expected = _case(m, 72, 256, dtype, bias=True)
    out, code = compile_and_run(model, x)
    FileCheck().check(f"inductor_quant int8_gemv: M={m}").check("weight=packed").run(code)
    verify(out, expected)


@pytest.mark.parametrize(
    ("m", "frozen"),
    [(1, True), (2, True), (17, True), (32, True), (5, False)],
    ids=["1", "2", "17", "32", "5-input"],
)
def test_bf16_decode_gemv_per_cpu_isa_matches_reference(m, frozen, cpu_isa, monkeypatch):
    """bf16 decode from ``AMX_MIN_M`` rows on AMX tiles where the CPU has them (the weight as A tiles, X as one or two B tiles of 16 rows:
    M = 17 and 32 take two), the AVX512 kernel where forced; N = 65 ends in a partial block of 32 rows and of 4,
    the packed and the row-major weight alike. Reference: fp32 math on the exact values."""
    monkeypatch.setenv(INT8_KERNEL_ENV, "int8_gemv")
    model, x, expected = _case(m, 65, 160, torch.bfloat16, bias=True, seed=m)
    out, code = compile_and_run(model, x, grad=not frozen)
    FileCheck().check(f"inductor_quant int8_gemv: M={m}").check(
        "weight=packed" if frozen else "row-major"
    ).run(code)
    assert ("#define IQ_PATH_AMX" in code) == (cpu_isa == "amx" and m >= AMX_MIN_M)
    verify(out, expected)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_prefill_uses_dequant_mm_and_keeps_int8(dtype, cpu_isa):
    """Prefill: the widening GEMM, on AMX tiles for bf16 where the CPU has them (forced off: AVX512)."""
    model, x, expected = _case(64, 96, 128, dtype, bias=True)
    out, code = compile_and_run(model, x)
    assert counters["inductor_quant"]["int8_kernel_dequant_mm"] == 1
    isa = "amx" if cpu_isa == "amx" and dtype == torch.bfloat16 else "avx512"
    assert counters["inductor_quant"][f"int8_gemm_{isa}"] == 1
    FileCheck().check("extern_kernels.inductor_quant_int8_dequant_mm").run(code)
    assert "dtype=torch.int8" in code and counters["inductor_quant"]["int8_prepacked"] == 0
    verify(out, expected)


def test_k_not_multiple_of_32_falls_back_to_aten_with_reason(caplog):
    model, x, expected = _case(3, 40, 100, torch.bfloat16, bias=False)
    with caplog.at_level(logging.DEBUG, logger="inductor_quant"):
        out, code = compile_and_run(model, x)
    assert "K=100 (needs K % 32 == 0)" in caplog.text
    assert counters["inductor_quant"]["int8_kernel_aten"] == 1
    verify(out, expected)


def test_unfrozen_decode_autotunes_between_aten_and_gemv(caplog):
    model, x, expected = _case(4, 256, 256, torch.bfloat16, bias=True)
    with caplog.at_level(logging.DEBUG, logger="inductor_quant"):
        out, _ = compile_and_run(model, x, grad=True)
    assert "offered ['aten', 'int8_gemv']" in caplog.text
    assert "autotune inductor_quant_int8_weight_linear" in caplog.text and " us" in caplog.text
    verify(out, expected)


def test_identical_layers_are_tuned_once():
    layers = []
    for i in range(4):
        _, q, s = int8_weight(256, 256, seed=i)
        layers.append(ScaledLinear(q, s.to(torch.bfloat16)))
    x = torch.randn(4, 256, dtype=torch.bfloat16)
    # weights are graph inputs (no freezing), so every layer goes through the autotuned lowering
    out, _ = compile_and_run(nn.Sequential(*layers), x, grad=True)
    assert counters["inductor_quant"]["int8_lowered"] == 4
    # the first layer is timed among its choices; the three others reuse its winner untimed
    assert counters["inductor_quant"]["int8_tuning_reused"] == 3
    with torch.no_grad():
        verify(out, nn.Sequential(*layers)(x))


def test_activation_after_gemv_is_fused_into_the_template():
    model, x, _ = _case(2, 64, 96, torch.bfloat16, bias=True)
    fused = nn.Sequential(model, nn.SiLU())
    out, code = compile_and_run(fused, x)
    assert counters["inductor"]["cpp_epilogue_fusion_counter"] >= 1
    # one kernel: the GEMV body, then the SiLU epilogue loop in the same function
    FileCheck().check("inductor_quant int8_gemv").check("fused epilogue nodes").check("exp").run(code)
    with torch.no_grad():
        verify(out, F.silu(model(x)))


def test_forcing_a_kernel_that_is_not_offered_names_it(monkeypatch):
    monkeypatch.setenv(INT8_KERNEL_ENV, "int8_gemv")
    model, x, _ = _case(3, 40, 100, torch.bfloat16, bias=False)
    with pytest.raises(Exception, match="INDUCTOR_QUANT_INT8_KERNEL='int8_gemv' is not offered"):
        compile_and_run(model, x, grad=True)


@pytest.mark.parametrize("grad", [False, True], ids=["frozen", "unfrozen"])
def test_dynamic_shapes_compile_and_match(grad):
    """With a symbolic M nothing can be specialised: the prefill kernel serves every M, correctly.
    (Dynamo still specialises M = 1, whose static graph may take the decode kernel.)"""
    model, _, _ = _case(1, 96, 128, torch.bfloat16, bias=True)
    compiled = torch.compile(model, backend="quant_inductor", dynamic=True)
    for m in (1, 7, 40):
        x = torch.randn(m, 128, dtype=torch.bfloat16)
        with torch.set_grad_enabled(grad):
            out = compiled(x)
        verify(out, int8_linear_reference(x, model.w, model.s, model.b))
    assert counters["inductor_quant"]["int8_kernel_dequant_mm"] >= 1
