"""Codegen snapshots of the int4 GEMV template: the kernel Inductor emits for a frozen decode linear whose weight is
held blocked (quantize_'s default: the module's own constant, nothing packed) and an unfrozen one held plain
(``layout="plain"``: the row-major nibbles). Normalized to the semantic lines (signature, shapes, strides, element kinds,
path, epilogue, call site). Regenerate with EXPECTTEST_ACCEPT=1 after an intended change."""

from __future__ import annotations

import os
import re

import expecttest
import pytest
import torch
from conftest import compile_and_run
from torch import nn

import inductor_quant as iq
from inductor_quant.settings import INT4_KERNEL_ENV

pytestmark = pytest.mark.usefixtures("avx512_kernels")  # CPU-independent snapshots

_KEEP = re.compile(
    r"inductor_quant int4_gemv|void kernel\(|constexpr int64_t (M|N|K|GS|RS|KS) =|constexpr int (S|Z)_KIND|"
    r"#define IQ4_|constexpr float zbias|iq4_block<4, GS>|out \+= |float out = |Y\[mm|cpp_fused_\w+\(|"
    r"= empty_strided_cpu"
)


def _decode(dtype, layout="auto"):
    torch.manual_seed(0)
    return iq.quantize_(nn.Linear(256, 8).to(dtype), iq.Int4WeightOnlyConfig(group_size=64, layout=layout))


_KEEP_A8 = re.compile(
    r"inductor_quant int4_a8_gemv|void kernel\(|constexpr int64_t (M|N|K|GS) =|constexpr int (S|Z)_KIND|"
    r"iq4l_block<|float out = |Y\[mm|cpp_fused_\w+\(|= empty_strided_cpu"
)


def _snapshot(code: str, header: str = "// inductor_quant int4_gemv", keep: re.Pattern = _KEEP) -> str:
    start = code.index(header) - 250
    lines = [ln.strip() for ln in code[start:].splitlines() if keep.search(ln)]
    text = "\n".join(lines)
    text = re.sub(r"cpp_fused_\w+", "KERNEL", text)
    text = re.sub(r"\b(buf|arg|primals_|_frozen_param)\d+(_\d+)?(_iq_packed|_iq_lanes)?\b", r"\1N\3", text)
    return text


class TestInt4GemvSnapshot(expecttest.TestCase):
    def test_frozen_bf16_blocked(self):
        _, code = compile_and_run(_decode(torch.bfloat16), torch.randn(2, 256, dtype=torch.bfloat16))
        self.assertExpectedInline(
            _snapshot(code),
            """\
void kernel(const at::BFloat16* X, const uint8_t* W, const at::BFloat16* S, const uint8_t* Z, const at::BFloat16* B, at::BFloat16* Y)
// inductor_quant int4_gemv: M=2 N=8 K=256 group=64 weight=packed bias=True
constexpr int64_t M = 2;
constexpr int64_t N = 8;
constexpr int64_t K = 256;               // X's row: a multiple of GS
constexpr int64_t GS = 64;             // group size: 32, 64, 128 or 256
constexpr int64_t RS = 64;     // see the layout note above
constexpr int64_t KS = 256;
constexpr int S_KIND = 1;
constexpr int Z_KIND = 3;
#define IQ4_PATH_BF16 1
constexpr float zbias = 128.f;   // the unpacked nibbles are 128 + q
constexpr float zbias = 0.f;
#define IQ4_PATH_F32 1
constexpr float zbias = 0.f;
constexpr float zbias = 0.f;
for (; m + 4 <= M; m += 4) iq4_block<4, GS>(wr, KS, KP, xe + m * KP, KP, sc, acc + m * IQ4_NR);
const float out = (acc[mm * IQ4_NR + r] + iq4_dot(co_rows[r], xsum + mm * G, G)) + static_cast<float>(B[n0 + r]);
Y[mm * N + n0 + r] = static_cast<at::BFloat16>(out);
bufN = empty_strided_cpu((8, ), (1, ), torch.bfloat16)
KERNEL(bufN)
bufN = empty_strided_cpu((2, 8), (8, 1), torch.bfloat16)
KERNEL(argN, _frozen_paramN, _frozen_paramN, _frozen_paramN, bufN, bufN)""",
        )

    def test_unfrozen_fp16_plain(self):
        os.environ[INT4_KERNEL_ENV] = "int4_gemv"
        try:
            _, code = compile_and_run(
                _decode(torch.float16, "plain"), torch.randn(5, 256, dtype=torch.float16), grad=True
            )
        finally:
            del os.environ[INT4_KERNEL_ENV]
        self.assertExpectedInline(
            _snapshot(code),
            """\
void kernel(const at::Half* X, const uint8_t* W, const at::BFloat16* S, const uint8_t* Z, const at::Half* B, at::Half* Y)
// inductor_quant int4_gemv: M=5 N=8 K=256 group=64 weight=row-major bias=True
constexpr int64_t M = 5;
constexpr int64_t N = 8;
constexpr int64_t K = 256;               // X's row: a multiple of GS
constexpr int64_t GS = 64;             // group size: 32, 64, 128 or 256
constexpr int64_t RS = 128;     // see the layout note above
constexpr int64_t KS = 64;
constexpr int S_KIND = 1;
constexpr int Z_KIND = 3;
constexpr float zbias = 128.f;   // the unpacked nibbles are 128 + q
constexpr float zbias = 0.f;
#define IQ4_PATH_F32 1
constexpr float zbias = 0.f;
constexpr float zbias = 0.f;
for (; m + 4 <= M; m += 4) iq4_block<4, GS>(wr, KS, KP, xe + m * KP, KP, sc, acc + m * IQ4_NR);
const float out = (acc[mm * IQ4_NR + r] + iq4_dot(co_rows[r], xsum + mm * G, G)) + static_cast<float>(B[n0 + r]);
Y[mm * N + n0 + r] = static_cast<at::Half>(out);
bufN = empty_strided_cpu((5, 8), (8, 1), torch.float16)
KERNEL(primals_N, primals_N, primals_N, primals_N, primals_N, bufN)""",
        )

    def test_frozen_w4a8_lane_layout(self):
        torch.manual_seed(0)
        lin = iq.quantize_(
            nn.Linear(256, 8).to(torch.bfloat16), iq.Int8DynamicActivationInt4WeightConfig(group_size=64)
        )
        _, code = compile_and_run(lin, torch.randn(2, 256, dtype=torch.bfloat16))
        self.assertExpectedInline(
            _snapshot(code, "// inductor_quant int4_a8_gemv", _KEEP_A8),
            """\
void kernel(const int8_t* X, const float* XS, const uint8_t* W, const at::BFloat16* S, const uint8_t* Z, const at::BFloat16* B, at::BFloat16* Y)
// inductor_quant int4_a8_gemv: M=2 N=8 K=256 group=64 weight=lanes bias=True
constexpr int64_t M = 2;
constexpr int64_t N = 8;
constexpr int64_t K = 256;               // a multiple of GS
constexpr int64_t GS = 64;             // group size: 32, 64, 128 or 256
constexpr int S_KIND = 1;
constexpr int Z_KIND = 3;
iq4l_block<2, GS, S_KIND, Z_KIND>(wb, X + m0 * K, K, xsum + m0 * G, S, Z, sz, acc + m0 * IQ4L_ROWS);
const float out = acc[mm * IQ4L_ROWS + r] * static_cast<float>(XS[mm]) + static_cast<float>(B[n0 + r]);
Y[mm * N + n0 + r] = static_cast<at::BFloat16>(out);
bufN = empty_strided_cpu((2, 1), (1, 2), torch.float32)
bufN = empty_strided_cpu((2, 256), (256, 1), torch.int8)
bufN = empty_strided_cpu((2, 1), (1, 1), torch.float32)
bufN = empty_strided_cpu((8, ), (1, ), torch.bfloat16)
KERNEL(argN, bufN, bufN, bufN, bufN)
bufN = empty_strided_cpu((2, 8), (8, 1), torch.bfloat16)
KERNEL(bufN, bufN, _frozen_paramN_iq_lanes, _frozen_paramN_iq_lanes, _frozen_paramN_iq_lanes, bufN, bufN)""",
        )
