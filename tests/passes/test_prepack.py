"""Compile-time prepacking: which weights are packed, once each, and only when the GEMV will read them."""

from __future__ import annotations

import gc

import pytest
import torch
import torch.nn.functional as F
from conftest import compile_and_run, constant_bytes, constant_sizes, int8_weight, small_llama, verify
from torch import nn
from torch._dynamo.utils import counters
from torch.testing import FileCheck

from inductor_quant.primitives import int8_linear_reference


class SharedWeight(nn.Module):
    """Two linears reading the same int8 weight (e.g. tied projections)."""

    def __init__(self, k=64, n=40):
        super().__init__()
        _, q, s = int8_weight(n, k)
        self.register_buffer("w", q)
        self.register_buffer("s", s.to(torch.bfloat16))

    def forward(self, x):
        a = F.linear(x, self.w.to(x.dtype)) * self.s
        b = F.linear(x * 2, self.w.to(x.dtype)) * self.s
        return a + b


def test_a_shared_weight_is_packed_once():
    model = SharedWeight()
    x = torch.randn(3, 64, dtype=torch.bfloat16)
    out, code = compile_and_run(model, x)
    assert counters["inductor_quant"]["int8_prepacked"] == 2
    assert (
        counters["inductor_quant"]["int8_prepacked_bytes"] == 40 * 64
    )  # N padded to 40 (already a multiple of 4)
    assert code.count("_iq_packed = rand_strided") == 1
    expected = int8_linear_reference(x, model.w, model.s) + int8_linear_reference(x * 2, model.w, model.s)
    verify(out, expected)


def test_prepack_option_off_keeps_the_row_major_weight():
    out, code = compile_and_run(
        SharedWeight(), torch.randn(3, 64, dtype=torch.bfloat16), options={"inductor_quant.prepack": False}
    )
    assert counters["inductor_quant"]["int8_prepacked"] == 0 and "_iq_packed" not in code
    assert "weight=row-major" in code or "inductor_quant_int8_linear_aten" in code


def test_prefill_shapes_are_not_packed():
    _, code = compile_and_run(SharedWeight(), torch.randn(33, 64, dtype=torch.bfloat16))
    assert counters["inductor_quant"]["int8_prepacked"] == 0
    assert counters["inductor_quant"]["int8_kernel_dequant_mm"] == 2


# --- int4 ---------------------------------------------------------------------------------------------


class SharedInt4Weight(nn.Module):
    """Two int4 linears reading the same weight, held plain (the prepack pass packs it); N = 42 is padded to 44 rows
    when packed."""

    def __init__(self, k=256, n=42):
        super().__init__()
        import inductor_quant as iq

        config = iq.Int4WeightOnlyConfig(group_size=32, layout="plain")
        self.lin = iq.quantize_(nn.Linear(k, n).to(torch.bfloat16), config)

    def forward(self, x):
        return self.lin(x) + self.lin(x * 2)

    def reference(self, x):
        from inductor_quant.primitives import int4_linear_reference

        w, b = self.lin.weight, self.lin.bias
        return int4_linear_reference(x, w.qdata, w.scale, w.zero_point, 32, b) + int4_linear_reference(
            x * 2, w.qdata, w.scale, w.zero_point, 32, b
        )


def test_a_shared_int4_weight_is_packed_once():
    model = SharedInt4Weight()
    x = torch.randn(3, 256, dtype=torch.bfloat16)
    out, code = compile_and_run(model, x)
    assert counters["inductor_quant"]["int4_prepacked"] == 2
    assert counters["inductor_quant"]["int4_prepacked_bytes"] == 44 * 256 // 2
    assert code.count("_iq_packed = rand_strided") == 1
    verify(out, model.reference(x))


def test_int4_prepack_off_and_prefill_read_the_plain_weight():
    x = torch.randn(3, 256, dtype=torch.bfloat16)
    out, code = compile_and_run(SharedInt4Weight(), x, options={"inductor_quant.prepack": False})
    assert counters["inductor_quant"]["int4_prepacked"] == 0 and "_iq_packed" not in code
    counters.clear()
    torch._dynamo.reset()
    _, code = compile_and_run(SharedInt4Weight(), torch.randn(33, 256, dtype=torch.bfloat16))
    assert counters["inductor_quant"]["int4_prepacked"] == 0
    assert counters["inductor_quant"]["int4_kernel_dequant_mm"] == 2


def test_ternary_per_tensor_scale_is_repeated_so_layers_share_one_kernel(monkeypatch):
    """Inductor would inline each layer's [1] scale as a literal: one kernel (one C++ compile) per layer."""
    from inductor_quant.nn import BitLinear

    # the template, not the autotuner's pick (which depends on the machine's load)
    monkeypatch.setenv("INDUCTOR_QUANT_TERNARY_KERNEL", "ternary_gemv")

    torch.manual_seed(0)
    model = nn.Sequential(*(BitLinear(256, 256, bias=False) for _ in range(3))).eval()
    for layer in model:
        layer.deploy()
    x = torch.randn(1, 256)
    out, code = compile_and_run(model, x)
    assert counters["inductor_quant"]["ternary_scale_repeated"] == 3
    # three layers, one template kernel definition, called three times
    FileCheck().check_count("// inductor_quant ternary_gemv:", 1, exactly=True).run(code)
    with torch.no_grad():
        torch.testing.assert_close(out, model(x), atol=0, rtol=0)


class _OutDtypeInt8(nn.Module):
    """The op called with ``out_dtype`` positionally (as ``quantized_matmul`` does)."""

    def __init__(self, q, s):
        super().__init__()
        self.register_buffer("q", q)
        self.register_buffer("s", s)

    def forward(self, x):
        return torch.ops.inductor_quant.int8_weight_linear(x, self.q, self.s, None, torch.float32)


def test_positional_out_dtype_survives_prepacking():
    # before: the packed op got out_dtype=None and returned bf16 where the graph expected fp32
    _, q, s = int8_weight(64, 128)
    model = _OutDtypeInt8(q, s)
    x = torch.randn(2, 128, dtype=torch.bfloat16)
    out, _ = compile_and_run(model, x)
    assert counters["inductor_quant"]["int8_prepacked"] == 1
    verify(out, int8_linear_reference(x, q, s, out_dtype=torch.float32))


# --- sibling linears: one GEMV over concatenated weights ------------------------------------------------------


class Attention(nn.Module):
    """q / k / v projections of one normed activation (k and v narrower, as with grouped KV heads), each read
    through its own view, then consumers of each output; an unrelated linear of another input stays alone."""

    def __init__(self, k=256, bias=False):
        super().__init__()
        self.q, self.k, self.v = (
            nn.Linear(k, k, bias=bias),
            nn.Linear(k, 64, bias=bias),
            nn.Linear(k, 64, bias=bias),
        )
        self.o = nn.Linear(k, k, bias=bias)

    def forward(self, x):
        h = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
        q, k, v = self.q(h), self.k(h), self.v(h)
        return self.o(q * 2) + (k * v).repeat(1, 1, 4)


def _quantized_attention(config, bias=False):
    import inductor_quant as iq

    torch.manual_seed(0)
    return iq.quantize_(Attention(bias=bias).to(torch.bfloat16), config)


@pytest.mark.parametrize("scheme", ["int8", "int4", "int8 bias"])
def test_linears_reading_one_activation_run_as_one_gemv(scheme):
    import inductor_quant as iq

    config = (
        iq.Int8WeightOnlyConfig() if scheme.startswith("int8") else iq.Int4WeightOnlyConfig(group_size=64)
    )
    model = _quantized_attention(config, bias="bias" in scheme)
    x = torch.randn(1, 1, 256, dtype=torch.bfloat16)
    with torch.no_grad():
        expected = model(x)
        out, code = compile_and_run(model, x)
    kind = scheme.split()[0]
    assert counters["inductor_quant"]["linears_fused"] == 2
    # quantize_ holds the weights in the blocked layout already (K = 256): nothing is packed; q, k, v (weights,
    # scales, int4's zero points, biases) are moved into one storage each, which the module and the fused GEMV share
    assert counters["inductor_quant"][f"{kind}_prepacked"] == 0
    fields = 3 if kind == "int4" else 2
    assert counters["inductor_quant"]["constants_joined"] == 3 * (fields + ("bias" in scheme))
    storages = {getattr(model, name).weight.qdata.untyped_storage().data_ptr() for name in "qkv"}
    assert len(storages) == 1
    per_row = 256 if kind == "int8" else 256 // 2
    joined = [b for name, b in constant_sizes(code).items() if name.endswith("_iq_joined")]
    assert max(joined) == (256 + 64 + 64) * per_row
    # every int8 / uint8 byte the graph holds is the module's, once: q | k | v joined, and o (int4: + zero points)
    held = constant_bytes(code)["int8" if kind == "int8" else "uint8"]
    assert held == (256 + 64 + 64 + 256) * per_row + (0 if kind == "int8" else (256 + 64 + 64 + 256) * 4)
    verify(out, expected)


def test_linears_of_different_schemes_are_not_fused():
    import inductor_quant as iq

    torch.manual_seed(0)
    model = Attention().to(torch.bfloat16)
    iq.quantize_(model, iq.Int4WeightOnlyConfig(group_size=64), filter_fn=lambda m, name: name == "k")
    iq.quantize_(
        model, iq.Int8WeightOnlyConfig(), filter_fn=lambda m, name: isinstance(m, nn.Linear) and name != "k"
    )
    x = torch.randn(1, 1, 256, dtype=torch.bfloat16)
    with torch.no_grad():
        expected = model(x)
        out, _ = compile_and_run(model, x)
    assert counters["inductor_quant"]["linears_fused"] == 1  # q and v; k is int4
    verify(out, expected)


# --- one copy: a model's weights are packed once, whatever graphs read them ------------------------------------


@pytest.mark.parametrize("scheme", ["int8", "int4", "int4 plain"])
def test_every_graph_of_a_model_holds_each_weight_once(scheme):
    """HF generate() with a static cache, compiled with static shapes: each prompt length is a graph of its own
    (M <= 16: decode kernels), as are the one-token step and a second torch.compile of the model. The storages that
    hold the model's weights, counted by data pointer over the module and every graph that holds one of them, after
    the first generate() and after all of them: the module's own alone (its weights held in the kernels' blocked
    layout, sibling linears' weights moved into one storage, not copied); with ``layout="plain"``, the module's own
    plus one packed copy per weight, made once and shared by every graph."""
    import inductor_quant as iq

    pytest.importorskip("transformers")
    model = small_llama(torch.bfloat16)
    kind, plain = scheme.split()[0], scheme.endswith("plain")
    layout = "plain" if plain else "auto"
    config = (
        iq.Int8WeightOnlyConfig(layout=layout)
        if kind == "int8"
        else iq.Int4WeightOnlyConfig(group_size=32, layout=layout)
    )
    iq.quantize_(model, config)
    forward = model.forward

    def generate(length):
        ids = torch.randint(3, 512, (1, length), generator=torch.Generator().manual_seed(length))
        with torch.no_grad():
            model.generate(ids, max_new_tokens=2, do_sample=False, cache_implementation="static")

    model.forward = torch.compile(forward, backend="quant_inductor", dynamic=False)
    generate(5)
    packed = counters["inductor_quant"][f"{kind}_prepacked_bytes"]
    first = iq.resident_weight_bytes(model)
    # (+ constants Inductor folds for each graph that are not weights, such as rope's 16 inverse frequencies)
    slack = 0.002 * iq.weight_bytes(model)
    if plain:
        assert packed > 0
    else:
        assert (
            packed == 0 and counters["inductor_quant"]["constants_joined"] > 0
        )  # held blocked: nothing packed
    assert first <= iq.weight_bytes(model) + packed + slack
    generate(9)
    model.forward = torch.compile(forward, backend="quant_inductor", dynamic=False)  # a second compile
    generate(5)
    assert counters["stats"]["unique_graphs"] == 5  # prompts of 5, 9 and again 5 tokens, two step graphs
    assert counters["inductor_quant"][f"{kind}_prepacked_bytes"] == packed  # nothing packed twice
    assert counters["inductor_quant"]["prepack_reused_bytes"] >= 4 * packed
    assert iq.resident_weight_bytes(model) <= first + slack

    # the packed copies go with the graphs that hold them
    model.forward = forward
    torch._dynamo.reset()
    gc.collect()
    assert iq.resident_weight_bytes(model) == iq.weight_bytes(model)


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_a_compiled_model_still_saves_runs_and_compiles_as_before(scheme, tmp_path):
    """Packing never changes the module's values (int8 fusion moves q / k / v into one storage, same bytes). After
    quant_inductor has compiled and run a model (its weights packed or joined), the state dict and a safetensors round trip of it hold quantize_'s values bit for bit, the
    eager model answers exactly as before compiling, a Dynamo reset and recompile answers as the first compile did,
    and stock Inductor on the same model takes its own path (no packing) to the same answer."""
    import inductor_quant as iq

    pytest.importorskip("transformers")
    model = small_llama(torch.bfloat16)
    iq.quantize_(
        model, iq.Int8WeightOnlyConfig() if scheme == "int8" else iq.Int4WeightOnlyConfig(group_size=32)
    )
    before = {name: t.clone() for name, t in model.state_dict().items()}
    ids = torch.randint(3, 512, (1, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        eager = model(ids).logits
        first = torch.compile(model, backend="quant_inductor")(ids).logits
        done = "constants_joined"
        assert counters["inductor_quant"][done] > 0
        verify(first, eager)

        after = model.state_dict()
        iq.save_safetensors(model, tmp_path / "model.safetensors")
        loaded = iq.load_safetensors(tmp_path / "model.safetensors")
        for name, value in before.items():  # subclasses compare every field and attribute
            assert torch.equal(after[name], value) and torch.equal(loaded[name], value), name
        assert torch.equal(model(ids).logits, eager)

        torch._dynamo.reset()
        verify(torch.compile(model, backend="quant_inductor")(ids).logits, first)
        packed = counters["inductor_quant"][done]
        torch._dynamo.reset()
        verify(torch.compile(model)(ids).logits, eager)
        assert counters["inductor_quant"][done] == packed
