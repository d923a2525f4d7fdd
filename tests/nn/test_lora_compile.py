"""LoRA models under torch.compile(backend="quant_inductor"): inference unmerged (the adapter's add fused into the
quantized kernel's epilogue) and merged (no adapter GEMM left), a training step, and a PEFT model."""

from __future__ import annotations

import re
from unittest import mock

import pytest
import torch
from conftest import compile_and_run
from torch import nn
from torch._dynamo.utils import counters
from torch._inductor.graph import GraphLowering
from torch._inductor.utils import run_and_get_code
from torch.testing import FileCheck

import inductor_quant as iq
from inductor_quant.nn import LoraLinear, add_lora

# Float GEMM calls in Inductor's CPU wrapper code.
FLOAT_GEMM = re.compile(
    r"(extern_kernels\.(mm|addmm|bmm)|mkl\._mkl_linear|mkldnn\._linear_pointwise)(\.default)?\("
)

# The quantized kernel with the adapter's add (and scaling, and the ReLU after it) fused in (bf16: and casts); the
# int8 weight is held in the blocked layout, whose op is int8_weight_linear_packed.
FUSED_ADAPTER = r"cpp_fused_\w*add_{}_weight_linear(_packed)?_mul_relu"


class MLP(nn.Module):
    """``up`` int8, ``down`` int4 (g32), ``head`` float."""

    def __init__(self, dtype=torch.float32):
        super().__init__()
        torch.manual_seed(0)
        self.up = nn.Linear(128, 256, dtype=dtype)
        self.down = nn.Linear(256, 128, dtype=dtype)
        self.head = nn.Linear(128, 16, dtype=dtype)

    def forward(self, x):
        return self.head(torch.relu(self.down(torch.relu(self.up(x)))))


def lora_mlp(dtype=torch.float32) -> MLP:
    model = MLP(dtype)
    iq.quantize_(model, iq.Int8WeightOnlyConfig(), filter_fn=lambda m, fqn: fqn == "up")
    iq.quantize_(model, iq.Int4WeightOnlyConfig(group_size=32), filter_fn=lambda m, fqn: fqn == "down")
    add_lora(model, "a", r=8)
    g = torch.Generator().manual_seed(1)
    for layer in (model.up, model.down):
        layer.lora_B["a"].weight.data = torch.randn(layer.lora_B["a"].weight.shape, generator=g) * 0.01
    return model.eval()


def gemm_calls(code: str) -> list[str]:
    return [line.strip() for line in code.splitlines() if FLOAT_GEMM.search(line)]


@pytest.mark.parametrize(
    ("dtype", "tol"), [(torch.float32, 1e-4), (torch.bfloat16, 2e-2)], ids=["fp32", "bf16"]
)
def test_inference_unmerged_then_merged_then_unmerged(dtype, tol):
    model = lora_mlp(dtype)
    x = torch.randn(4, 128, dtype=dtype)
    compiled = torch.compile(model, backend="quant_inductor")

    def run():
        # Like run_and_get_code, without its dynamo.reset(): the three calls share one Dynamo cache.
        codes: list[str] = []
        with mock.patch.object(GraphLowering, "save_output_code", codes.append):
            return compiled(x), "\n".join(codes)

    with torch.no_grad():
        eager = model(x)
        out, code = run()
    torch.testing.assert_close(out, eager, atol=tol, rtol=tol)
    assert counters["inductor_quant"]["int8_lowered"] == 1 and counters["inductor_quant"]["int4_lowered"] == 1
    # Each adapter's `base + scaling * B(A(x))` (and the ReLU after it) is one kernel with the quantized GEMV.
    FileCheck().check_regex(FUSED_ADAPTER.format("int8")).check_regex(FUSED_ADAPTER.format("int4")).run(code)
    # The only float GEMMs: A and B of the two adapters, and the float head.
    assert len(gemm_calls(code)) == 5, gemm_calls(code)

    for layer in (model.up, model.down):
        layer.merge()
    with torch.no_grad():
        eager_merged = model(x)
        out, code = run()
    torch.testing.assert_close(out, eager_merged, atol=tol, rtol=tol)
    assert counters["inductor_quant"]["int8_lowered"] == 2 and counters["inductor_quant"]["int4_lowered"] == 2
    FileCheck().check("int8_weight_linear").check("int4_weight_linear").run(code)
    assert len(gemm_calls(code)) == 1, gemm_calls(code)  # the head: no adapter GEMM is left

    # Unmerging restores the weights bit-exactly, so the first compiled graph (whose weights were frozen before
    # the merge) is right again; Dynamo's guard on the merged adapters picks it without a recompile.
    for layer in (model.up, model.down):
        layer.unmerge()
    with torch.no_grad():
        out, code = run()
    torch.testing.assert_close(out, eager, atol=tol, rtol=tol)
    assert code == ""  # nothing was compiled: the first graph was reused


def test_training_step():
    """Forward and backward compiled: the base still runs the quantized kernels (adapter add fused in), and the
    gradients match eager's (reference: eager fp32, 1e-4)."""
    model = lora_mlp().train()
    x = torch.randn(4, 128)
    target = torch.randn(4, 16)
    params = [p for p in model.parameters() if p.requires_grad]
    assert len(params) == 4

    def step(m):
        loss = nn.functional.mse_loss(m(x), target)
        loss.backward()
        return loss

    eager_loss = step(model)
    eager_grads = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    compiled = torch.compile(model, backend="quant_inductor")
    loss, codes = run_and_get_code(step, compiled)
    code = "\n".join(codes)
    torch.testing.assert_close(loss, eager_loss, atol=1e-5, rtol=1e-5)
    for p, g in zip(params, eager_grads, strict=True):
        torch.testing.assert_close(p.grad, g, atol=1e-4, rtol=1e-4)
    assert counters["inductor_quant"]["int8_lowered"] == 1 and counters["inductor_quant"]["int4_lowered"] == 1
    FileCheck().check_regex(FUSED_ADAPTER.format("int8")).check_regex(FUSED_ADAPTER.format("int4")).run(code)


def test_peft_model_compiles_to_the_quantized_kernels():
    peft = pytest.importorskip("peft")
    from inductor_quant.nn import use_with_peft

    model = MLP()
    iq.quantize_(model, iq.Int8WeightOnlyConfig(), filter_fn=lambda m, fqn: fqn in ("up", "down"))
    config = use_with_peft(peft.LoraConfig(r=8, target_modules=["up", "down"], init_lora_weights=False))
    model = peft.get_peft_model(model, config).eval()
    x = torch.randn(4, 128)
    with torch.no_grad():
        eager = model(x)
        out, code = compile_and_run(model, x)
    torch.testing.assert_close(out, eager, atol=1e-4, rtol=1e-4)
    assert counters["inductor_quant"]["int8_lowered"] == 2
    # Each layer's adapter add is one kernel with its quantized GEMV (called once each).
    assert len(re.findall(r"^\s+cpp_fused_\w*add_int8_weight_linear\w*\(", code, re.M)) == 2
    assert not any(isinstance(m, LoraLinear) for m in model.modules())
