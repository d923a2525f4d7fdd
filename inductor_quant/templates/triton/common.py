"""What the Triton templates share: block configs for decode and prefill, when a template is offered, and how a
template's choices are added (the per-channel vectors become suffix inputs read by the shared epilogue)."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch

from ..._compat import inductor_internals

log = logging.getLogger(__name__)
_I = inductor_internals()


@dataclasses.dataclass(frozen=True)
class BlockConfig:
    block_m: int
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int

    @property
    def name(self) -> str:
        return f"triton_{self.block_m}x{self.block_n}x{self.block_k}_w{self.num_warps}_s{self.num_stages}"


# Largest M that takes the decode configs. tl.dot needs 16 rows, so decode tiles are 16 x BLOCK_N: a decode step
# reads the whole weight once, and wide K steps with several stages in flight keep the loads streaming.
DECODE_MAX_M = 16
DECODE_CONFIGS = (
    BlockConfig(16, 64, 128, num_warps=4, num_stages=4),
    BlockConfig(16, 128, 64, num_warps=4, num_stages=4),
    BlockConfig(16, 32, 256, num_warps=4, num_stages=3),
)
# Prefill: square-ish output tiles that reuse each weight tile across many rows (the shapes of Inductor's own mm
# configs). These are starting points: GPU timings were never measured (no GPU available to the project).
PREFILL_CONFIGS = (
    BlockConfig(64, 64, 64, num_warps=4, num_stages=3),
    BlockConfig(128, 128, 32, num_warps=8, num_stages=3),
    BlockConfig(64, 128, 64, num_warps=4, num_stages=4),
)
# Rows of output tiles a program group walks together (L2 reuse of weight tiles, as in Inductor's mm template).
GROUP_M = 8


def load_source(file_name: str) -> str:
    """A template's jinja source, kept next to its loader."""
    return (Path(__file__).parent / file_name).read_text()


def triton_applies(layout) -> bool:
    """Offer Triton templates where Inductor would offer its own: a GPU with Triton templates (or a CPU whose
    Inductor backend was set to Triton), whatever the max-autotune setting (the package autotunes by default)."""
    return _I.use_triton_template(layout, check_max_autotune=False)


def configs_for(m, *, group_size: int | None = None) -> tuple[BlockConfig, ...]:
    """Decode configs for a static M <= DECODE_MAX_M, prefill configs otherwise. With ``group_size`` (int4), a
    config's K step is cut to the group when wider, so that a step never spans two groups."""
    static_small = (isinstance(m, int) or m.is_number) and int(m) <= DECODE_MAX_M
    configs = DECODE_CONFIGS if static_small else PREFILL_CONFIGS
    if group_size is not None:
        cut = (dataclasses.replace(c, block_k=min(c.block_k, group_size)) for c in configs)
        configs = tuple(dict.fromkeys(cut))  # distinct, in order
    return configs


def as_output_rows(vector, m, n):
    """A per-output-channel ``[N]`` vector seen as ``[M, N]`` (stride 0 along M): the form in which a suffix input
    is loaded at the output index by the template's epilogue. A single-element vector (a per-tensor scale) becomes
    a stride-(0, 0) view of its element (``expand`` would copy it to a whole [M, N] buffer)."""
    if list(vector.get_size()) != [1]:
        return _I.realize_inputs(_I.lowering.expand(vector, [m, n]))
    ir = _I.ir
    storage, layout = ir.as_storage_and_layout(_I.realize_inputs(vector), freeze=True)
    rows = ir.FixedLayout(layout.device, layout.dtype, [m, n], [0, 0], layout.offset)
    return ir.ReinterpretView(data=storage, layout=rows)


def add_choices(
    choices: dict,
    template,
    configs,
    input_nodes: list,
    layout,
    *,
    suffix_args: int,
    epilogue_fn,
    epilogue_fn_hash: str,
    **constants,
) -> None:
    """One choice of ``template`` per block config, named by its config; a config the template cannot generate is
    logged and skipped. ``input_nodes`` must follow the order of the inputs given to ``select`` (views of them
    allowed): autotuning benchmarks every choice on the same example tensors, passed by position."""
    allow_tf32 = torch.backends.cuda.matmul.allow_tf32
    for config in configs:
        generated: list = []
        error = template.maybe_append_choice(
            generated,
            input_nodes=input_nodes,
            layout=layout,
            num_stages=config.num_stages,
            num_warps=config.num_warps,
            suffix_args=suffix_args,
            epilogue_fn=epilogue_fn,
            epilogue_fn_hash=epilogue_fn_hash,
            BLOCK_M=config.block_m,
            BLOCK_N=config.block_n,
            BLOCK_K=config.block_k,
            GROUP_M=GROUP_M,
            ALLOW_TF32=allow_tf32,
            **constants,
        )
        if generated:
            choices[config.name] = generated[0]
        else:
            log.info("%s %s not offered: %s", template.name, config.name, error)


def mm_grid(m, n, meta, *, cdiv):
    """One program per [BLOCK_M, BLOCK_N] output tile."""
    return (cdiv(m, meta["BLOCK_M"]) * cdiv(n, meta["BLOCK_N"]), 1, 1)
