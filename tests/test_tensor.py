"""The weight subclasses (int8, int4): eager numerics, the kernel they run, serialization, traceability."""

import io

import pytest
import torch
from torch import nn

import inductor_quant as iq
from inductor_quant.primitives import int4_linear_reference, int8_linear_reference, sqnr

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _quantized_linear(dtype, bias=True, k=256, n=65):
    torch.manual_seed(0)
    lin = nn.Linear(k, n, bias=bias).to(dtype)
    ref = nn.Linear(k, n, bias=bias).to(dtype)
    ref.load_state_dict(lin.state_dict())
    iq.quantize_(lin, iq.Int8WeightOnlyConfig())
    return lin, ref


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 256), (5, 256), (2, 3, 256)])
def test_eager_forward_matches_float_layer(dtype, shape):
    lin, ref = _quantized_linear(dtype)
    x = torch.randn(*shape, dtype=dtype)
    with torch.no_grad():
        y, y_ref = lin(x), ref(x)
    assert y.shape == y_ref.shape and y.dtype == dtype
    # reference 1: the float layer (quantization error only) -- SQNR >= 35 dB
    assert sqnr(y_ref, y) >= 35
    # reference 2: the exact int8 math in fp32
    w = lin.weight
    expected = int8_linear_reference(x.reshape(-1, 256), w.plain_qdata(), w.scale, lin.bias).reshape(y.shape)
    from conftest import verify

    verify(y, expected)


@pytest.mark.parametrize("layout", ["blocked", "plain"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_eager_forward_runs_the_int8_kernel_not_a_float_weight(dtype, layout, monkeypatch):
    lin, _ = _quantized_linear(dtype)
    if layout == "plain":
        lin.weight = nn.Parameter(lin.weight.with_layout("plain"), requires_grad=False)
    assert lin.weight.layout == layout  # quantize_ holds a CPU weight blocked

    def no_float_weight(*args, **kwargs):
        raise AssertionError("eager forward materialized a float weight")

    monkeypatch.setattr(iq.Int8WeightTensor, "dequantize", no_float_weight)
    import inductor_quant.kernels as kernels

    native_calls = []
    for name in ("int8_gemm", "int8_gemv_blocked"):
        real = getattr(kernels, name)
        monkeypatch.setattr(
            kernels, name, lambda *a, name=name, real=real, **kw: native_calls.append(name) or real(*a, **kw)
        )
    with torch.no_grad(), torch.profiler.profile() as prof:
        lin(torch.randn(4, 256, dtype=dtype))
    names = {e.name for e in prof.events()}
    assert "aten::mm" not in names, names
    if layout == "blocked":
        # the package's native kernels on the blocked layout: the GEMV for a few bf16 rows, else the GEMM
        assert "inductor_quant::int8_weight_linear_packed" in names, names
        assert native_calls == (
            ["int8_gemv_blocked"] if dtype == torch.bfloat16 else ["int8_gemv_blocked", "int8_gemm"]
        )
        return
    assert "inductor_quant::int8_weight_linear" in names, names
    # the int8 kernel: aten's for bf16 decode rows, the package's native GEMM (int8 weight widened in registers)
    # for fp32 / fp16, where aten's is 5-50x slower
    if dtype == torch.bfloat16:
        assert "aten::_weight_int8pack_mm" in names and not native_calls, names
    else:
        assert native_calls == ["int8_gemm"] and "aten::_weight_int8pack_mm" not in names, names


def test_backward_reaches_the_input_through_the_frozen_weight():
    lin, ref = _quantized_linear(torch.float32, bias=True)
    x = torch.randn(3, 256, requires_grad=True)
    lin(x).sum().backward()
    w = lin.weight.dequantize()
    torch.testing.assert_close(x.grad, torch.ones(3, 65) @ w, atol=1e-4, rtol=1e-4)


def test_state_dict_round_trip_is_exact():
    lin, _ = _quantized_linear(torch.bfloat16)
    other, _ = _quantized_linear(torch.bfloat16)
    other.weight.qdata.zero_()
    other.load_state_dict(lin.state_dict())
    torch.testing.assert_close(other.weight.qdata, lin.weight.qdata, atol=0, rtol=0)
    torch.testing.assert_close(other.weight.scale, lin.weight.scale, atol=0, rtol=0)


def test_torch_save_load_weights_only():
    lin, _ = _quantized_linear(torch.float16)
    buf = io.BytesIO()
    torch.save(lin.state_dict(), buf)
    buf.seek(0)
    sd = torch.load(buf, weights_only=True)
    w = sd["weight"]
    assert isinstance(w, iq.Int8WeightTensor) and w.dtype == torch.float16
    torch.testing.assert_close(w.qdata, lin.weight.qdata, atol=0, rtol=0)
    torch.testing.assert_close(w.scale, lin.weight.scale, atol=0, rtol=0)


def test_module_to_dtype_keeps_int8_data():
    lin, _ = _quantized_linear(torch.float32)
    q = lin.weight.qdata.clone()
    lin.to(torch.bfloat16)
    assert isinstance(lin.weight, iq.Int8WeightTensor) and lin.weight.dtype == torch.bfloat16
    torch.testing.assert_close(lin.weight.qdata, q, atol=0, rtol=0)


def test_unsupported_op_names_itself():
    lin, _ = _quantized_linear(torch.float32)
    with pytest.raises(NotImplementedError, match="aten.sin"):
        torch.sin(lin.weight)


@pytest.mark.parametrize("scheme", ["int8", "int4"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_subclass_compiles_without_graph_breaks(dtype, scheme):
    lin, _ = (_quantized_linear if scheme == "int8" else _int4_linear)(dtype)
    model = nn.Sequential(lin, nn.ReLU())
    x = torch.randn(2, 3, 256, dtype=dtype)
    explanation = torch._dynamo.explain(model)(x)
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1
    with torch.no_grad():
        y = torch.compile(model, backend="aot_eager", fullgraph=True)(x)
        from conftest import verify

        verify(y, model(x))


# --- int4 groupwise -----------------------------------------------------------------------------------


def _int4_linear(dtype, group_size=128, bias=True, k=256, n=72):
    torch.manual_seed(0)
    lin = nn.Linear(k, n, bias=bias).to(dtype)
    ref = nn.Linear(k, n, bias=bias).to(dtype)
    ref.load_state_dict(lin.state_dict())
    iq.quantize_(lin, iq.Int4WeightOnlyConfig(group_size=group_size))
    return lin, ref


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("group_size", [32, 64, 128, 256])
def test_int4_eager_forward(dtype, group_size):
    lin, ref = _int4_linear(dtype, group_size, k=512)
    x = torch.randn(2, 3, 512, dtype=dtype)
    with torch.no_grad():
        y, y_ref = lin(x), ref(x)
    assert y.shape == y_ref.shape and y.dtype == dtype
    # reference 1: the float layer. Uniform-init weights quantize better than normal ones (tests/test_primitives
    # holds the N(0, 1) figure); 20 dB is the floor.
    assert sqnr(y_ref, y) >= 20
    # reference 2: the exact int4 math in fp32
    w = lin.weight
    expected = int4_linear_reference(
        x.reshape(-1, 512), w.plain_qdata(), w.scale, w.zero_point, group_size, lin.bias
    ).reshape(y.shape)
    from conftest import verify

    verify(y, expected)


def test_int4_eager_forward_never_builds_the_whole_float_weight(monkeypatch):
    lin, _ = _int4_linear(torch.bfloat16)

    def no_float_weight(*args, **kwargs):
        raise AssertionError("eager forward materialized a float weight")

    monkeypatch.setattr(iq.Int4WeightTensor, "dequantize", no_float_weight)
    with torch.no_grad(), torch.profiler.profile() as prof:
        lin(torch.randn(4, 256, dtype=torch.bfloat16))
    # (a CPU weight with K % 128 == 0 is held in the blocked layout: the op on that layout)
    assert "inductor_quant::int4_weight_linear_packed" in {e.name for e in prof.events()}


def test_int4_backward_reaches_the_input():
    lin, _ = _int4_linear(torch.float32)
    x = torch.randn(3, 256, requires_grad=True)
    lin(x).sum().backward()
    torch.testing.assert_close(x.grad, torch.ones(3, 72) @ lin.weight.dequantize(), atol=1e-4, rtol=1e-4)


def test_int4_state_dict_and_torch_load_are_exact():
    lin, _ = _int4_linear(torch.bfloat16, group_size=64)
    other, _ = _int4_linear(torch.bfloat16, group_size=64)
    other.weight.qdata.zero_()
    buf = io.BytesIO()
    torch.save(lin.state_dict(), buf)
    buf.seek(0)
    other.load_state_dict(torch.load(buf, weights_only=True))
    assert torch.equal(other.weight, lin.weight)  # every field, group size and orientation
    for name in ("qdata", "scale", "zero_point"):
        torch.testing.assert_close(getattr(other.weight, name), getattr(lin.weight, name), atol=0, rtol=0)


def test_int4_copy_between_group_sizes_is_an_error():
    a, _ = _int4_linear(torch.float32, group_size=64)
    b, _ = _int4_linear(torch.float32, group_size=128)
    # load_state_dict wraps the ValueError of copy_ in a RuntimeError; the message names both group sizes
    with pytest.raises(
        RuntimeError, match=r"'group_size': 64, 'layout': 'blocked'\} into one, got .*group_size=128"
    ):
        a.load_state_dict(b.state_dict())


# --- W4A8: int4 weights, int8 per-token activations ---------------------------------------------------------


def _a8_linear(dtype, group_size=64, k=256, n=72):
    torch.manual_seed(0)
    lin = nn.Linear(k, n).to(dtype)
    ref = nn.Linear(k, n).to(dtype)
    ref.load_state_dict(lin.state_dict())
    iq.quantize_(lin, iq.Int8DynamicActivationInt4WeightConfig(group_size=group_size))
    return lin, ref


@pytest.mark.parametrize("dtype", DTYPES)
def test_a8_eager_forward_is_the_w4a8_reference_and_close_to_float(dtype):
    from conftest import verify

    from inductor_quant.primitives import int4_a8_linear_reference

    lin, ref = _a8_linear(dtype)
    w = lin.weight
    assert type(w) is iq.Int4WeightA8Tensor and w.group_size == 64
    x = torch.randn(2, 3, 256, dtype=dtype)
    with torch.no_grad():
        out = lin(x)
        expected = int4_a8_linear_reference(x.reshape(6, 256), w.qdata, w.scale, w.zero_point, 64, lin.bias)
        # eagerly the weight is widened to the activation dtype (fp32 for fp32) before the GEMM
        verify(out.reshape(6, 72), expected, precision=dtype)
        assert sqnr(ref(x).float(), out.float()) >= 20  # int4 weights dominate; int8 activations cost ~1 dB


def test_a8_same_weight_as_int4_weight_only():
    # the option changes the activations only: the stored weight is Int4WeightOnlyConfig's, bit for bit
    lin, _ = _a8_linear(torch.bfloat16)
    torch.manual_seed(0)
    plain = iq.quantize_(nn.Linear(256, 72).to(torch.bfloat16), iq.Int4WeightOnlyConfig(group_size=64))
    for name in ("qdata", "scale", "zero_point"):  # (W4A8's held plain, int4 weight-only's blocked)
        assert torch.equal(getattr(lin.weight, name), getattr(plain.weight.canonical(), name))


def test_a8_forward_that_needs_gradients_is_an_error_naming_the_option():
    lin, _ = _a8_linear(torch.float32)
    with pytest.raises(
        NotImplementedError, match=r"Int8DynamicActivationInt4WeightConfig\) are inference-only"
    ):
        lin(torch.randn(2, 256, requires_grad=True))
    lin(torch.randn(2, 256))  # no gradient needed: fine


def test_a8_torch_load_weights_only_keeps_the_class():
    lin, _ = _a8_linear(torch.bfloat16)
    buf = io.BytesIO()
    torch.save(lin.state_dict(), buf)
    buf.seek(0)
    sd = torch.load(buf, weights_only=True)
    assert type(sd["weight"]) is iq.Int4WeightA8Tensor and torch.equal(sd["weight"], lin.weight)


def test_a8_compiles_without_graph_breaks():
    lin, _ = _a8_linear(torch.bfloat16)
    x = torch.randn(2, 3, 256, dtype=torch.bfloat16)
    with torch.no_grad():
        explanation = torch._dynamo.explain(lin)(x)
        assert explanation.graph_break_count == 0 and explanation.graph_count == 1
        assert torch.equal(torch.compile(lin, backend="aot_eager", fullgraph=True)(x), lin(x))


def test_cpu_int8_weights_are_held_in_the_kernels_blocked_layout():
    """quantize_ keeps a CPU int8 weight (K % 32 == 0) in the blocked layout its kernels read, so a compiled model
    holds no second copy; every other reader sees the canonical [N, K] values, unchanged."""
    from inductor_quant.distributed.sharding import slice_weight
    from inductor_quant.primitives import quantize_int8_per_channel, unpack_int8_blocked

    torch.manual_seed(0)
    lin = nn.Linear(64, 10).to(torch.bfloat16)
    q, s = quantize_int8_per_channel(lin.weight)
    iq.quantize_(lin, iq.Int8WeightOnlyConfig())
    w = lin.weight
    assert w.layout == "blocked" and w.shape == (10, 64) and w.qdata.shape == (12 * 64,)  # N padded to 4 rows
    assert torch.equal(unpack_int8_blocked(w.qdata, 10, 64), q) and torch.equal(w.scale, s)
    plain = w.canonical()
    assert plain.layout == "plain" and torch.equal(plain.qdata, q) and torch.equal(w, plain)
    assert torch.equal(w.dequantize(), plain.dequantize())
    rows = torch.tensor([7, 0, 9])
    assert torch.equal(w.rows(rows).dequantize(), plain.dequantize()[rows])
    emb = nn.Embedding(10, 64)
    emb.weight = w  # a tied embedding reads rows of the blocked weight
    assert torch.equal(emb(rows), plain.dequantize()[rows])
    assert torch.equal(slice_weight(w, 0, 4, 8).qdata, q[4:8])  # shards are canonical
    assert w.to("meta").layout == "plain"  # kernel layouts belong to the CPU
    target = iq.Int8WeightTensor(
        torch.zeros(12 * 64, dtype=torch.int8), torch.zeros(10), dtype=torch.bfloat16, layout="blocked"
    )
    target.copy_(plain)  # e.g. load_state_dict of a saved (plain) weight: converted into the target's layout
    assert target.layout == "blocked" and torch.equal(target.qdata, w.qdata)
    # the layout follows K and the config
    odd = iq.quantize_(nn.Linear(40, 8), iq.Int8WeightOnlyConfig()).weight
    forced = iq.quantize_(nn.Linear(64, 8), iq.Int8WeightOnlyConfig(layout="plain")).weight
    assert odd.layout == "plain" and forced.layout == "plain"
    with pytest.raises(ValueError, match="layout"):
        iq.Int8WeightOnlyConfig(layout="tiled")


def test_cpu_int4_weights_are_held_blocked_where_k_allows_and_w4a8_plain():
    from inductor_quant.primitives import quantize_int4_groupwise, unpack_int4_blocked

    torch.manual_seed(0)
    lin = nn.Linear(256, 10).to(torch.bfloat16)
    q, s, z = quantize_int4_groupwise(lin.weight, 64, torch.bfloat16, torch.uint8)
    iq.quantize_(lin, iq.Int4WeightOnlyConfig(group_size=64))
    w = lin.weight
    assert w.layout == "blocked" and w.shape == (10, 256) and w.qdata.shape == (12 * 128,)
    assert torch.equal(unpack_int4_blocked(w.qdata, 10, 256), q) and torch.equal(w.scale, s)
    plain = w.canonical()
    assert torch.equal(plain.qdata, q) and torch.equal(plain.zero_point, z) and torch.equal(w, plain)
    rows = torch.tensor([9, 2])
    assert torch.equal(w.rows(rows).dequantize(), plain.dequantize()[rows])
    x = torch.randn(3, 256, dtype=torch.bfloat16)
    with torch.no_grad():
        torch.testing.assert_close(lin(x), torch.nn.functional.linear(x, plain.dequantize(), lin.bias))
    # K = 576 (SmolLM2) is not a multiple of the layout's 128-value step: plain; W4A8 is always held plain
    assert iq.quantize_(nn.Linear(576, 8), iq.Int4WeightOnlyConfig(group_size=64)).weight.layout == "plain"
    a8 = iq.quantize_(nn.Linear(256, 8), iq.Int8DynamicActivationInt4WeightConfig(group_size=64)).weight
    assert a8.layout == "plain"
    with pytest.raises(ValueError, match="held plain"):
        iq.Int8DynamicActivationInt4WeightConfig(layout="blocked")
