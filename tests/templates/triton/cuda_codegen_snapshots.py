"""Levels C and D: the Triton source Inductor emits for the package's ops on ``device="cuda"`` (a fake sm_80
device, codegen only: ``cuda_codegen.py``), as expecttest snapshots of its stable parts (the kernel from its
``def`` line, and the launch line; not hashes or metadata), and those kernels compiled to cubin for sm_80 and
sm_90 with the ptxas Triton ships.

Runs in its own process with ``cuda_codegen`` installed (``test_triton_templates.py`` starts it). Under the fixed
timings of the harness every Triton config ties, so the snapshot shows the first config offered (decode:
16x64x128, prefill: 64x64x64), not the one a GPU would pick. ``EXPECTTEST_ACCEPT=1`` rewrites the snapshots.
"""

from __future__ import annotations

import re

import expecttest
import pytest
import torch
import torch.nn.functional as F
from cuda_codegen import compile_kernels, cuda_code, fake_cuda, triton_kernels
from torch._dynamo.utils import counters

import inductor_quant.lowerings  # noqa: F401  (registers the lowerings)

ops = torch.ops.inductor_quant


def int8_relu(x, w, s, b):
    return torch.relu(ops.int8_weight_linear(x, w, s, b))


def int4_silu(x, q, s, z):
    return F.silu(ops.int4_weight_linear(x, q, s, z, 32))


def int8_decode():
    args = ((5, 96), torch.bfloat16), ((40, 96), torch.int8), ((40,), torch.bfloat16), ((40,), torch.bfloat16)
    return cuda_code(int8_relu, *(fake_cuda(*a) for a in args))


def int8_prefill():
    args = (
        ((300, 128), torch.float16),
        ((40, 128), torch.int8),
        ((40,), torch.float32),
        ((40,), torch.float16),
    )
    return cuda_code(int8_relu, *(fake_cuda(*a) for a in args))


def int4_decode():
    args = (
        ((3, 128), torch.bfloat16),
        ((40, 64), torch.uint8),
        ((40, 4), torch.bfloat16),
        ((40, 4), torch.uint8),
    )
    return cuda_code(int4_silu, *(fake_cuda(*a) for a in args))


def ternary_relu(x, xs, q, ws, b):
    return torch.relu(ops.ternary_mm(x, xs, q, ws, b, torch.bfloat16))


def ternary_decode():
    args = ((3, 300), torch.int8), ((3,), torch.float32), ((40, 128), torch.uint8), ((1,), torch.float32)
    return cuda_code(ternary_relu, *(fake_cuda(*a) for a in args), fake_cuda((40,), torch.bfloat16))


CASES = {
    "int8_decode": int8_decode,
    "int8_prefill": int8_prefill,
    "int4_decode": int4_decode,
    "ternary_decode": ternary_decode,
}
_code: dict[str, list[str]] = {}


def code_of(case: str) -> list[str]:
    """Each case is generated once for all the tests of this module."""
    if case not in _code:
        counters.clear()
        _code[case] = CASES[case]()
        _code[case + ":chosen"] = sorted(k for k in counters["inductor_quant"] if "_kernel_" in k)
    return _code[case]


def stable_parts(code: list[str]) -> str:
    """The template kernel from its def line, and its launch line from the wrapper."""
    (name, source), *others = ((n, s) for n, s in triton_kernels(code).items() if n.startswith("triton_tem_"))
    assert not others, "one template kernel expected"
    body = source[source.index(f"def {name}(") :].rstrip()
    launch = [line.strip() for line in "\n".join(code).splitlines() if f"{name}.run(" in line]
    return body + "\n# launch:\n" + "\n".join(launch)


class TestCudaSnapshots(expecttest.TestCase):
    def test_int8_decode_bias_relu_bf16(self):
        code = code_of("int8_decode")
        assert _code["int8_decode:chosen"] == ["int8_kernel_triton_16x64x128_w4_s4"]
        self.assertExpectedInline(
            stable_parts(code),
            """\
def triton_tem_fused_int8_weight_linear_relu_0(arg_A, arg_W, in_ptr2, in_ptr3, out_ptr1):
    BLOCK_M : tl.constexpr = 16
    BLOCK_N : tl.constexpr = 64
    BLOCK_K : tl.constexpr = 128
    GROUP_M : tl.constexpr = 8
    ALLOW_TF32 : tl.constexpr = False
    EVEN_K : tl.constexpr = False
    INDEX_DTYPE : tl.constexpr = tl.int32
    A = arg_A
    W = arg_W

    M = 5
    N = 40
    K = 96
    if M * N == 0:
        # nothing to compute for an empty input
        return
    stride_am = 96
    stride_ak = 1
    stride_wn = 96
    stride_wk = 1

    # -----------------------------------------------------------
    # Map the program id to the tile of Y it computes, GROUP_M row tiles at a time so that neighbouring programs
    # share the W tiles they read (decode has one row tile: the programs simply walk N).
    pid = tl.program_id(0).to(INDEX_DTYPE)
    grid_m = tl.cdiv(M, BLOCK_M)
    grid_n = tl.cdiv(N, BLOCK_N)
    width = GROUP_M * grid_n
    group_id = pid // width
    group_rows = min(grid_m - group_id * GROUP_M, GROUP_M)
    pid_m = group_id * GROUP_M + (pid % group_rows)
    pid_n = (pid % width) // group_rows

    # -----------------------------------------------------------
    # Pointers to the first A and W tiles. Rows and columns past M / N are wrapped (`% M`) instead of masked:
    # they are computed and never stored.
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M).to(INDEX_DTYPE)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N).to(INDEX_DTYPE)
    rk = tl.arange(0, BLOCK_K).to(INDEX_DTYPE)
    a_ptrs = A + (rm % M)[:, None] * stride_am + rk[None, :] * stride_ak
    w_ptrs = W + (rn % N)[None, :] * stride_wn + rk[:, None] * stride_wk

    # -----------------------------------------------------------
    # The K loop: fp32 accumulation of A @ widen(W). K tails are masked to zero on both sides.
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        k_left = K - k * BLOCK_K
        a = tl.load(a_ptrs, mask=rk[None, :] < k_left, other=0.0)
        w = tl.load(w_ptrs, mask=rk[:, None] < k_left, other=0)
        acc += tl.dot(a, w.to(a.dtype), allow_tf32=ALLOW_TF32, out_dtype=tl.float32)
        a_ptrs += BLOCK_K * stride_ak
        w_ptrs += BLOCK_K * stride_wk

    # -----------------------------------------------------------
    # Store: Inductor's epilogue applies scale (and bias, and fused consumers) in fp32 and rounds once.
    idx_m = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M).to(INDEX_DTYPE))[:, None]
    idx_n = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N).to(INDEX_DTYPE))[None, :]
    mask = (idx_m < M) & (idx_n < N)
    xindex = idx_n + 40*idx_m
    tmp0 = tl.load(in_ptr2 + (tl.broadcast_to(idx_n, [BLOCK_M, BLOCK_N])), mask, eviction_policy='evict_last').to(tl.float32)
    tmp1 = tl.load(in_ptr3 + (tl.broadcast_to(idx_n, [BLOCK_M, BLOCK_N])), mask, eviction_policy='evict_last').to(tl.float32)
    tmp2 = acc * tmp0
    tmp3 = tmp2 + tmp1
    tmp4 = tmp3.to(tl.bfloat16)
    tmp5 = tmp4.to(tl.float32)
    tmp6 = tl.full([1], 0, tl.int32)
    tmp7 = tl.maximum(tmp6, tmp5, tl.PropagateNan.ALL)
    tl.store(out_ptr1 + (tl.broadcast_to(xindex, [BLOCK_M, BLOCK_N])), tmp7, mask)
# launch:
triton_tem_fused_int8_weight_linear_relu_0.run(arg0_1, arg1_1, arg2_1, arg3_1, buf1, 1, 1, 1, stream=raw_stream0)""",
        )

    def test_int8_prefill_bias_relu_fp16(self):
        code = code_of("int8_prefill")
        assert _code["int8_prefill:chosen"] == ["int8_kernel_triton_64x64x64_w4_s3"]
        self.assertExpectedInline(
            stable_parts(code),
            """\
def triton_tem_fused_int8_weight_linear_relu_0(arg_A, arg_W, in_ptr2, in_ptr3, out_ptr1):
    BLOCK_M : tl.constexpr = 64
    BLOCK_N : tl.constexpr = 64
    BLOCK_K : tl.constexpr = 64
    GROUP_M : tl.constexpr = 8
    ALLOW_TF32 : tl.constexpr = False
    EVEN_K : tl.constexpr = True
    INDEX_DTYPE : tl.constexpr = tl.int32
    A = arg_A
    W = arg_W

    M = 300
    N = 40
    K = 128
    if M * N == 0:
        # nothing to compute for an empty input
        return
    stride_am = 128
    stride_ak = 1
    stride_wn = 128
    stride_wk = 1

    # -----------------------------------------------------------
    # Map the program id to the tile of Y it computes, GROUP_M row tiles at a time so that neighbouring programs
    # share the W tiles they read (decode has one row tile: the programs simply walk N).
    pid = tl.program_id(0).to(INDEX_DTYPE)
    grid_m = tl.cdiv(M, BLOCK_M)
    grid_n = tl.cdiv(N, BLOCK_N)
    width = GROUP_M * grid_n
    group_id = pid // width
    group_rows = min(grid_m - group_id * GROUP_M, GROUP_M)
    pid_m = group_id * GROUP_M + (pid % group_rows)
    pid_n = (pid % width) // group_rows

    # -----------------------------------------------------------
    # Pointers to the first A and W tiles. Rows and columns past M / N are wrapped (`% M`) instead of masked:
    # they are computed and never stored.
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M).to(INDEX_DTYPE)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N).to(INDEX_DTYPE)
    rk = tl.arange(0, BLOCK_K).to(INDEX_DTYPE)
    a_ptrs = A + (rm % M)[:, None] * stride_am + rk[None, :] * stride_ak
    w_ptrs = W + (rn % N)[None, :] * stride_wn + rk[:, None] * stride_wk

    # -----------------------------------------------------------
    # The K loop: fp32 accumulation of A @ widen(W). K tails are masked to zero on both sides.
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        a = tl.load(a_ptrs)
        w = tl.load(w_ptrs)
        acc += tl.dot(a, w.to(a.dtype), allow_tf32=ALLOW_TF32, out_dtype=tl.float32)
        a_ptrs += BLOCK_K * stride_ak
        w_ptrs += BLOCK_K * stride_wk

    # -----------------------------------------------------------
    # Store: Inductor's epilogue applies scale (and bias, and fused consumers) in fp32 and rounds once.
    idx_m = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M).to(INDEX_DTYPE))[:, None]
    idx_n = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N).to(INDEX_DTYPE))[None, :]
    mask = (idx_m < M) & (idx_n < N)
    xindex = idx_n + 40*idx_m
    tmp0 = tl.load(in_ptr2 + (tl.broadcast_to(idx_n, [BLOCK_M, BLOCK_N])), mask, eviction_policy='evict_last')
    tmp1 = tl.load(in_ptr3 + (tl.broadcast_to(idx_n, [BLOCK_M, BLOCK_N])), mask, eviction_policy='evict_last').to(tl.float32)
    tmp2 = acc * tmp0
    tmp3 = tmp2 + tmp1
    tmp4 = tmp3.to(tl.float16)
    tmp5 = tmp4.to(tl.float32)
    tmp6 = tl.full([1], 0, tl.int32)
    tmp7 = tl.maximum(tmp6, tmp5, tl.PropagateNan.ALL)
    tl.store(out_ptr1 + (tl.broadcast_to(xindex, [BLOCK_M, BLOCK_N])), tmp7, mask)
# launch:
triton_tem_fused_int8_weight_linear_relu_0.run(arg0_1, arg1_1, arg2_1, arg3_1, buf1, 5, 1, 1, stream=raw_stream0)""",
        )

    def test_int4_decode_silu_bf16(self):
        code = code_of("int4_decode")
        assert _code["int4_decode:chosen"] == ["int4_kernel_triton_16x64x32_w4_s4"]
        self.assertExpectedInline(
            stable_parts(code),
            """\
def triton_tem_fused_int4_weight_linear_silu_0(arg_A, arg_Q, arg_S, arg_Z, out_ptr1):
    BLOCK_M : tl.constexpr = 16
    BLOCK_N : tl.constexpr = 64
    BLOCK_K : tl.constexpr = 32
    GROUP_M : tl.constexpr = 8
    ALLOW_TF32 : tl.constexpr = False
    GROUP_SIZE : tl.constexpr = 32
    INDEX_DTYPE : tl.constexpr = tl.int32
    A = arg_A
    Q = arg_Q
    S = arg_S
    Z = arg_Z

    M = 3
    N = 40
    K = 128
    if M * N == 0:
        # nothing to compute for an empty input
        return
    stride_am = 128
    stride_ak = 1
    stride_qn = 64
    stride_qk = 1
    stride_sn = 4
    stride_sg = 1
    stride_zn = 4
    stride_zg = 1

    # -----------------------------------------------------------
    # Map the program id to the tile of Y it computes (as in int8_mm.py.jinja).
    pid = tl.program_id(0).to(INDEX_DTYPE)
    grid_m = tl.cdiv(M, BLOCK_M)
    grid_n = tl.cdiv(N, BLOCK_N)
    width = GROUP_M * grid_n
    group_id = pid // width
    group_rows = min(grid_m - group_id * GROUP_M, GROUP_M)
    pid_m = group_id * GROUP_M + (pid % group_rows)
    pid_n = (pid % width) // group_rows

    # -----------------------------------------------------------
    # Pointers: A's even and odd columns of the first K step, the step's bytes of Q, and the per-column scale and
    # zero point rows. Rows and columns past M / N are wrapped, computed and never stored.
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M).to(INDEX_DTYPE)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N).to(INDEX_DTYPE)
    rb = tl.arange(0, BLOCK_K // 2).to(INDEX_DTYPE)  # byte index within the K step
    a_even_ptrs = A + (rm % M)[:, None] * stride_am + (2 * rb)[None, :] * stride_ak
    q_ptrs = Q + (rn % N)[None, :] * stride_qn + rb[:, None] * stride_qk
    s_ptrs = S + (rn % N) * stride_sn
    z_ptrs = Z + (rn % N) * stride_zn

    # -----------------------------------------------------------
    # The K loop (K is a multiple of GROUP_SIZE, hence of BLOCK_K: no masks).
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, K // BLOCK_K):
        group = (k * BLOCK_K) // GROUP_SIZE
        scale = tl.load(s_ptrs + group * stride_sg).to(tl.float32)
        zero = tl.load(z_ptrs + group * stride_zg).to(tl.int16)
        q = tl.load(q_ptrs)
        a_even = tl.load(a_even_ptrs)
        a_odd = tl.load(a_even_ptrs + stride_ak)
        w_low = ((q & 0xF).to(tl.int16) - zero[None, :]).to(a_even.dtype)
        w_high = ((q >> 4).to(tl.int16) - zero[None, :]).to(a_even.dtype)
        part = tl.dot(a_even, w_low, allow_tf32=ALLOW_TF32, out_dtype=tl.float32)
        part = tl.dot(a_odd, w_high, part, allow_tf32=ALLOW_TF32, out_dtype=tl.float32)
        acc += part * scale[None, :]
        a_even_ptrs += BLOCK_K * stride_ak
        q_ptrs += (BLOCK_K // 2) * stride_qk

    # -----------------------------------------------------------
    # Store: Inductor's epilogue adds the bias (and fused consumers) in fp32 and rounds once.
    idx_m = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M).to(INDEX_DTYPE))[:, None]
    idx_n = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N).to(INDEX_DTYPE))[None, :]
    mask = (idx_m < M) & (idx_n < N)
    xindex = idx_n + 40*idx_m
    tmp0 = acc.to(tl.bfloat16)
    tmp1 = tmp0.to(tl.float32)
    tmp2 = tmp1.to(tl.float32)
    tmp3 = -tmp2
    tmp4 = libdevice.exp(tmp3)
    tmp5 = tl.full([1], 1.0, tl.float32)
    tmp6 = tmp4 + tmp5
    tmp7 = (tmp2 / tmp6)
    tmp8 = tmp7.to(tl.float32)
    tl.store(out_ptr1 + (tl.broadcast_to(xindex, [BLOCK_M, BLOCK_N])), tmp8, mask)
# launch:
triton_tem_fused_int4_weight_linear_silu_0.run(arg0_1, arg1_1, arg2_1, arg3_1, buf1, 1, 1, 1, stream=raw_stream0)""",
        )


class TestCudaSnapshotsTernary(expecttest.TestCase):
    def test_ternary_decode_bias_relu(self):
        code = code_of("ternary_decode")
        assert _code["ternary_decode:chosen"] == ["ternary_kernel_triton_16x64x256_w4_s4"]
        self.assertExpectedInline(
            stable_parts(code),
            """\
def triton_tem_fused_relu_ternary_mm_0(arg_A, arg_XS, arg_Q, in_ptr3, in_ptr4, out_ptr1):
    BLOCK_M : tl.constexpr = 16
    BLOCK_N : tl.constexpr = 64
    BLOCK_K : tl.constexpr = 256
    GROUP_M : tl.constexpr = 8
    ALLOW_TF32 : tl.constexpr = False
    INDEX_DTYPE : tl.constexpr = tl.int32
    A = arg_A
    XS = arg_XS
    Q = arg_Q

    M = 3
    N = 40
    K = 300
    if M * N == 0:
        # nothing to compute for an empty input
        return
    stride_am = 300
    stride_ak = 1
    stride_qn = 128
    stride_qk = 1
    stride_xs = 1

    # -----------------------------------------------------------
    # Map the program id to the tile of Y it computes (as in int8_mm.py.jinja).
    pid = tl.program_id(0).to(INDEX_DTYPE)
    grid_m = tl.cdiv(M, BLOCK_M)
    grid_n = tl.cdiv(N, BLOCK_N)
    width = GROUP_M * grid_n
    group_id = pid // width
    group_rows = min(grid_m - group_id * GROUP_M, GROUP_M)
    pid_m = group_id * GROUP_M + (pid % group_rows)
    pid_n = (pid % width) // group_rows

    # -----------------------------------------------------------
    # Pointers: A's first 64 columns, the first block's bytes of the tile's weight columns. Rows and columns past
    # M / N are wrapped, computed and never stored.
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M).to(INDEX_DTYPE)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N).to(INDEX_DTYPE)
    rb = tl.arange(0, 64).to(INDEX_DTYPE)  # byte of a block = column of a plane
    a_ptrs = A + (rm % M)[:, None] * stride_am + rb[None, :] * stride_ak
    q_ptrs = Q + (rn % N)[None, :] * stride_qn + rb[:, None] * stride_qk

    # -----------------------------------------------------------
    # The K loop, one 256-value block per step, exact int32 sums.
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for block in range(0, tl.cdiv(K, 256)):
        q = tl.load(q_ptrs)
        for p in tl.static_range(4):
            k_first = block * 256 + 64 * p
            a = tl.load(a_ptrs + k_first * stride_ak, mask=(k_first + rb)[None, :] < K, other=0)
            t = ((q >> (2 * p)) & 3).to(tl.int8) - 1
            acc += tl.dot(a, t, out_dtype=tl.int32)
        q_ptrs += 64 * stride_qk

    # -----------------------------------------------------------
    # Store: the sums (exact in fp32 below 2^24: |sum| <= 127 K) times the row's activation scale; Inductor's
    # epilogue applies the weight scale (and bias, and fused consumers) in fp32.
    x_scale = tl.load(XS + (rm % M) * stride_xs)
    sums = acc.to(tl.float32) * x_scale[:, None]
    idx_m = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M).to(INDEX_DTYPE))[:, None]
    idx_n = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N).to(INDEX_DTYPE))[None, :]
    mask = (idx_m < M) & (idx_n < N)
    xindex = idx_n + 40*idx_m
    tmp0 = tl.load(in_ptr3 + (0))
    tmp1 = tl.broadcast_to(tmp0, [BLOCK_M, BLOCK_N])
    tmp2 = tl.load(in_ptr4 + (tl.broadcast_to(idx_n, [BLOCK_M, BLOCK_N])), mask, eviction_policy='evict_last').to(tl.float32)
    tmp3 = sums * tmp1
    tmp4 = tmp3 + tmp2
    tmp5 = tmp4.to(tl.bfloat16)
    tmp6 = tmp5.to(tl.float32)
    tmp7 = tl.full([1], 0, tl.int32)
    tmp8 = tl.maximum(tmp7, tmp6, tl.PropagateNan.ALL)
    tl.store(out_ptr1 + (tl.broadcast_to(xindex, [BLOCK_M, BLOCK_N])), tmp8, mask)
# launch:
triton_tem_fused_relu_ternary_mm_0.run(arg0_1, arg1_1, arg2_1, arg3_1, arg4_1, buf1, 1, 1, 1, stream=raw_stream0)""",
        )


def test_weight_int8pack_mm_on_cuda_is_rewritten_to_the_template():
    """Hand-written ``torch._weight_int8pack_mm`` on cuda: the package's rewrite pass (as quant_inductor installs
    it) makes it the package's op, whose lowering serves it with the Triton template, the add fused."""
    from inductor_quant.passes import rewrite_pass

    args = ((4, 96), torch.bfloat16), ((48, 96), torch.int8), ((48,), torch.bfloat16)
    counters.clear()
    code = cuda_code(
        lambda x, w, s: torch._weight_int8pack_mm(x, w, s) + 1.0,
        *(fake_cuda(*a) for a in args),
        options={"joint_custom_post_pass": rewrite_pass()},
    )
    assert counters["inductor_quant"]["int8_rewrite_weight_int8pack_mm"] == 1
    assert counters["inductor_quant"]["int8_kernel_triton_16x64x128_w4_s4"] == 1
    ((name, source),) = triton_kernels(code).items()
    assert name.startswith("triton_tem_fused") and "tl.dot(" in source and "'arg_W': '*i8'" in source
    assert "_weight_int8pack_mm" not in "\n".join(code)


@pytest.mark.parametrize("cc", (80, 90))
@pytest.mark.parametrize("case", list(CASES))
def test_kernels_compile_to_cubin(case, cc):
    """Level D: every kernel of the case (the template with its fused epilogue) compiles for sm_<cc>."""
    compiled = compile_kernels(code_of(case), cc)
    names = {name for name, _ in compiled}
    assert any(n.startswith("triton_tem_") for n in names), names
    for name, kernel in compiled:
        cubin = kernel.asm["cubin"]
        assert cubin[:4] == b"\x7fELF" and len(cubin) > 4096, name
        assert kernel.metadata.target.arch == cc, (name, kernel.metadata.target)
        # the int8 / int4 weight tile feeds a tensor-core MMA (ptx mma.sync on sm_80, wgmma or mma on sm_90)
        if name.startswith("triton_tem_"):
            assert re.search(r"\b(mma|wgmma)\.", kernel.asm["ptx"]), name
