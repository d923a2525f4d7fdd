"""The collectives DTensor runs on quantized weight shards (scatter when distributing, all-gather when
redistributing): each runs once per inner tensor, so the data crosses the wire quantized."""

from __future__ import annotations

import torch
import torch.distributed._functional_collectives  # noqa: F401  (registers _c10d_functional._wrap_tensor_autograd)

from ..tensor import QuantizedWeightTensor

implements = QuantizedWeightTensor.implements
c10d = torch.ops.c10d


@implements(c10d.scatter_.default)
def _(func, args, kwargs):
    """``dist.scatter`` of quantized weights: one scatter per inner tensor, in declaration order."""
    outputs, inputs, *rest = args
    works = []
    for i in range(len(outputs[0].tensor_data_names)):
        inner_out = [o._tensors()[i] for o in outputs]
        # (gloo sends a tensor's storage as is: a K slice's inner tensors must be made contiguous)
        inner_in = [[t._tensors()[i].contiguous() for t in ranks] for ranks in inputs]
        _, work = func(inner_out, inner_in, *rest, **kwargs)
        works.append(work)
    for work in works[:-1]:
        work.wait()
    return outputs, works[-1]


_c10d_functional = torch.ops._c10d_functional


@implements(_c10d_functional.all_gather_into_tensor.default)
def _(func, args, kwargs):
    """All-gather along dim 0 of every inner tensor (all of them run along N in dim 0): DTensor gathers a shard
    along dim 0 and, for a K shard, then re-joins the pieces along K with ``cat``."""
    w, *rest = args
    return w._rebuild(lambda t: func(t.contiguous(), *rest, **kwargs))


@implements(_c10d_functional.wait_tensor.default)
def _(func, args, kwargs):
    for t in args[0]._tensors():
        func(t)
    return args[0]


@implements(_c10d_functional._wrap_tensor_autograd.default)
def _(func, args, kwargs):
    # Eagerly, funcol would wrap the result in an AsyncCollectiveTensor to wait on first use; a quantized weight
    # waits for its inner collectives here instead.
    for t in args[0]._tensors():
        torch.ops._c10d_functional.wait_tensor(t)
    return args[0]._rebuild()
