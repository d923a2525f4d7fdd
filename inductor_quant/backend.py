"""The ``quant_inductor`` torch.compile backend: stock Inductor plus this package's pass, lowerings and freezing.

Registered through the ``torch_dynamo_backends`` entry point, so ``torch.compile(model, backend="quant_inductor")``
works in a fresh process without importing ``inductor_quant`` first.

What it turns on, for the graphs it compiles only (plain ``torch.compile`` is untouched):

* the dequantize -> matmul rewrite pass (``inductor_quant/passes``), as Inductor's ``joint_custom_post_pass``,
  which runs before freezing can fold a quantized weight into a float one;
* under ``torch.no_grad()``, freezing: module parameters and buffers become compile-time constants, so quantized
  weights can be prepacked and the kernels specialised to them (not for graphs with non-tensor inputs, such as a
  tensor-parallel graph's ``DeviceMesh``, which freezing cannot hold). Stock Inductor decides this at trace time from the
  global ``torch._inductor.config.freezing``; this backend decides it per graph instead. Turn it off with
  ``options={"inductor_quant.freezing": False}``. As with stock freezing, a frozen graph does not see later
  in-place updates of the weights: recompile (``torch._dynamo.reset()``) after changing them. A frozen graph
  guards the identity of the tensors it froze, so another model of the same architecture gets its own compile
  (as with stock freezing); its constants are dropped when the compiled graph is (``torch._dynamo.reset()`` after
  deleting the model), where stock Inductor keeps them for the life of the process;
* with freezing, compile-time prepacking of the int8 / int4 weights of decode-shaped linears (static M <= 32) into the
  layout the GEMV kernel streams fastest, as Inductor's ``post_grad_custom_post_pass``. The packed copy is held by
  the compiled graph; ``options={"inductor_quant.prepack": False}`` turns prepacking off;
* on CPU, attention with a few query rows (decode steps) as the package's decode kernel instead of ATen's flash
  kernel (``passes/attention.py``); ``options={"inductor_quant.decode_attention": False}`` keeps the flash kernel.

Any other ``options`` are Inductor config patches, as with ``backend="inductor"``, except Inductor's C++ wrapper
(``cpp_wrapper``): the package's extern kernels (the prefill GEMMs) are Python functions it cannot call, so this
backend compiles with the Python wrapper, and says so once (measured on SmolLM2 decode, the C++ wrapper gave no
speed: 6.34 vs 6.24 ms/token).
"""

from __future__ import annotations

import logging
import os
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ._compat import torch_supported

log = logging.getLogger(__name__)

FREEZING_OPTION = "inductor_quant.freezing"
PREPACK_OPTION = "inductor_quant.prepack"
DECODE_ATTENTION_OPTION = "inductor_quant.decode_attention"
REPORT_CHOICES_ENV = "TORCHINDUCTOR_MAX_AUTOTUNE_REPORT_CHOICES_STATS"
_FREEZABLE_INPUTS = (torch.Tensor, torch.SymInt, torch.SymFloat, torch.SymBool, int, float, bool)


def quant_inductor(
    gm: torch.fx.GraphModule,
    example_inputs: Sequence[Any],
    *,
    mode: str | None = None,
    options: dict[str, Any] | None = None,
) -> Callable[..., Any]:
    from torch._inductor import list_mode_options
    from torch._inductor.compile_fx import compile_fx

    mode_options = list_mode_options(mode) if mode not in (None, "default") else {}
    patches: dict[str, Any] = {**mode_options, **(options or {})}
    freeze = patches.pop(FREEZING_OPTION, True)
    prepack = patches.pop(PREPACK_OPTION, True)
    decode_attention = patches.pop(DECODE_ATTENTION_OPTION, True)
    if not torch_supported():
        return compile_fx(gm, example_inputs, config_patches=patches)
    _python_wrapper(patches)

    from . import lowerings  # noqa: F401  (registers the lowerings of torch.ops.inductor_quant.*)
    from .passes import decode_attention_pass, prepack_pass, rewrite_pass

    if decode_attention:
        decode_attention_pass(gm)

    patches.setdefault("joint_custom_post_pass", rewrite_pass())
    # The package's lowerings autotune in the default mode, where stock Inductor does not; Inductor would then
    # write its "Autotune Choices Stats" lines to stderr on every compile. TORCH_LOGS="+inductor_quant" reports
    # the same choices; the environment variable still turns the stderr report back on.
    if REPORT_CHOICES_ENV not in os.environ:
        patches.setdefault("max_autotune_report_choices_stats", False)
    if not (freeze and not torch.is_grad_enabled()):
        return compile_fx(gm, example_inputs, config_patches=patches)
    opaque = sorted({type(v).__name__ for v in example_inputs if not isinstance(v, _FREEZABLE_INPUTS)})
    if opaque:
        # e.g. the DeviceMesh of a DTensor (tensor-parallel) graph: Inductor's freezing would try to make a
        # constant of it and fail. The graph still gets the rewrite and the lowerings, on weights passed as inputs.
        log.info(
            "freezing off for this graph: it takes %s inputs, which freezing cannot hold", ", ".join(opaque)
        )
        return compile_fx(gm, example_inputs, config_patches=patches)

    kept = _lift_module_state_to_attributes(gm, example_inputs)
    patches["freezing"] = True
    if prepack:
        patches.setdefault("post_grad_custom_post_pass", prepack_pass())
    compiled = compile_fx(
        gm,
        [example_inputs[i] for i in kept],
        inner_compile=_compile_releasing_constants,
        config_patches=patches,
    )
    log.debug(
        "freezing: %d of %d graph inputs became constants",
        len(example_inputs) - len(kept),
        len(example_inputs),
    )

    # Dynamo builds the call from the placeholders left in `gm`: lifted inputs are no longer passed.
    return compiled


_warned_cpp_wrapper = False


def _python_wrapper(patches: dict[str, Any]) -> None:
    """Compile with Inductor's Python wrapper where the C++ one was asked for (in ``options`` or the global
    config): its code generation has no way to call the package's extern kernels (Python functions, not
    registered ops) and fails deep inside Inductor. Said once per process."""
    global _warned_cpp_wrapper
    from torch._inductor import config

    if not patches.get("cpp_wrapper", config.cpp_wrapper):
        return
    patches["cpp_wrapper"] = False
    if not _warned_cpp_wrapper:
        log.warning(
            "quant_inductor compiles with Inductor's Python wrapper: cpp_wrapper=True cannot call the package's "
            "extern kernels (its decode kernels are C++ either way)"
        )
        _warned_cpp_wrapper = True


def _lift_module_state_to_attributes(gm: torch.fx.GraphModule, example_inputs: Sequence[Any]) -> list[int]:
    """Turn placeholders that Dynamo marked as module parameters / buffers into ``get_attr`` nodes.

    This is what Dynamo itself does when it traces with freezing on (``is_parameter_freezing()``); Inductor's
    freezing then folds them into constants. Returns the indices of the inputs that stay graph inputs.
    """
    from torch._guards import TracingContext

    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    kept, frozen_sources = [], []
    for i, (node, value) in enumerate(zip(placeholders, example_inputs, strict=True)):
        is_state = (
            isinstance(value, torch.Tensor)
            and getattr(value, "_dynamo_static_input_type", None) is not None
            and "grapharg" in node.meta
            and hasattr(gm, "_param_name_to_source")
            and TracingContext.try_get() is not None  # where its identity can be guarded (below)
        )
        if not is_state or not node.users:
            kept.append(i)
            continue
        name = f"_frozen_{node.name}"
        # The compiled graph now holds this tensor's values: it may only serve calls that see this very tensor.
        # Dynamo traced it as an input, without the identity guard it adds when it traces with freezing on,
        # so without this guard another model of the same architecture would run on this model's weights.
        frozen_sources.append(node.meta["grapharg"].source)
        if isinstance(value, torch.nn.Parameter):
            gm.register_parameter(name, value)
        else:
            gm.register_buffer(name, value)
        with gm.graph.inserting_before(node):
            attr = gm.graph.get_attr(name)
        attr.meta.update(node.meta)
        # AOTAutograd maps lifted attributes back to Dynamo sources for its guards.
        gm._param_name_to_source[name] = node.meta["grapharg"].source
        node.replace_all_uses_with(attr)
        gm.graph.erase_node(node)
    _guard_identities(frozen_sources)
    gm.recompile()
    return kept


def _guard_identities(sources: list[Any]) -> None:
    """Guard frozen tensors by identity alone. Dynamo traced them as inputs and guards their metadata (dtype, shape,
    strides, and those of a subclass's inner tensors: three tensor checks per quantized weight, ~700 per graph of a
    30-layer model, about 1 ms of every call). A frozen graph serves those very tensors' values and does not see
    later updates of them (the freezing contract above), so their metadata checks guard nothing more: one identity
    check each replaces them. The guards from (or under) these sources are dropped in one pass over the guards:
    Dynamo's ``remove_guards_with_source`` rescans them all per source, ~20 s of a 30-layer model's compile."""
    from torch._dynamo.guards import GuardBuilder, install_guard
    from torch._dynamo.source import ChainedSource
    from torch._guards import TracingContext

    if not sources:
        return
    targets = set(sources)

    def frozen(source: Any) -> bool:  # Dynamo's is_from_source, against all the targets at once
        while source not in targets:
            if not isinstance(source, ChainedSource):
                return False
            source = source.base
        return True

    guards = TracingContext.get().guards_context.dynamo_guards
    kept = [g for g in guards.inner if not frozen(g.originating_source)]
    guards.inner = type(guards.inner)(kept)
    guards.source_to_guards.clear()
    for guard in kept:
        guards.track_guard_by_source(guard)
    for source in sources:
        install_guard(source.make_guard(GuardBuilder.ID_MATCH))


def _compile_releasing_constants(*args: Any, **kwargs: Any) -> Any:
    """Inductor's ``compile_fx_inner``, whose frozen constants go when its compiled graph goes.

    Inductor loads a frozen graph's code as a module holding the constants (the frozen weights, our packed copies)
    as attributes, and keeps every such module for the life of the process: without this, a compiled model
    deleted after ``torch._dynamo.reset()`` would keep all its weights in memory (stock freezing does).
    """
    from torch._inductor.codecache import PyCodeCache
    from torch._inductor.compile_fx import compile_fx_inner

    compiled = compile_fx_inner(*args, **kwargs)
    call = getattr(compiled, "current_callable", None)
    namespace = getattr(getattr(call, "__func__", call), "__globals__", None)
    # (a module loaded without constants is cached and shared by every graph with the same code: left alone)
    shared = any(vars(m) is namespace for m in PyCodeCache.modules_no_attr.values())
    if namespace is not None and not shared:
        names = [name for name, value in namespace.items() if isinstance(value, torch.Tensor)]
        weakref.finalize(compiled, _drop_names, namespace, names).atexit = False  # nothing to free at exit
    return compiled


def _drop_names(namespace: dict[str, Any], names: list[str]) -> None:
    for name in names:
        namespace.pop(name, None)
