"""CPP template for decode-shaped int8 weight-only matmuls (stage 6 of the pipeline): loads ``int8_gemv.cpp``.

One kernel, two weight layouts (strides only): the blocked layout the prepack pass makes from frozen weights, and
the plain ``[N, K]`` rows of a weight that is a graph input, so frozen and unfrozen graphs both get it. Scale and
bias are fused in the kernel; further pointwise nodes (an activation, a residual add) are fused by Inductor's
scheduler as epilogue nodes.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from ..._compat import inductor_internals

_I = inductor_internals()
_SOURCE = (Path(__file__).parent / "int8_gemv.cpp").read_text()

# Largest M the template is offered for: it re-reads the activations once per row block and is compute-bound past
# a few rows (benchmarks/: M = 16 already is), so prefill-sized M goes to the chunked dequant + dense GEMM.
MAX_M = 32
# The kernel walks K in steps of this many values (one 32-byte run per weight row); K must be a multiple.
K_STEP = 32


@functools.cache
def _compiled_source():
    """The jinja template, parsed once per process (parsing it per render cost ~10 ms x 2 per linear)."""
    return _I.CppTemplate._template_from_string(_SOURCE)


class CppInt8GemvTemplate(_I.CppTemplate):
    """``Y = (X @ W.T) * S (+ B)`` for small M, with X ``[M, K]`` float, W ``[N, K]`` int8, S / B ``[N]``."""

    def __init__(self, input_nodes, layout, has_bias: bool, packed: bool, n: int, num_threads: int):
        super().__init__("inductor_quant_int8_gemv", input_nodes, layout, num_threads)
        self.has_bias = has_bias
        self.packed = packed
        self.n = n

    @classmethod
    def add_choice(
        cls, choices: list, layout, input_nodes: list, *, has_bias: bool, packed: bool, n: int
    ) -> None:
        """Append the template for ``input_nodes = [X, W, S(, B)]``; W is ``[N, K]`` or, if ``packed``, the blocked
        layout of ``primitives.pack_int8_blocked``."""
        template = cls(input_nodes, layout, has_bias, packed, n, _I.parallel_num_threads())
        choices.append(template.generate())

    def render(
        self,
        kernel,
        template_buffer_node=None,
        flag_template_buffer_has_other_users=None,
        epilogue_nodes=None,
        **kwargs,
    ) -> str:
        X, W, S, *rest = self.input_nodes
        B = rest[0] if self.has_bias else None
        Y = template_buffer_node if template_buffer_node is not None else self.output_node
        m, k = (int(s) for s in X.get_size())
        n = self.n

        def store_epilogue() -> str:
            # Rendered after def_kernel, so the epilogue reads Y through the kernel's own argument.
            # the epilogue may see the output as [..., N] (a 3-D activation): give it Y viewed in its shape
            dst = epilogue_nodes[-1]
            src = Y if list(dst.get_size()) == list(Y.get_size()) else kernel.view(Y, dst.get_size())
            return kernel.store_output(dst, src, orig_src=Y, epilogue_nodes=epilogue_nodes)

        options = dict(
            kernel=kernel,
            template=self,
            X=X,
            W=W,
            S=S,
            B=B,
            Y=Y,
            M=m,
            N=n,
            K=k,
            # see the layout note at the top of int8_gemv.cpp
            packed=self.packed,
            row_stride=K_STEP if self.packed else k,
            step_stride=4 * K_STEP if self.packed else K_STEP,
            x_is_bf16=X.get_dtype() == torch.bfloat16,
            x_is_f32=X.get_dtype() == torch.float32,
            num_threads=self.num_threads,
            export_declaration="",
            epilogue_nodes=epilogue_nodes,
            store_epilogue=store_epilogue,
        )
        return _compiled_source().render(**options)
