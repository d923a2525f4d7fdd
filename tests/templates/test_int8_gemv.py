"""Codegen snapshots of the GEMV template: the kernel Inductor emits for a frozen and an unfrozen decode linear.

Normalized to the semantic lines (signature, shapes, strides, path, epilogue, call site); kernel and buffer names
are replaced. Regenerate with EXPECTTEST_ACCEPT=1 after an intended change.
"""

from __future__ import annotations

import os
import re

import expecttest
import pytest
import torch
import torch.nn.functional as F
from conftest import compile_and_run, int8_weight
from torch import nn

from inductor_quant.settings import INT8_KERNEL_ENV

pytestmark = pytest.mark.usefixtures("avx512_kernels")  # CPU-independent snapshots


class _Decode(nn.Module):
    def __init__(self):
        super().__init__()
        _, q, s = int8_weight(8, 64)
        self.register_buffer("w", q)
        self.register_buffer("s", s.to(torch.bfloat16))
        self.register_buffer("b", torch.zeros(8, dtype=torch.bfloat16))

    def forward(self, x):
        return F.linear(x, self.w.to(x.dtype) * self.s[:, None], self.b)


_KEEP = re.compile(
    r"inductor_quant int8_gemv|void kernel\(|constexpr int64_t (M|N|K|RS|KS) =|#define IQ_|iq_dot_\w+<4>|"
    r"out \+= |out = acc|Y\[mm|cpp_fused_\w+\(|= empty_strided_cpu"
)


def _snapshot(code: str) -> str:
    start = code.index("// inductor_quant int8_gemv") - 200
    lines = [ln.strip() for ln in code[start:].splitlines() if _KEEP.search(ln)]
    text = "\n".join(lines)
    text = re.sub(r"cpp_fused_\w+", "KERNEL", text)
    text = re.sub(r"\b(buf|arg|_frozen_param)\d+(_\d+)?(_iq_packed)?\b", r"\1N\3", text)
    return text


class TestGemvSnapshot(expecttest.TestCase):
    def test_frozen_bf16_prepacked(self):
        _, code = compile_and_run(_Decode(), torch.randn(2, 64, dtype=torch.bfloat16))
        self.assertExpectedInline(
            _snapshot(code),
            """\
void kernel(const at::BFloat16* X, const int8_t* W, const at::BFloat16* S, const at::BFloat16* B, at::BFloat16* Y)
// inductor_quant int8_gemv: M=2 N=8 K=64 weight=packed bias=True
constexpr int64_t M = 2;
constexpr int64_t N = 8;
constexpr int64_t K = 64;             // a multiple of IQ_KSTEP
constexpr int64_t RS = 32;   // see the layout note above
constexpr int64_t KS = 128;
#define IQ_PATH_BF16 1
const float out = acc[mm * IQ_NR + r] * static_cast<float>(S[n0 + r]) + static_cast<float>(B[n0 + r]);
Y[mm * N + n0 + r] = static_cast<at::BFloat16>(out);
bufN = empty_strided_cpu((8, ), (1, ), torch.bfloat16)
bufN = empty_strided_cpu((8, ), (1, ), torch.bfloat16)
KERNEL(bufN, bufN)
bufN = empty_strided_cpu((2, 8), (8, 1), torch.bfloat16)
KERNEL(argN, _frozen_paramN_iq_packed, bufN, bufN, bufN)""",
        )

    def test_unfrozen_fp32_row_major(self):
        model = _Decode().float()
        os.environ[INT8_KERNEL_ENV] = "int8_gemv"
        try:
            _, code = compile_and_run(model, torch.randn(5, 64), grad=True)
        finally:
            del os.environ[INT8_KERNEL_ENV]
        self.assertExpectedInline(
            _snapshot(code),
            """\
void kernel(const float* X, const int8_t* W, const float* S, const float* B, float* Y)
// inductor_quant int8_gemv: M=5 N=8 K=64 weight=row-major bias=True
constexpr int64_t M = 5;
constexpr int64_t N = 8;
constexpr int64_t K = 64;             // a multiple of IQ_KSTEP
constexpr int64_t RS = 64;   // see the layout note above
constexpr int64_t KS = 32;
#define IQ_X_READY 1
const float out = acc[mm * IQ_NR + r] * static_cast<float>(S[n0 + r]) + static_cast<float>(B[n0 + r]);
Y[mm * N + n0 + r] = static_cast<float>(out);
bufN = empty_strided_cpu((5, 8), (8, 1), torch.float32)
KERNEL(argN, argN, argN, argN, bufN)""",
        )
