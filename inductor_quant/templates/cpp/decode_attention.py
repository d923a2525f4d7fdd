"""CPP template of ``torch.ops.inductor_quant.decode_attention``: loads ``decode_attention.cpp``.

Inputs ``[Q, K, V, (MASK)]``, dense row-major from offset 0; every size is a constant of the rendered kernel (the
decode graphs it serves have static shapes: a static KV cache, a fixed number of query rows).
"""

from __future__ import annotations

from typing import Any

import torch

from ..._compat import inductor_internals
from .gemv import check_dense, compiled_source, store_epilogue_nodes

_I = inductor_internals()


class CppDecodeAttentionTemplate(_I.CppTemplate):
    def __init__(self, input_nodes, layout, *, is_causal: bool, scale: float):
        check_dense("inductor_quant_decode_attention", input_nodes)
        super().__init__("inductor_quant_decode_attention", input_nodes, layout, _I.parallel_num_threads())
        self.is_causal = is_causal
        self.scale = scale

    @classmethod
    def choice(cls, layout, input_nodes: list, **kwargs):
        return cls(input_nodes, layout, **kwargs).generate()

    def render(
        self,
        kernel,
        template_buffer_node=None,
        flag_template_buffer_has_other_users=None,
        epilogue_nodes=None,
        **kwargs,
    ) -> str:
        Q, K, V, *rest = self.input_nodes
        MASK = rest[0] if rest else None
        Y = template_buffer_node if template_buffer_node is not None else self.output_node
        b, hq, m, d = (int(s) for s in Q.get_size())
        hkv, length, dv = int(K.get_size()[1]), int(K.get_size()[2]), int(V.get_size()[3])
        options: dict[str, Any] = dict(
            kernel=kernel,
            template=self,
            Q=Q,
            K=K,
            V=V,
            MASK=MASK,
            Y=Y,
            B=b,
            HQ=hq,
            M=m,
            D=d,
            HKV=hkv,
            L=length,
            DV=dv,
            scale=f"{float(self.scale)!r}f",
            causal=self.is_causal,
            mask_kind="none" if MASK is None else "bool" if MASK.get_dtype() == torch.bool else "float",
            mask_strides=_broadcast_strides(MASK) if MASK is not None else None,
            num_threads=self.num_threads,
            export_declaration="",
            epilogue_nodes=epilogue_nodes,
            store_epilogue=lambda: "\n".join(store_epilogue_nodes(kernel, Y, epilogue_nodes)),
        )
        return compiled_source("decode_attention.cpp").render(**options)


def _broadcast_strides(mask) -> list[int]:
    """Strides of the (dense) mask's batch, head and row dimensions, 0 where the dimension is broadcast."""
    sizes = [int(s) for s in mask.get_size()]
    strides = [int(s) for s in mask.get_stride()]
    return [0 if size == 1 else stride for size, stride in zip(sizes[:3], strides[:3], strict=True)]
