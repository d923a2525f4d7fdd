"""Levels C and D: the Triton source Inductor emits for the package's ops on ``device="cuda"`` (a fake sm_80
device, codegen only: ``cuda_codegen.py``), as expecttest snapshots of its stable parts (what Inductor wrote into
the template kernel, and its launch line; not the template's own lines again, not hashes or metadata), and those
kernels compiled to cubin for sm_80 and sm_90 with the ptxas Triton ships.

Runs in its own process with ``cuda_codegen`` installed (``test_triton_templates.py`` starts it). Under the fixed
timings of the harness every Triton config ties, so the snapshot shows the first config offered (decode:
16x64x128, prefill: 64x64x64), not the one a GPU would pick. ``EXPECTTEST_ACCEPT=1`` rewrites the snapshots.
"""

from __future__ import annotations

import re
from pathlib import Path

import expecttest
import pytest
import torch
import torch.nn.functional as F
from cuda_codegen import compile_kernels, cuda_code, fake_cuda, triton_kernels
from torch._dynamo.utils import counters

import inductor_quant.lowerings  # noqa: F401  (registers the lowerings)
import inductor_quant.templates.triton

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


TEMPLATES = Path(inductor_quant.templates.triton.__file__).parent


def _verbatim_lines(template: Path) -> set[str]:
    """The template's lines that Inductor copies as written (no jinja in them), stripped."""
    return {line.strip() for line in template.read_text().splitlines() if "{" not in line and line.strip()}


def stable_parts(code: list[str]) -> str:
    """What Inductor wrote into the template kernel: its signature, constants, sizes and strides, the epilogue and
    the launch line. The template's own lines are not repeated; their count stands in for them (and is checked)."""
    (name, source), *others = ((n, s) for n, s in triton_kernels(code).items() if n.startswith("triton_tem_"))
    assert not others, "one template kernel expected"
    body = source[source.index(f"def {name}(") :].rstrip().splitlines()
    template = max(
        TEMPLATES.glob("*.jinja"), key=lambda t: len(_verbatim_lines(t) & {ln.strip() for ln in body})
    )
    verbatim = _verbatim_lines(template)
    written = [line for line in body if line.strip() and line.strip() not in verbatim]
    launch = [line.strip() for line in "\n".join(code).splitlines() if f"{name}.run(" in line]
    copied = len(body) - len(written) - sum(1 for line in body if not line.strip())
    return "\n".join([*written, f"# + {copied} lines of {template.name} as written", "# launch:", *launch])


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
    stride_am = 96
    stride_ak = 1
    stride_wn = 96
    stride_wk = 1
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
# + 37 lines of int8_mm.py.jinja as written
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
    stride_am = 128
    stride_ak = 1
    stride_wn = 128
    stride_wk = 1
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
# + 36 lines of int8_mm.py.jinja as written
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
    stride_am = 128
    stride_ak = 1
    stride_qn = 64
    stride_qk = 1
    stride_sn = 4
    stride_sg = 1
    stride_zn = 4
    stride_zg = 1
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
# + 45 lines of int4_mm.py.jinja as written
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
    stride_am = 300
    stride_ak = 1
    stride_qn = 128
    stride_qk = 1
    stride_xs = 1
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
# + 40 lines of ternary_mm.py.jinja as written
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
