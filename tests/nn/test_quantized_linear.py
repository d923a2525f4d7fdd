"""QuantizedLinear and swap_quantized_linear: the module-swap workflow, loading weights, checkpoints, errors."""

from __future__ import annotations

import logging
import re

import pytest
import torch
from conftest import compile_and_run
from torch import nn
from torch._dynamo.utils import counters

from inductor_quant.nn import QuantizedLinear, swap_quantized_linear
from inductor_quant.primitives import quantize_weight, sqnr


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.up = nn.Linear(128, 256)
        self.down = nn.Linear(256, 96, bias=False)
        self.head = nn.Linear(96, 10)

    def forward(self, x):
        return self.head(torch.relu(self.down(torch.relu(self.up(x)))))


@pytest.mark.parametrize(
    ("settings", "min_db"),
    [
        (dict(weight_bits=8), 35.0),
        (dict(weight_bits=8, block_size=32, quantize_activation=True), 30.0),
        (dict(weight_bits=4, block_size=32, zero_point=True), 15.0),
        (dict(weight_bits=4, quantize_activation=True), 10.0),
    ],
    ids=["W8A16", "W8A8-block32", "W4A16-block32-zp", "W4A8"],
)
def test_swap_keeps_the_model_close_to_float(settings, min_db):
    model = MLP()
    x = torch.randn(6, 128)
    with torch.no_grad():
        expected = model(x)
        swap_quantized_linear(model, **settings)
        assert all(isinstance(m, QuantizedLinear) for m in (model.up, model.down, model.head))
        assert model.down.bias is None and model.up.weight.dtype == torch.int8
        assert sqnr(expected, model(x)) > min_db


def test_swapped_model_compiles_to_the_kernels():
    model = swap_quantized_linear(MLP(), weight_bits=8, quantize_activation=True)
    x = torch.randn(4, 128)
    out, code = compile_and_run(model, x)
    assert counters["inductor_quant"]["int8_dynamic_kernel_int_mm"] == 3
    assert "extern_kernels.mm" not in code and "extern_kernels.addmm" not in code
    # in front of each int8 GEMM, one fused kernel quantizes the activations (absmax, divide, round), the ReLU
    # of the layer before fused into it; nothing else runs
    calls = [
        a or b
        for a, b in re.findall(r"^\s+(cpp_fused_\w+)\(|extern_kernels\.(inductor_quant_\w+)\(", code, re.M)
    ]
    assert len(calls) == 6, calls
    for i, (quantize, gemm) in enumerate(zip(calls[0::2], calls[1::2], strict=True)):
        assert gemm == "inductor_quant_int8_dynamic_int_mm", calls
        assert all(op in quantize for op in ("abs_amax", "div", "round")), calls
        assert ("relu" in quantize) == (i > 0), calls
    with torch.no_grad():
        torch.testing.assert_close(out, model(x), atol=1e-4, rtol=1e-4)


def test_filter_and_skipped_layers(caplog):
    model = MLP()
    with caplog.at_level(logging.INFO, logger="inductor_quant"):
        swap_quantized_linear(model, block_size=64, filter_fn=lambda m, name: name != "head")
    assert isinstance(model.up, QuantizedLinear)  # 128 % 64 == 0
    assert isinstance(model.down, QuantizedLinear)  # 256 % 64 == 0
    assert isinstance(model.head, nn.Linear) and not isinstance(model.head, QuantizedLinear)
    model = MLP()
    with caplog.at_level(logging.INFO, logger="inductor_quant"):
        swap_quantized_linear(model, block_size=128)
    assert isinstance(model.down, QuantizedLinear) and type(model.head) is nn.Linear
    assert "head left as is: block_size=128 does not divide in_features=96" in caplog.text


def test_multihead_attention_out_proj_is_left_alone():
    model = nn.Sequential(nn.MultiheadAttention(64, 4, batch_first=True), nn.Linear(64, 64))
    swap_quantized_linear(model)
    assert type(model[0].out_proj) is nn.modules.linear.NonDynamicallyQuantizableLinear
    assert isinstance(model[1], QuantizedLinear)


def test_load_quantized_weight_and_state_dict_round_trip(tmp_path):
    torch.manual_seed(0)
    w, b = torch.randn(32, 64), torch.randn(32)
    q, s, zp = quantize_weight(w, bits=4, block_size=16, zero_point=True)
    layer = QuantizedLinear(64, 32, weight_bits=4, block_size=16, zero_point=True)
    layer.load_quantized_weight(q, s, zp, b)
    assert torch.equal(layer.weight, q) and torch.equal(layer.weight_zero_point, zp)
    torch.save(layer.state_dict(), tmp_path / "layer.pt")
    fresh = QuantizedLinear(64, 32, weight_bits=4, block_size=16, zero_point=True)
    fresh.load_state_dict(torch.load(tmp_path / "layer.pt"))
    x = torch.randn(3, 64)
    assert torch.equal(fresh(x), layer(x))
    torch.testing.assert_close(fresh.dequantized_weight(), w, atol=float(s.max()), rtol=0)


def test_bad_values_name_themselves():
    with pytest.raises(ValueError, match="in_features must be a positive int, got 0"):
        QuantizedLinear(0, 4)
    with pytest.raises(ValueError, match=r"weight_bits must be one of \(8, 4\), got 2"):
        QuantizedLinear(8, 4, weight_bits=2)
    with pytest.raises(ValueError, match="positive divisor of K=96, got 64"):
        QuantizedLinear(96, 4, block_size=64)
    layer = QuantizedLinear(64, 8, weight_bits=4, bias=False)
    q, s, _ = quantize_weight(torch.randn(8, 64))  # int8 values, not int4
    with pytest.raises(ValueError, match=r"weight_bits=4 needs weight in \[-8, 7\], got \[-1\d\d, 1\d\d\]"):
        layer.load_quantized_weight(q, s)
    with pytest.raises(ValueError, match=r"scaler must be a float \[8\] tensor"):
        layer.load_quantized_weight(q.clamp(-8, 7), s[:4])
    with pytest.raises(ValueError, match="this layer has no zero point"):
        layer.load_quantized_weight(q.clamp(-8, 7), s, torch.zeros(8))
    with pytest.raises(ValueError, match="built with bias=False"):
        layer.load_quantized_weight(q.clamp(-8, 7), s, None, torch.zeros(8))
    with pytest.raises(ValueError, match=r"weight must be \[8, 64\] for this layer"):
        layer.load_quantized_weight(torch.zeros(4, 64, dtype=torch.int8), s[:4])


def test_docs_example_runs(tmp_path, monkeypatch):
    """docs/quantized_matmul.md's example is runnable as written."""
    from test_docs import docs_blocks

    (code,) = docs_blocks("quantized_matmul.md", "python checked")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "docs/quantized_matmul.md", "exec"), namespace)
    assert namespace["y"].shape == (3, 64) and namespace["y"].dtype == torch.bfloat16
    assert namespace["out"].shape == (8, 64)
    assert counters["inductor_quant"]["int8_dynamic_kernel_int_mm"] == 2
