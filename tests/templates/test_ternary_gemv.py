"""Codegen snapshot of the ternary GEMV template: the kernel Inductor emits for a deployed BitLinear at decode, with
the activation quantization kernel in front of it. Normalized to the semantic lines (signature, shapes, paths,
epilogue, call sites). Regenerate with EXPECTTEST_ACCEPT=1 after an intended change."""

from __future__ import annotations

import os
import re
from unittest import mock

import expecttest
import torch
from conftest import compile_and_run

from inductor_quant.nn import BitLinear, BitQuantConfig
from inductor_quant.settings import TERNARY_KERNEL_ENV

_KEEP = re.compile(
    r"inductor_quant ternary_gemv|void kernel\(|constexpr int64_t (M|N|K|KP|KPAD) =|iqt_dot_vnni<1>|"
    r"float out = |out \+= |Y\[mm|cpp_fused_\w+\(|= empty_strided_cpu"
)


def _snapshot(code: str) -> str:
    start = code.index("// inductor_quant ternary_gemv") - 250
    lines = [ln.strip() for ln in code[start:].splitlines() if _KEEP.search(ln)]
    text = "\n".join(lines)
    text = re.sub(r"cpp_fused_\w+", "KERNEL", text)
    return re.sub(r"\b(buf|arg|_frozen_param)\d+(_\d+)?\b", r"\1N", text)


class TestTernaryGemvSnapshot(expecttest.TestCase):
    def test_deployed_bf16_per_channel(self):
        torch.manual_seed(0)
        layer = BitLinear(300, 64, quant_config=BitQuantConfig(weight_granularity="per_channel"))
        layer = layer.to(torch.bfloat16).deploy()
        with mock.patch.dict(os.environ, {TERNARY_KERNEL_ENV: "ternary_gemv"}):
            _, code = compile_and_run(layer, torch.randn(1, 300, dtype=torch.bfloat16))
        self.assertExpectedInline(
            _snapshot(code),
            """\
void kernel(const int8_t* X, const float* XS, const uint8_t* W, const float* WS, const at::BFloat16* B, at::BFloat16* Y)
// inductor_quant ternary_gemv: M=1 N=64 K=300 weight_scale=per_channel bias=True
constexpr int64_t M = 1;
constexpr int64_t N = 64;
constexpr int64_t K = 300;
constexpr int64_t KP = 128;              // bytes per packed row
constexpr int64_t KPAD = KP * 4;                  // K rounded up to whole 256-value blocks
case 1: iqt_dot_vnni<1>(wr, n_kb, xk + m * KPAD, KPAD, acc + m * IQT_NR); break;
const float out = dot * static_cast<float>(XS[mm]) * static_cast<float>(WS[n0 + r]) + static_cast<float>(B[n0 + r]);
Y[mm * N + n0 + r] = static_cast<at::BFloat16>(out);
bufN = empty_strided_cpu((1, 1), (1, 1), torch.float32)
bufN = empty_strided_cpu((1, 300), (300, 1), torch.int8)
KERNEL(bufN, argN, bufN)
bufN = empty_strided_cpu((1, 64), (64, 1), torch.bfloat16)
KERNEL(bufN, bufN, _frozen_paramN, _frozen_paramN, _frozen_paramN, bufN)""",
        )
