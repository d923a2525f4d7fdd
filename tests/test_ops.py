import pytest
import torch

import inductor_quant  # noqa: F401
from inductor_quant.kernels import AMX_MIN_M
from inductor_quant.primitives import int8_linear_reference, pack_int8_blocked

op = torch.ops.inductor_quant.int8_weight_linear
packed_op = torch.ops.inductor_quant.int8_weight_linear_packed


def _args(m=5, n=65, k=96, dtype=torch.bfloat16, bias=True):
    x = torch.randn(m, k, dtype=dtype)
    q = torch.randint(-127, 128, (n, k), dtype=torch.int8)
    s = torch.rand(n) / 100
    b = torch.randn(n, dtype=dtype) if bias else None
    return x, q, s, b


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_opcheck(dtype):
    x, q, s, b = _args(dtype=dtype)
    torch.library.opcheck(op, (x, q, s, b), {"out_dtype": None})
    torch.library.opcheck(packed_op, (x, pack_int8_blocked(q), s, b, torch.float32, q.shape[0]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("out_dtype", [None, torch.float32])
def test_eager_op_matches_reference(dtype, out_dtype):
    from conftest import verify

    x, q, s, b = _args(dtype=dtype)
    expected = int8_linear_reference(x, q, s, b, out_dtype)
    verify(op(x, q, s, b, out_dtype=out_dtype), expected, precision=dtype)
    verify(packed_op(x, pack_int8_blocked(q), s, b, out_dtype, 65), expected, precision=dtype)


# the widening GEMM (kernels/widening_gemm.cpp) computes bf16 activations with bf16 dot products and fp32 / fp16
# ones with fp32 FMAs; every result is compared with fp32 math at the tolerance of its own dtype
NATIVE_CASES = [
    (torch.bfloat16, torch.bfloat16),
    (torch.bfloat16, torch.float32),
    (torch.float32, torch.float32),
    (torch.float16, torch.float16),
    (torch.float16, torch.float32),
]


@pytest.mark.parametrize(
    "m, n, k",
    [(33, 64, 32), (40, 130, 1056), (301, 65, 2080)],  # row / column tails; K past one slice
)
@pytest.mark.parametrize("dtype, out_dtype", NATIVE_CASES)
def test_int8_native_gemm_matches_reference(m, n, k, dtype, out_dtype, cpu_isa):
    """int8: exact products, fp32 sums, the scale and bias in fp32, one rounding; an fp32 result is held to fp32's
    tolerance, not bf16's."""
    from conftest import verify

    from inductor_quant.kernels import int8_gemm

    torch.manual_seed(m)
    x, q, s, b = _args(m=m, n=n, k=k, dtype=dtype)
    q[0, :2] = torch.tensor([-128, 127], dtype=torch.int8)  # both ends of int8
    for bias in (b, None):
        out = int8_gemm(x, q, s, bias, out_dtype)
        assert out is not None, "the native GEMM should apply here (CPU, K % 32 == 0, AVX512-BF16)"
        verify(out, int8_linear_reference(x, q, s, bias, out_dtype))


@pytest.mark.parametrize("blocks", [1, 4, 33])  # blocks of K, 256 (1024 / 4) and 32 (1056 / 33)
@pytest.mark.parametrize("dtype, out_dtype", NATIVE_CASES)
def test_int8_blockwise_native_gemm_matches_reference(blocks, dtype, out_dtype, cpu_isa):
    """Blockwise int8: W = q * s per block in fp32, rounded once to the activation dtype (as the eager chunked path
    does), fp32 sums. The reference builds that weight and multiplies in fp32."""
    from conftest import verify

    from inductor_quant.kernels import int8_block_gemm

    torch.manual_seed(blocks)
    k = 1024 if blocks != 33 else 1056
    x, q, _, b = _args(m=45, n=130, k=k, dtype=dtype)
    s = torch.rand(130, blocks) / 100
    w = (q.float().reshape(130, blocks, -1) * s[:, :, None]).reshape(130, k).to(dtype).float()
    for bias in (b, None):
        out = int8_block_gemm(x, q, s, bias, out_dtype)
        assert out is not None
        expected = x.float() @ w.t() + (bias.float() if bias is not None else 0)
        verify(out, expected.to(out_dtype))
        op_out = torch.ops.inductor_quant.int8_blockwise_linear(x, q, s, bias, out_dtype)
        verify(op_out, expected.to(out_dtype))
    blocks_of_16 = torch.rand(130, k // 16)
    assert int8_block_gemm(x, q, blocks_of_16, b, out_dtype) is None


@pytest.mark.parametrize(
    ("dtype", "m", "amx"),
    [(torch.bfloat16, AMX_MIN_M, True), (torch.bfloat16, AMX_MIN_M - 1, False), (torch.float32, 64, False)],
)
def test_the_native_gemm_multiplies_on_amx_tiles_where_asked(dtype, m, amx, cpu_isa):
    """bf16 activations of at least ``AMX_MIN_M`` rows take AMX tiles where the CPU has them and
    ``INDUCTOR_QUANT_CPU_ISA`` allows it; fewer rows, other dtypes and ``avx512`` take AVX512 (the compute the
    kernel is given decides; its numbers are the matching-reference tests' above, per ISA)."""
    from inductor_quant.kernels import _compute

    assert (_compute(torch.zeros(m, 64, dtype=dtype)) == 3) == (amx and cpu_isa == "amx")


def test_cpu_isa_setting_names_a_bad_value_and_never_selects_what_the_cpu_lacks(monkeypatch):
    import inductor_quant.kernels as kernels
    from inductor_quant.settings import CPU_ISA_ENV, cpu_matrix_isa

    monkeypatch.setenv(CPU_ISA_ENV, "sse2")
    with pytest.raises(ValueError, match="INDUCTOR_QUANT_CPU_ISA='sse2'"):
        cpu_matrix_isa()
    monkeypatch.setenv(CPU_ISA_ENV, "amx")
    monkeypatch.setattr(kernels, "amx_available", lambda: False)  # a CPU without AMX
    assert cpu_matrix_isa() == "avx512"


def test_int8_native_gemm_declines_what_it_does_not_serve():
    from conftest import verify

    from inductor_quant.kernels import int8_gemm

    x, q, s, b = _args(m=40, k=96)
    assert (
        int8_gemm(x.to("meta"), q.to("meta"), s.to("meta"), b.to("meta"), torch.bfloat16) is None
    )  # not CPU
    x, q, s, b = _args(m=40, k=80)
    assert int8_gemm(x, q, s, b, torch.bfloat16) is None  # K % 32 != 0
    # and the op still answers, through the chunked dense path
    verify(op(x, q, s, b), int8_linear_reference(x, q, s, b))


@pytest.mark.parametrize(
    ("dtype", "m", "native"),
    [
        (torch.bfloat16, 48, True),
        (torch.bfloat16, 8, False),
        (torch.float32, 1, True),
        (torch.float16, 8, True),
    ],
)
def test_int8_eager_op_routes_to_the_native_gemm(dtype, m, native, monkeypatch):
    """Eagerly: aten's GEMV-shaped kernel for bf16 decode rows (M <= 8), the native GEMM for more bf16 rows and for
    every fp32 / fp16 M (aten's kernel took 6 ms at M = 1 and ~200 ms at M = 32 there, 4096 x 4096)."""
    from conftest import verify

    import inductor_quant.kernels as kernels

    calls = []
    real = kernels.int8_gemm
    monkeypatch.setattr(kernels, "int8_gemm", lambda *a: calls.append(a[0].shape) or real(*a))
    x, q, s, b = _args(m=m, k=256, dtype=dtype)
    verify(op(x, q, s, b), int8_linear_reference(x, q, s, b))
    assert calls == ([torch.Size([m, 256])] if native else [])


def test_op_gradient_matches_float_linear():
    x, q, s, b = _args(dtype=torch.float32)
    x.requires_grad_(True)
    b.requires_grad_(True)
    op(x, q, s, b).pow(2).sum().backward()
    x2 = x.detach().clone().requires_grad_(True)
    b2 = b.detach().clone().requires_grad_(True)
    torch.nn.functional.linear(x2, q.float() * s[:, None], b2).pow(2).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(b.grad, b2.grad, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: (a[0][0], *a[1:]), r"x must be a 2-D tensor.*shape \(96,\)"),
        (lambda a: (a[0], a[1].float(), *a[2:]), r"qweight must be a 2-D int8 .*torch.float32"),
        (lambda a: (a[0][:, :64], *a[1:]), r"K=64 .* K=96"),
        (lambda a: (a[0], a[1], a[2][:3], a[3]), r"scale must be a \[65\] .*\(3,\)"),
        (lambda a: (a[0], a[1], a[2], a[3][:7]), r"bias must be a \[65\] .*\(7,\)"),
    ],
)
def test_bad_arguments_name_the_value(change, message):
    with pytest.raises(ValueError, match=message):
        op(*change(_args()))


@pytest.mark.parametrize("k", [8, 24, 33, 40, 100, 120])
def test_k_that_breaks_aten_int8_kernel_is_still_right(k):
    """torch's _weight_int8pack_mm returns wrong values or crashes for K % 16 != 0; the op must not use it then."""
    from conftest import verify

    x, q, s, b = _args(m=3, n=40, k=k)
    verify(op(x, q, s, b), int8_linear_reference(x, q, s, b))


# --- int4 ---------------------------------------------------------------------------------------------
int4_op = torch.ops.inductor_quant.int4_weight_linear


def _int4_args(m=5, n=72, k=256, g=64, dtype=torch.bfloat16, bias=True):
    from inductor_quant.primitives import quantize_int4_groupwise

    x = torch.randn(m, k, dtype=dtype)
    q, s, z = quantize_int4_groupwise(torch.randn(n, k) / k**0.5, g)
    b = torch.randn(n, dtype=dtype) if bias else None
    return x, q, s, z, g, b


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_int4_opcheck(dtype):
    x, q, s, z, g, b = _int4_args(dtype=dtype)
    torch.library.opcheck(int4_op, (x, q, s, z, g, b), {"out_dtype": None})


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("out_dtype", [None, torch.float32])
@pytest.mark.parametrize("g", [32, 256])
def test_int4_eager_op_matches_reference(dtype, out_dtype, g):
    from conftest import verify

    from inductor_quant.primitives import int4_linear_reference

    # n > the dequantize chunk: several chunks, the last one partial. Eagerly the weight is widened to x's dtype
    # before a dense GEMM, so the reference rounds the dequantized weight to that dtype too.
    x, q, s, z, g, b = _int4_args(m=7, n=1100, k=1024, g=g, dtype=dtype)
    out = int4_op(x, q, s, z, g, b, out_dtype)
    verify(out, int4_linear_reference(x, q, s, z, g, b, out_dtype, weight_dtype=dtype), precision=dtype)


@pytest.mark.parametrize("g", [32, 128, 256])
@pytest.mark.parametrize("dtype, out_dtype", NATIVE_CASES)
def test_int4_native_gemm_matches_reference(g, dtype, out_dtype, cpu_isa):
    """The int4 prefill GEMM (kernels/widening_gemm.cpp): the weight rounded to the activation dtype as the eager
    dequantize does, fp32 sums, one rounding; rows 301 (a partial row block), N = 130 (a partial panel), K = 1280
    (past one slice)."""
    from conftest import verify

    from inductor_quant.kernels import int4_gemm
    from inductor_quant.primitives import int4_linear_reference

    x, q, s, z, g, b = _int4_args(m=301, n=130, k=1280, g=g, dtype=dtype)
    for bias in (b, None):
        out = int4_gemm(x, q, s, z, g, bias, out_dtype)
        assert out is not None, "the native GEMM should apply here (CPU, K % 32 == 0, AVX512-BF16)"
        expected = int4_linear_reference(x, q, s, z, g, bias, out_dtype, weight_dtype=dtype)
        verify(out, expected)


def test_int4_native_dequantize_is_exact():
    # reference: the pure-torch dequantize (fp32 math, one rounding), bit for bit
    from inductor_quant.kernels import int4_dequantize_rows
    from inductor_quant.primitives import dequantize_int4

    _, q, s, z, g, _ = _int4_args(n=33, k=512, g=32)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        assert torch.equal(int4_dequantize_rows(q, s, z, g, dtype), dequantize_int4(q, s, z, g, dtype))


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda a: {**a, "q": a["q"].to(torch.int8)}, "uint8"),
        (lambda a: {**a, "s": a["s"][:, :2]}, r"scale must be a \[72, 4\]"),
        (lambda a: {**a, "z": a["z"].to(torch.int32)}, "zero_point"),
        (lambda a: {**a, "g": 48}, "got 48"),
        (lambda a: {**a, "x": a["x"][:, :128]}, "K=128"),
    ],
)
def test_int4_bad_arguments_name_the_value(change, match):
    x, q, s, z, g, b = _int4_args()
    a = change(dict(x=x, q=q, s=s, z=z, g=g))
    with pytest.raises(ValueError, match=match):
        int4_op(a["x"], a["q"], a["s"], a["z"], a["g"], b)


@pytest.mark.parametrize("zero_is_offset", [False, True])
def test_int4_packed_opcheck_and_unpacked_equivalence(zero_is_offset):
    from inductor_quant.primitives import pack_int4_blocked

    x, q, s, z, g, b = _int4_args(n=42, k=256, g=32)
    packed_op4 = torch.ops.inductor_quant.int4_weight_linear_packed
    zero = (-z.float() * s.float()) if zero_is_offset else z  # the offset form: W = q * s + zero
    args = (x, pack_int4_blocked(q), s, zero, g, b, None, 42, zero_is_offset)
    torch.library.opcheck(packed_op4, args)
    # reference: the plain op on the unpacked weight (same math), within the bf16 output rounding
    from conftest import verify

    verify(packed_op4(*args), int4_op(x, q, s, z, g, b))


def test_checked_aten_int4_opcheck():
    w = torch.ops.aten._convert_weight_to_int4pack_for_cpu(
        torch.randint(0, 16, (32, 128), dtype=torch.int32), 1
    )
    sz = (torch.rand(32, 2, 2, dtype=torch.bfloat16) / 10).transpose(
        0, 1
    )  # non-contiguous: the case it exists for
    args = (torch.randn(3, 128, dtype=torch.bfloat16), w, 64, sz)
    torch.library.opcheck(torch.ops.inductor_quant.aten_int4pack_mm_checked, args)


# --- int4_a8_mm (W4A8) ---------------------------------------------------------------------------------------------

a8_op = torch.ops.inductor_quant.int4_a8_mm


def _a8_args(m=5, n=72, k=256, g=64, bias=True):
    from inductor_quant.primitives import quantize_activation_int8

    x, q, s, z, g, b = _int4_args(m, n, k, g, torch.float32, bias)
    xq, xs = quantize_activation_int8(x)
    return x, (xq, xs, q, s, z, g, b)


@pytest.mark.parametrize("out_dtype", [None, torch.bfloat16])
def test_int4_a8_opcheck(out_dtype):
    _, args = _a8_args()
    torch.library.opcheck(a8_op, args, {"out_dtype": out_dtype})


@pytest.mark.parametrize("g", [32, 256])
def test_int4_a8_eager_op_matches_reference(g):
    from inductor_quant.primitives import dequantize_int4

    # n > the dequantize chunk: several chunks, the last one partial; fp32 result: the integer activations and
    # the fp32 dequantized weight are exact, only the GEMM's summation order differs from the fp64 reference
    _, (xq, xs, q, s, z, g, b) = _a8_args(m=7, n=1100, k=1024, g=g)
    out = a8_op(xq, xs, q, s, z, g, b)
    w = dequantize_int4(q, s, z, g).double()
    expected = (xq.double() @ w.t()) * xs.double()[:, None] + b.double()
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda a: {**a, "xq": a["xq"].float()}, "x must be a 2-D int8"),
        (lambda a: {**a, "xs": a["xs"][:2]}, r"x_scale must be a \[5\] float32"),
        (lambda a: {**a, "xs": a["xs"].double()}, "torch.float64"),
        (lambda a: {**a, "s": a["s"][:, :2]}, r"scale must be a \[72, 4\]"),
        (lambda a: {**a, "g": 48}, "got 48"),
        (lambda a: {**a, "xq": a["xq"][:, :128]}, "K=128"),
    ],
)
def test_int4_a8_bad_arguments_name_the_value(change, match):
    _, (xq, xs, q, s, z, g, b) = _a8_args()
    a = change(dict(xq=xq, xs=xs, q=q, s=s, z=z, g=g))
    with pytest.raises(ValueError, match=match):
        a8_op(a["xq"], a["xs"], a["q"], a["s"], a["z"], a["g"], b)


def test_int4_a8_packed_opcheck_and_unpacked_equivalence():
    from inductor_quant.primitives import pack_group_lanes, pack_int4_lanes

    # N = 42: the last block of 16 lanes is partly padding
    _, (xq, xs, q, s, z, g, b) = _a8_args(n=42, k=256, g=32)
    args = (xq, xs, pack_int4_lanes(q), pack_group_lanes(s), pack_group_lanes(z), g, b, None, 42)
    torch.library.opcheck(torch.ops.inductor_quant.int4_a8_mm_packed, args)
    assert torch.equal(torch.ops.inductor_quant.int4_a8_mm_packed(*args), a8_op(xq, xs, q, s, z, g, b))


# --- ternary_mm ---------------------------------------------------------------------------------------------------

ternary_op = torch.ops.inductor_quant.ternary_mm


def _ternary_args(m=5, n=37, k=300, per_channel=True, bias=True, seed=0):
    from inductor_quant.primitives import pack_ternary, quantize_activation_int8

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g)
    t = torch.randint(-1, 2, (n, k), dtype=torch.int8, generator=g)
    ws = torch.rand(n if per_channel else 1, generator=g) + 0.1
    b = torch.randn(n, generator=g) if bias else None
    xq, xs = quantize_activation_int8(x)
    return x, t, (xq, xs, pack_ternary(t), ws, b)


def test_ternary_opcheck():
    _, _, args = _ternary_args()
    torch.library.opcheck(ternary_op, args, {"out_dtype": torch.bfloat16})


@pytest.mark.parametrize("per_channel", [True, False], ids=["per_channel", "per_tensor"])
@pytest.mark.parametrize("m, n, k", [(1, 8, 256), (5, 37, 300), (40, 200, 64)])
def test_ternary_mm_equals_the_int32_reference(per_channel, m, n, k):
    """The integer sums are exact, the scales applied in the documented fp32 order: equal to the reference."""
    from inductor_quant.primitives import ternary_linear_reference

    x, t, args = _ternary_args(m, n, k, per_channel, bias=m % 2 == 1)
    assert torch.equal(ternary_op(*args), ternary_linear_reference(x, t, args[3], args[4]))
    assert ternary_op(*args, out_dtype=torch.bfloat16).dtype == torch.bfloat16


def test_ternary_mm_chunks_match_one_shot():
    """Several ~2 MiB chunks of unpacked rows (K = 4096: 512 rows per chunk) give the one-shot answer."""
    from inductor_quant.primitives import ternary_linear_reference

    x, t, args = _ternary_args(3, 1100, 4096, per_channel=True, bias=True)
    assert torch.equal(ternary_op(*args), ternary_linear_reference(x, t, args[3], args[4]))


def test_ternary_mm_bad_inputs_name_the_values():
    _, _, (xq, xs, packed, ws, b) = _ternary_args(m=5, n=37, k=300)
    cases = [
        (
            (xq.float(), xs, packed, ws, b),
            r"x must be a 2-D int8 \[M, K\] tensor, got shape \(5, 300\) of torch.float32",
        ),
        ((xq, xs[:4], packed, ws, b), r"x_scale must be a \[5\] float32 tensor, got shape \(4,\)"),
        (
            (xq, xs, packed[:, :64], ws, b),
            r"packed ternary \[N, 128\] uint8 weight for K=300, got shape \(37, 64\)",
        ),
        (
            (xq, xs, packed, ws[:3], b),
            r"weight_scale must be a \[1\] or \[37\] float32 tensor, got shape \(3,\)",
        ),
        ((xq, xs, packed, ws.bfloat16(), b), r"weight_scale .* of torch.bfloat16"),
        ((xq, xs, packed, ws, b[:5]), r"bias must be a \[37\] float tensor, got shape \(5,\)"),
    ]
    for args, message in cases:
        with pytest.raises(ValueError, match=message):
            ternary_op(*args)
