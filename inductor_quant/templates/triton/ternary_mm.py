"""Triton template for ternary (BitLinear) matmuls with int8 activations: loads ``ternary_mm.py.jinja``.

``Y = (X @ T.T) * XS[:, None] * WS (+ B)``: X ``[M, K]`` int8, T the 2-bit packed ``[N, ceil(K / 256) * 64]``
uint8 weight, XS ``[M]``, WS ``[N]`` or ``[1]``, B ``[N]``. The kernel applies XS per row; WS and B are suffix
inputs applied by the shared epilogue of ``templates/epilogue.py`` (inputs keep the op's order: X, XS, T, WS, B).
"""

from __future__ import annotations

from ..._compat import inductor_internals
from ..epilogue import triton_scale_bias
from .common import BlockConfig, add_choices, as_output_rows, configs_for, load_source, mm_grid

_I = inductor_internals()

ternary_mm_template = _I.TritonTemplate(
    name="inductor_quant_ternary_mm",
    grid=_I.SymbolicGridFn(mm_grid),
    source=load_source("ternary_mm.py.jinja"),
)

# A K step is one 64-byte block of 256 values (four 64-column planes): the configs' own K steps do not apply.
K_STEP = 256


def _per_block(config: BlockConfig) -> BlockConfig:
    return BlockConfig(config.block_m, config.block_n, K_STEP, config.num_warps, config.num_stages)


def add_ternary_mm_choices(choices: dict, x, x_scale, qweight, weight_scale, bias, layout) -> None:
    """Add one ``ternary_mm`` choice per block config (decode or prefill by M)."""
    m = x.get_size()[0]
    n = qweight.get_size()[0]
    suffix = [as_output_rows(weight_scale, m, n)]
    if bias is not None:
        suffix.append(as_output_rows(bias, m, n))
    add_choices(
        choices,
        ternary_mm_template,
        tuple(dict.fromkeys(_per_block(c) for c in configs_for(m))),
        [x, x_scale, qweight, *suffix],
        layout,
        suffix_args=len(suffix),
        epilogue_fn=triton_scale_bias(has_scale=True, has_bias=bias is not None),
        epilogue_fn_hash=f"inductor_quant.scale_bias(scale=True, bias={bias is not None})",
    )
