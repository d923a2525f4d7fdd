"""Lowering of ternary_mm (BitLinear under quant_inductor): the template on odd shapes and every configuration,
prefill and dynamic shapes, autotuning, epilogue fusion, eval vs deployed layers."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from conftest import compile_and_run, constant_bytes
from torch import nn
from torch._dynamo.utils import counters
from torch.testing import FileCheck

from inductor_quant.nn import BitLinear, BitQuantConfig
from inductor_quant.settings import TERNARY_KERNEL_ENV

# (K, N, bias, config): a whole-block K, a padded K (300 -> 512) with a tail row block (N = 37), per-channel scales
LAYERS = [
    (256, 8, False, BitQuantConfig()),
    (300, 37, True, BitQuantConfig(activation_granularity="per_tensor", weight_granularity="per_channel")),
    (512, 64, True, BitQuantConfig(weight_granularity="per_channel")),
]


class Parallel(nn.Module):
    """Several BitLinear layers on their own inputs, compiled as one graph: one compile covers a grid of cells."""

    def __init__(self, dtype, deployed):
        super().__init__()
        torch.manual_seed(0)
        self.layers = nn.ModuleList(BitLinear(k, n, bias=b, quant_config=c) for k, n, b, c in LAYERS)
        for layer in self.layers:
            if layer.bias is not None:
                nn.init.normal_(layer.bias)
        self.to(dtype).eval()
        if deployed:
            for layer in self.layers:
                layer.deploy()

    def forward(self, *xs):
        return [layer(x) for layer, x in zip(self.layers, xs, strict=True)]


def _inputs(m, dtype):
    g = torch.Generator().manual_seed(m)
    return [torch.randn(m, k, generator=g).to(dtype) for k, *_ in LAYERS]


@pytest.mark.parametrize("deployed", [True, False], ids=["deployed", "eval"])
@pytest.mark.parametrize("m", [1, 5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_template_equals_the_eager_op(dtype, m, deployed, monkeypatch):
    """Exact: the template's int32 sums equal the eager op's, and its fp32 epilogue applies the scales and bias in
    the op's documented order; Inductor's activation quantization rounds as eager torch does."""
    monkeypatch.setenv(TERNARY_KERNEL_ENV, "ternary_gemv")
    model, xs = Parallel(dtype, deployed), _inputs(m, dtype)
    out, code = compile_and_run(model, *xs)
    assert counters["inductor_quant"]["ternary_kernel_ternary_gemv"] == len(LAYERS)
    FileCheck().check_count("// inductor_quant ternary_gemv:", len(LAYERS), exactly=True).run(code)
    FileCheck().check(f"M={m} N=37 K=300 weight_scale=per_channel bias=True").run(code)
    FileCheck().check("_mm512_dpbusd_epi32").run(code)
    assert "extern_kernels.mm" not in code and "cpp_fused_mm" not in code  # no float matmul anywhere
    # only the packed weights are constants: 2 bits per weight, no float [N, K] copy
    packed = sum(n * -(-k // 256) * 64 for k, n, *_ in LAYERS)
    assert constant_bytes(code).get("uint8") == packed
    with torch.no_grad():
        expected = model(*xs)
    for actual, want in zip(out, expected, strict=True):
        assert actual.dtype == dtype
        torch.testing.assert_close(actual, want, atol=0, rtol=0)


def test_prefill_uses_unpack_int_mm(monkeypatch):
    model = Parallel(torch.bfloat16, deployed=True)
    xs = _inputs(40, torch.bfloat16)
    out, code = compile_and_run(model, *xs)
    assert counters["inductor_quant"]["ternary_kernel_unpack_int_mm"] == len(LAYERS)
    FileCheck().check("extern_kernels.inductor_quant_ternary_unpack_int_mm").run(code)
    with torch.no_grad():
        for actual, want in zip(out, model(*xs), strict=True):
            torch.testing.assert_close(actual, want, atol=0, rtol=0)


def test_decode_autotunes_between_the_template_and_unpack_int_mm(caplog):
    model = Parallel(torch.bfloat16, deployed=True)
    with caplog.at_level(logging.DEBUG, logger="inductor_quant"):
        compile_and_run(model, *_inputs(1, torch.bfloat16))
    assert caplog.text.count("offered ['unpack_int_mm', 'ternary_gemv']") == len(LAYERS)
    assert "autotune inductor_quant_ternary_mm" in caplog.text and " us" in caplog.text
    assert counters["inductor_quant"]["ternary_lowered"] == len(LAYERS)


def test_identical_layers_are_tuned_once():
    torch.manual_seed(0)
    model = nn.Sequential(*(BitLinear(256, 256) for _ in range(4))).eval()
    for layer in model:
        layer.deploy()
    compile_and_run(model, torch.randn(2, 256))
    assert counters["inductor_quant"]["ternary_lowered"] == 4
    assert counters["inductor_quant"]["ternary_tuning_reused"] == 3


def test_activation_after_the_template_is_fused_into_it(monkeypatch):
    monkeypatch.setenv(TERNARY_KERNEL_ENV, "ternary_gemv")
    torch.manual_seed(0)
    layer = BitLinear(256, 64).deploy()
    model = nn.Sequential(layer, nn.SiLU())
    x = torch.randn(2, 256)
    out, code = compile_and_run(model, x)
    assert counters["inductor"]["cpp_epilogue_fusion_counter"] >= 1
    FileCheck().check("inductor_quant ternary_gemv").check("fused epilogue nodes").check("exp").run(code)
    with torch.no_grad():
        torch.testing.assert_close(out, F.silu(layer(x)))


def test_dynamic_m_takes_unpack_int_mm_and_matches():
    torch.manual_seed(0)
    layer = BitLinear(300, 37).deploy()
    compiled = torch.compile(layer, backend="quant_inductor", dynamic=True)
    with torch.no_grad():
        for m in (3, 7, 40):
            x = torch.randn(m, 300)
            torch.testing.assert_close(compiled(x), layer(x), atol=0, rtol=0)
    assert counters["inductor_quant"]["ternary_kernel_unpack_int_mm"] >= 1


def test_3d_bf16_input_through_a_deployed_mlp(monkeypatch):
    """A [batch, seq, K] input is flattened to rows for the kernel and reshaped back."""
    monkeypatch.setenv(TERNARY_KERNEL_ENV, "ternary_gemv")
    torch.manual_seed(0)
    model = nn.Sequential(BitLinear(256, 512), nn.ReLU(), BitLinear(512, 256)).to(torch.bfloat16).eval()
    for layer in (model[0], model[2]):
        layer.deploy()
    x = torch.randn(2, 3, 256, dtype=torch.bfloat16)
    out, code = compile_and_run(model, x)
    FileCheck().check_count("// inductor_quant ternary_gemv: M=6", 2, exactly=True).run(code)
    with torch.no_grad():
        torch.testing.assert_close(out, model(x), atol=0, rtol=0)


def test_forcing_a_kernel_that_is_not_offered_names_it(monkeypatch):
    monkeypatch.setenv(TERNARY_KERNEL_ENV, "ternary_gemv")
    layer = BitLinear(256, 8).deploy()
    with pytest.raises(Exception, match="INDUCTOR_QUANT_TERNARY_KERNEL='ternary_gemv' is not offered"):
        compile_and_run(layer, torch.randn(64, 256))
