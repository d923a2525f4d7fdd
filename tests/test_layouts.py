"""Layout fuzz: every quantized module and op reads what it is given, whatever its sizes, strides and storage offset.

The activations real models hand a linear: HF's ``hidden[:, -1:, :]`` before ``lm_head`` (a view at a storage
offset), middle rows, rows of a wider buffer, a transposed-then-sliced 3-D tensor (which ``matmul`` cannot fold into
rows: it expands the weight and calls ``bmm``), an expanded (stride-0) batch, one-row views, and a prefill-sized
slice. Each is run eagerly and compiled with quant_inductor (frozen weights, graph-input weights, dynamic M; the
views passed in and made inside the graph), every output against an fp32 reference of the same quantized weights
at ``MIN_SQNR_DB``. A view read as if it started at offset 0 measures about 0 dB.

One compile per (module, mode) holds every layout, so the grid costs a few compiles per module.
``INDUCTOR_QUANT_LAYOUT_SEEDS=N`` runs N seeds of random weights and activations (CI runs one).
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch._dynamo.utils import counters

import inductor_quant as iq
from inductor_quant.nn import BitLinear, QuantizedLinear
from inductor_quant.nn.lora import LoraLinear
from inductor_quant.primitives import (
    int4_a8_linear_reference,
    quantized_matmul_reference,
    sqnr,
    ternary_linear_reference,
)

K, N = 128, 72  # N: not a multiple of the kernels' 16 / 64-row blocks (tails)
# fp32 reference vs a bf16 output: one rounding of the output (~50 dB), plus the bf16 rounding of a widened weight
# on the prefill path; a misread layout is ~0 dB.
MIN_SQNR_DB = 35.0
SEEDS = range(int(os.environ.get("INDUCTOR_QUANT_LAYOUT_SEEDS", "1")))

# name -> (shape of the buffer the activation is a view of, the view)
LAYOUTS = {
    "contiguous": ((2, 5, K), lambda b: b),
    "last_row": ((1, 16, K), lambda b: b[:, -1:, :]),  # HF's logits_to_keep slice
    "middle_rows": ((1, 16, K), lambda b: b[:, 3:5, :]),
    "rows_of_wider": ((6, 2 * K), lambda b: b[:, K:]),  # row stride 2K, offset K
    "transposed_sliced": ((7, 2, K), lambda b: b.transpose(0, 1)[:, 2:, :]),
    "expanded_batch": ((1, 3, K), lambda b: b.expand(2, 3, K)),
    "one_row": ((4, K), lambda b: b[2:3]),
    "prefill_slice": ((2, 40, K), lambda b: b[:, 3:, :]),  # M = 74: the prefill kernels
}


def _bases(seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + seed)
    return [torch.randn(shape, generator=g).to(torch.bfloat16) for shape, _ in LAYOUTS.values()]


def _views(bases):
    return [view(b) for b, (_, view) in zip(bases, LAYOUTS.values(), strict=True)]


def _rows(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, x.shape[-1])


# --- the modules: (module, fp32 reference of its quantized weights on 2-D rows) ---------------------------------


def _linear(seed: int) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(K, N, bias=True, dtype=torch.bfloat16)


def _weight_only(config):
    def build(seed):
        lin = iq.quantize_(_linear(seed), config)
        w = lin.weight.dequantize(torch.float32)
        return lin, lambda x: F.linear(x.float(), w, lin.bias.float())

    return build


def _w4a8(seed):
    lin = iq.quantize_(_linear(seed), iq.Int8DynamicActivationInt4WeightConfig(group_size=32))
    t = lin.weight
    return lin, lambda x: int4_a8_linear_reference(
        x, t.qdata, t.scale, t.zero_point, t.group_size, lin.bias
    ).float()


def _bitlinear(seed):
    layer = BitLinear.from_linear(_linear(seed)).deploy()
    q = layer.ternary_weight()
    return layer, lambda x: ternary_linear_reference(x, q, layer.qweight_scale, layer.bias).float()


def _quantized_linear(**options):
    def build(seed):
        layer = QuantizedLinear.from_linear(_linear(seed), **options)
        return layer, lambda x: quantized_matmul_reference(
            x,
            layer.weight,
            layer.weight_scaler,
            layer.weight_zero_point,
            quantize_activation=layer.quantize_activation,
            bias=layer.bias,
        ).float()

    return build


def _lora_int8(seed):
    base = iq.quantize_(_linear(seed), iq.Int8WeightOnlyConfig())
    layer = LoraLinear(base, r=4, dtype=torch.bfloat16)
    for p in layer.lora_B.parameters():
        nn.init.normal_(p, std=0.05)
    w = base.weight.dequantize(torch.float32)
    a, b = layer.lora_A["default"].weight.float(), layer.lora_B["default"].weight.float()
    scaling = layer.scaling["default"]
    return layer, lambda x: F.linear(x.float(), w, base.bias.float()) + scaling * (x.float() @ a.t() @ b.t())


MODULES = {
    "int8": _weight_only(iq.Int8WeightOnlyConfig()),
    "int4_g32": _weight_only(iq.Int4WeightOnlyConfig(group_size=32)),
    "int4_g128": _weight_only(iq.Int4WeightOnlyConfig(group_size=128)),
    "w4a8_g32": _w4a8,
    "bitlinear": _bitlinear,
    "quantized_linear_int4_b32": _quantized_linear(weight_bits=4, block_size=32, zero_point=True),
    "quantized_linear_int8_b32": _quantized_linear(weight_bits=8, block_size=32),  # int8_blockwise_linear
    "quantized_linear_w8a8": _quantized_linear(
        weight_bits=8, quantize_activation=True
    ),  # int8_dynamic_linear
    "lora_int8": _lora_int8,
}

# name -> (torch.compile keywords, views made inside the graph)
MODES = {
    "eager": None,
    "frozen_views_in": (dict(backend="quant_inductor"), False),
    "frozen_views_inside": (dict(backend="quant_inductor"), True),
    "graph_input_weights": (dict(backend="quant_inductor", options={"inductor_quant.freezing": False}), True),
    "frozen_dynamic": (dict(backend="quant_inductor", dynamic=True), True),
}


def _check(name, outs, views, reference):
    for layout, out, x in zip(LAYOUTS, outs, views, strict=True):
        assert out.shape == (*x.shape[:-1], N), (layout, out.shape)
        expected = reference(_rows(x)).reshape(out.shape)
        db = sqnr(expected, out.float())
        assert db >= MIN_SQNR_DB, f"{name} / {layout}: {db:.1f} dB from the fp32 reference"


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("module", MODULES)
def test_every_activation_layout(module, mode, seed):
    layer, reference = MODULES[module](seed)
    layer.eval()
    bases = _bases(seed)
    views = _views(bases)
    with torch.no_grad():
        if MODES[mode] is None:
            outs = [layer(x) for x in views]
        else:
            kwargs, inside = MODES[mode]
            if inside:
                run = torch.compile(lambda *bs: [layer(x) for x in _views(bs)], **kwargs)
                outs = run(*bases)
            else:
                run = torch.compile(lambda *xs: [layer(x) for x in xs], **kwargs)
                outs = run(*views)
    _check(f"{module} {mode}", outs, views, reference)
    if mode == "frozen_views_inside" and module in ("int8", "int4_g32"):
        # the decode-sized layouts ran the packed GEMV (the prefill slice took the prefill kernel)
        scheme = module.split("_")[0]
        assert counters["inductor_quant"][f"{scheme}_kernel_{scheme}_gemv_packed"] >= 6, dict(
            counters["inductor_quant"]
        )


# --- the weight side: quantized tensors whose inner tensors are views ---------------------------------------------


def _strided(t: torch.Tensor) -> torch.Tensor:
    """``t``'s values as a view with a storage offset and a row stride wider than its rows (columns of a bigger
    buffer); 1-D tensors as every other element of one."""
    if t.dim() == 1:
        wide = torch.zeros(2 * t.shape[0] + 1, dtype=t.dtype)
        view = wide[1::2]
    else:
        wide = torch.zeros(t.shape[0], t.shape[1] + 8, dtype=t.dtype)
        view = wide[:, 5 : 5 + t.shape[1]]
    view.copy_(t)
    assert not view.is_contiguous() or view.storage_offset() != 0
    return view


@pytest.mark.parametrize("frozen", [True, False], ids=["frozen", "graph_input_weights"])
@pytest.mark.parametrize("module", ["int8", "int4_g32", "w4a8_g32"])
def test_weights_scales_and_bias_as_views(module, frozen):
    """Inner tensors (qdata, scale, zero point) and the bias held as strided views at an offset: eager and
    compiled read the values, not the first bytes of the buffer."""
    layer, reference = MODULES[module](0)
    w = layer.weight
    layer.weight = nn.Parameter(w._rebuild(_strided), requires_grad=False)
    layer.bias = nn.Parameter(_strided(layer.bias.detach()), requires_grad=False)
    views = _views(_bases(0))
    options = None if frozen else {"inductor_quant.freezing": False}
    with torch.no_grad():
        eager = [layer(x) for x in views]
        compiled = torch.compile(
            lambda *xs: [layer(x) for x in xs], backend="quant_inductor", options=options
        )(*views)
    _check(f"{module} eager", eager, views, reference)
    _check(f"{module} compiled", compiled, views, reference)
