"""Every torch version check and private ``torch._inductor`` import the package makes, each with its reason.

Inductor's extension points are private and move between minor releases; keeping them here means a new
torch release is one file to audit.
"""

from __future__ import annotations

import functools
import logging
import warnings

import torch

log = logging.getLogger("inductor_quant")

# The range the package is tested against; pyproject.toml declares the same range.
SUPPORTED_TORCH = ((2, 15), (2, 16))  # [min, max)


def _torch_minor() -> tuple[int, int]:
    major, minor = torch.__version__.split("+")[0].split(".")[:2]
    return int(major), int(minor)


@functools.cache
def torch_supported() -> bool:
    """True for a torch inside SUPPORTED_TORCH; otherwise warns once and returns False."""
    low, high = SUPPORTED_TORCH
    ok = low <= _torch_minor() < high
    if not ok:
        warnings.warn(
            f"inductor_quant supports torch >={low[0]}.{low[1]},<{high[0]}.{high[1]}; found torch "
            f"{torch.__version__}. backend='quant_inductor' falls back to stock Inductor.",
            RuntimeWarning,
            stacklevel=3,
        )
    return ok


def amx_ready() -> bool:
    """This CPU has AMX tiles with bf16 and the kernel granted this process their state (Linux asks each process
    to request it). ``torch.cpu._is_amx_tile_supported`` / ``_init_amx`` are private: torch's own oneDNN and CPP
    GEMM template make the same request."""
    try:
        return bool(torch.cpu._is_amx_tile_supported() and torch.cpu._init_amx())
    except (AttributeError, RuntimeError) as e:
        log.info("AMX not usable here (%s)", e)
        return False


# --- Inductor internals ------------------------------------------------------------------------------
# Imported lazily (inside functions) by the modules that need them, so `import inductor_quant` stays cheap
# and never touches Inductor state. Each name below is private API used for one stated reason.


def inductor_internals():
    """The private Inductor names the lowerings and templates build on (torch 2.15 layout)."""
    from torch._inductor import (
        ir,  # layouts, ExternKernel.require_contiguous
        lowering,  # register_lowering
    )
    from torch._inductor.codegen.cpp_template import CppTemplate  # base of the GEMV template
    from torch._inductor.kernel.mm_common import mm_args  # realizes inputs, builds the output layout
    from torch._inductor.select_algorithm import (  # autotuning between choices
        ExternKernelChoice,
        SymbolicGridFn,  # a Triton template's launch grid, evaluated on symbolic sizes too
        TritonTemplate,  # base of the Triton templates
        add_feedback_saver,  # autotune timings, for the log
        autotune_select_algorithm,
        realize_inputs,
    )
    from torch._inductor.utils import (
        parallel_num_threads,  # the OpenMP thread count kernels are built for
        use_triton_template,  # whether the device takes Triton templates (Inductor's own rule)
    )
    from torch._inductor.virtualized import V  # the graph being lowered (size hints), the ops handler

    return _Internals(
        ir=ir,
        lowering=lowering,
        CppTemplate=CppTemplate,
        mm_args=mm_args,
        ExternKernelChoice=ExternKernelChoice,
        add_feedback_saver=add_feedback_saver,
        autotune_select_algorithm=autotune_select_algorithm,
        realize_inputs=realize_inputs,
        parallel_num_threads=parallel_num_threads,
        SymbolicGridFn=SymbolicGridFn,
        TritonTemplate=TritonTemplate,
        V=V,
        use_triton_template=use_triton_template,
    )


class _Internals:
    def __init__(self, **names):
        self.__dict__.update(names)


def loaded_graph_modules() -> list:
    """The Python modules of the compiled graphs Inductor has loaded in this process; a frozen graph's module holds
    its constants as attributes (``PyCodeCache`` keeps them all; ``backend`` drops a dead graph's constants)."""
    from torch._inductor.codecache import PyCodeCache

    return list(PyCodeCache.modules)
