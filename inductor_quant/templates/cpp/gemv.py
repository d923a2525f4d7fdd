"""Shared Python side of the package's CPP GEMV templates (stage 6 of the pipeline).

A template is a jinja C++ file next to this module plus the subclass that says which inputs it takes and which
constants it renders. Every template writes ``Y`` ([M, N]) with its own fused epilogue (scale, zero point, bias);
further pointwise nodes (an activation, a residual add) are fused by Inductor's scheduler as epilogue nodes.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, ClassVar

import torch

from ..._compat import inductor_internals
from ..epilogue import cpp_scale_bias

_I = inductor_internals()

# Largest M the templates are offered for: they re-read the activations once per row block and are compute-bound
# past a few rows (benchmarks/: M = 16 already is), so prefill-sized M goes to a dequantize + dense GEMM kernel.
MAX_M = 32


def cpp_templates_apply(device) -> bool:
    """The CPP templates run on a CPU device whose Inductor backend is C++ (the default; with
    ``cpu_backend="triton"`` Inductor's scheduler cannot render them)."""
    from torch._inductor import config

    return device is not None and device.type == "cpu" and config.cpu_backend == "cpp"


def check_dense(template: str, nodes) -> None:
    """What ``kernel_inputs`` guarantees, checked where a template is built: a layout it would misread is an error
    naming the input, never a wrong answer."""
    for i, node in enumerate(nodes):
        layout = node.get_layout()
        if layout.offset != 0 or not layout.is_contiguous():
            raise AssertionError(
                f"{template}: input {i} ({node.get_name()}) has size {list(node.get_size())}, stride "
                f"{list(node.get_stride())}, offset {layout.offset}; its kernels need a dense row-major buffer "
                "(see lowerings.common.kernel_inputs)"
            )


def store_epilogue_nodes(kernel, Y, epilogue_nodes) -> list[str]:
    """The C++ of the pointwise nodes Inductor's scheduler fused after a template, one loop nest per run of nodes of
    one shape. The nodes that compute on Y may see it as ``[..., N]`` (a 3-D activation): they get Y viewed in their
    shape. The scheduler also fuses nodes that do not read Y at all (it calls a node with no read of the template
    "supported"), such as the copy of a strided bias feeding another linear: each is stored over its own shape."""
    runs: list[list] = []
    for node in epilogue_nodes:
        if runs and list(runs[-1][-1].get_size()) == list(node.get_size()):
            runs[-1].append(node)
        else:
            runs.append([node])
    on_y = {Y.get_name()}
    code = []
    for run in runs:
        dst = run[-1]
        reads = {dep.name for node in run for dep in node.get_read_writes().reads}
        if reads & on_y:
            src = Y if list(dst.get_size()) == list(Y.get_size()) else kernel.view(Y, dst.get_size())
            code.append(kernel.store_output(dst, src, orig_src=Y, epilogue_nodes=run))
            on_y.update(node.get_name() for node in run)
        else:
            code.append(kernel.store_pointwise_nodes(dst, run))
    return code


@functools.cache
def compiled_source(file_name: str):
    """The jinja template, parsed once per process (parsing it per render cost ~10 ms x 2 per linear)."""
    from ...kernels import inline_includes

    return _I.CppTemplate._template_from_string(
        inline_includes((Path(__file__).parent / file_name).read_text())
    )


class CppGemvTemplate(_I.CppTemplate):
    """Base: ``input_nodes = [X, <weight tensors>..., (B)]``; subclasses set ``source``, ``weight_inputs``
    (the jinja names of the tensors between X and B) and ``options``."""

    source: ClassVar[str]
    weight_inputs: ClassVar[tuple[str, ...]]

    def __init__(self, name: str, input_nodes, layout, *, has_bias: bool, packed: bool, n: int, **extra):
        check_dense(name, input_nodes)
        super().__init__(name, input_nodes, layout, _I.parallel_num_threads())
        self.has_bias = has_bias
        self.packed = packed
        self.n = n
        self.extra = extra

    @classmethod
    def choice(cls, layout, input_nodes: list, **kwargs):
        """This template's choice (a ChoiceCaller) for ``input_nodes``."""
        return cls(input_nodes, layout, **kwargs).generate()

    def options(self, X) -> dict[str, Any]:
        """Scheme-specific constants for the jinja source."""
        raise NotImplementedError

    def render(
        self,
        kernel,
        template_buffer_node=None,
        flag_template_buffer_has_other_users=None,
        epilogue_nodes=None,
        **kwargs,
    ) -> str:
        X, *rest = self.input_nodes
        weights = dict(zip(self.weight_inputs, rest, strict=False))
        B = rest[len(self.weight_inputs)] if self.has_bias else None
        Y = template_buffer_node if template_buffer_node is not None else self.output_node
        m, k = (int(s) for s in X.get_size())

        def store_epilogue() -> str:
            # Rendered after def_kernel, so the epilogue reads Y through the kernel's own argument.
            return "\n".join(store_epilogue_nodes(kernel, Y, epilogue_nodes))

        options = dict(
            kernel=kernel,
            template=self,
            X=X,
            **weights,
            B=B,
            Y=Y,
            M=m,
            N=self.n,
            K=k,
            packed=self.packed,
            x_is_bf16=X.get_dtype() == torch.bfloat16,
            x_is_f32=X.get_dtype() == torch.float32,
            num_threads=self.num_threads,
            export_declaration="",
            epilogue_nodes=epilogue_nodes,
            store_epilogue=store_epilogue,
            epilogue=cpp_scale_bias,  # the shared scale / bias epilogue (templates/epilogue.py), as C++
            **self.options(X),
        )
        return compiled_source(self.source).render(**options)
