"""Triton template for int4 groupwise weight-only matmuls: loads ``int4_mm.py.jinja``.

``Y = X @ dequantize(Q, S, Z).T (+ B)``: X ``[M, K]`` fp32 / bf16 / fp16, Q ``[N, K / 2]`` uint8 nibbles, S / Z
``[N, K / group_size]`` scale and uint8 zero point per group; B ``[N]`` is a suffix input added by the shared
epilogue of ``templates/epilogue.py`` (the group scales are applied in the K loop).
"""

from __future__ import annotations

from ..._compat import inductor_internals
from ..epilogue import triton_scale_bias
from .common import add_choices, as_output_rows, configs_for, load_source, mm_grid

_I = inductor_internals()

int4_mm_template = _I.TritonTemplate(
    name="inductor_quant_int4_mm",
    grid=_I.SymbolicGridFn(mm_grid),
    source=load_source("int4_mm.py.jinja"),
)


def add_int4_mm_choices(choices: dict, x, qdata, scale, zero_point, group_size: int, bias, layout) -> None:
    """Add one ``int4_mm`` choice per block config whose K step lies inside a group."""
    m = x.get_size()[0]
    n = qdata.get_size()[0]
    suffix = [as_output_rows(bias, m, n)] if bias is not None else []
    add_choices(
        choices,
        int4_mm_template,
        configs_for(m, group_size=group_size),
        [x, qdata, scale, zero_point, *suffix],
        layout,
        suffix_args=len(suffix),
        epilogue_fn=triton_scale_bias(has_scale=False, has_bias=bias is not None),
        epilogue_fn_hash=f"inductor_quant.scale_bias(scale=False, bias={bias is not None})",
        GROUP_SIZE=group_size,
    )
