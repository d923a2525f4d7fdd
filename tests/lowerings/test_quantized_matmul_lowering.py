"""quantized_matmul under backend="quant_inductor": every cell of the table lowers to a quantized kernel (asserted
on the generated code and the lowering counters) and gives the eager op's numbers, at decode and prefill sizes."""

from __future__ import annotations

import pytest
import torch
from conftest import TOLERANCES, compile_and_run, constant_bytes
from torch import nn
from torch._dynamo.utils import counters
from torch.testing import FileCheck

from inductor_quant.nn import QuantizedLinear
from inductor_quant.primitives import quantized_matmul_reference

# (weight_bits, block_size, quantize_activation) -> the kernel op it lowers through and the lowering counter
CELLS = {
    (8, -1, False): "int8_kernel_",
    (8, 64, False): "int8_blockwise_kernel_dequant_mm",
    (4, -1, False): "int4_kernel_",
    (4, 64, False): "int4_kernel_",
    (8, -1, True): "int8_dynamic_kernel_int_mm",
    (8, 64, True): "int8_dynamic_kernel_int_mm",
    (4, -1, True): "int8_dynamic_kernel_int_mm",
    (4, 64, True): "int8_dynamic_kernel_int_mm",
}
K, N = 256, 64


class Table(nn.Module):
    """One QuantizedLinear per cell, each on its own input, compiled as one graph (one compile covers the table)."""

    def __init__(self, zero_point: bool, dtype: torch.dtype):
        super().__init__()
        torch.manual_seed(0)
        self.layers = nn.ModuleList()
        for bits, block, a8 in CELLS:
            linear = nn.Linear(K, N)
            self.layers.append(
                QuantizedLinear.from_linear(
                    linear, weight_bits=bits, block_size=block, quantize_activation=a8, zero_point=zero_point
                ).to(dtype)
            )

    def forward(self, *xs):
        return [layer(x) for layer, x in zip(self.layers, xs, strict=True)]


def _inputs(m, dtype):
    g = torch.Generator().manual_seed(m)
    return [torch.randn(m, K, generator=g).to(dtype) for _ in CELLS]


def _check(model, xs, out, dtype):
    with torch.no_grad():
        eager = model(*xs)
    for layer, x, actual, want in zip(model.layers, xs, out, eager, strict=True):
        assert actual.dtype == dtype
        torch.testing.assert_close(actual, want, **TOLERANCES[dtype])
        ref = quantized_matmul_reference(
            x,
            layer.weight,
            layer.weight_scaler,
            layer.weight_zero_point,
            layer.quantize_activation,
            layer.bias,
        )
        torch.testing.assert_close(actual, ref, **TOLERANCES[dtype])


def _lowered(prefix: str) -> int:
    return sum(v for k, v in counters["inductor_quant"].items() if k.startswith(prefix))


@pytest.mark.parametrize("m", [1, 40], ids=["decode", "prefill"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_every_cell_lowers_to_a_quantized_kernel(dtype, m):
    model, xs = Table(zero_point=False, dtype=dtype), _inputs(m, dtype)
    out, code = compile_and_run(model, *xs)
    _check(model, xs, out, dtype)
    expected = {}
    for prefix in CELLS.values():
        expected[prefix] = expected.get(prefix, 0) + 1
    for prefix, count in expected.items():
        assert _lowered(prefix) == count, (prefix, dict(counters["inductor_quant"]))
    # no cell silently runs a float matmul: every GEMM in the program is one of the package's kernels
    assert (
        "extern_kernels.mm" not in code and "extern_kernels.addmm" not in code and "cpp_fused_mm" not in code
    )
    FileCheck().check_count("extern_kernels.inductor_quant_int8_dynamic_int_mm(", 4, exactly=True).run(code)
    FileCheck().check_count("extern_kernels.inductor_quant_int8_blockwise_dequant_mm(", 1, exactly=True).run(
        code
    )
    if m == 1:
        # decode: the GEMV templates for W8A16 per-channel and both W4A16 cells, on weights prepacked at compile time
        FileCheck().check_count("// inductor_quant int8_gemv:", 1, exactly=True).run(code)
        FileCheck().check_count("// inductor_quant int4_gemv:", 2, exactly=True).run(code)
    # W4A16 is stored in 4 bits in the compiled program: the int4 layers' weights are uint8 nibbles, K / 2 per row
    assert constant_bytes(code).get("uint8") == 2 * N * K // 2
    # the other six layers keep their int8 [N, K] weights, and no float copy of any weight exists
    assert constant_bytes(code).get("int8") == 6 * N * K
    assert constant_bytes(code).get(str(dtype).removeprefix("torch."), 0) < N * K


def test_zero_points_compile_to_the_same_kernels():
    dtype = torch.bfloat16
    model, xs = Table(zero_point=True, dtype=dtype), _inputs(3, dtype)
    out, code = compile_and_run(model, *xs)
    _check(model, xs, out, dtype)
    assert _lowered("int8_dynamic_kernel_int_mm") == 4
    assert _lowered("int8_blockwise_kernel_dequant_mm") == 1
    assert _lowered("int4_kernel_") == 2 and _lowered("int8_kernel_") == 1


def test_dynamic_rows():
    dtype = torch.float32
    model = Table(zero_point=False, dtype=dtype)
    compiled = torch.compile(model, backend="quant_inductor", dynamic=True)
    with torch.no_grad():
        for m in (3, 17):
            xs = _inputs(m, dtype)
            _check(model, xs, compiled(*xs), dtype)


def test_plain_inductor_runs_the_op_eagerly():
    """Stock Inductor runs the op too (on the kernel ops' eager implementations, or on the package's lowerings once
    the backend has registered them in this process): the same numbers either way."""
    dtype = torch.float32
    model, xs = Table(zero_point=True, dtype=dtype), _inputs(2, dtype)
    out, code = compile_and_run(model, *xs, backend="inductor")
    _check(model, xs, out, dtype)
