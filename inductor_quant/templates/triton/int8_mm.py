"""Triton template for int8 weight-only matmuls: loads ``int8_mm.py.jinja``.

``Y = (X @ W.T) * S (+ B)``: X ``[M, K]`` fp32 / bf16 / fp16, W ``[N, K]`` int8, S and B ``[N]`` (suffix inputs,
applied by the shared epilogue of ``templates/epilogue.py``).
"""

from __future__ import annotations

from ..._compat import inductor_internals
from ..epilogue import triton_scale_bias
from .common import add_choices, as_output_rows, configs_for, load_source, mm_grid

_I = inductor_internals()

int8_mm_template = _I.TritonTemplate(
    name="inductor_quant_int8_mm",
    grid=_I.SymbolicGridFn(mm_grid),
    source=load_source("int8_mm.py.jinja"),
)


def add_int8_mm_choices(choices: dict, x, qweight, scale, bias, layout) -> None:
    """Add one ``int8_mm`` choice per block config for ``x @ qweight.T * scale (+ bias)``."""
    m, k = x.get_size()
    n = qweight.get_size()[0]
    suffix = [as_output_rows(scale, m, n)] + ([as_output_rows(bias, m, n)] if bias is not None else [])
    configs = configs_for(m)
    add_choices(
        choices,
        int8_mm_template,
        configs,
        [x, qweight, *suffix],
        layout,
        suffix_args=len(suffix),
        epilogue_fn=triton_scale_bias(has_scale=True, has_bias=bias is not None),
        epilogue_fn_hash=f"inductor_quant.scale_bias(scale=True, bias={bias is not None})",
        EVEN_K=all(_I.V.graph.sizevars.statically_known_multiple_of(k, c.block_k) for c in configs),
    )
