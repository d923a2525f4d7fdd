"""Tensor parallelism (stage 2, beside the weight subclasses): how an int8 / int4 weight splits into DTensor shards.

Sharding a quantized weight slices each of its inner tensors, so a shard holds int data and its own scales (and
zero points), never a float copy. Which inner dimension follows which weight dimension is one table,
``SHARD_RULES``; the aten ops DTensor reaches while sharding and redistributing (split, slice, scatter, ...)
are implemented from it, one ``@implements`` block each (the collectives in ``collectives.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import return_and_correct_aliasing

from ..tensor import Int4WeightTensor, Int8WeightTensor, QuantizedWeightTensor

aten = torch.ops.aten


@dataclass(frozen=True)
class FieldRule:
    """How one inner tensor of an ``[N, K]`` weight follows a slice of the weight.

    ``n_dim``: its dimension that runs along N (output features: colwise sharding). ``k_dim``: its dimension that
    runs along K (input features: rowwise sharding), or ``None`` if it is per output channel and stays whole;
    ``k_per_index``: how many weight columns one index of ``k_dim`` covers (2 for int4 nibble pairs, the group size
    for group scales). A K slice must start and end on a multiple of it.
    """

    n_dim: int
    k_dim: int | None
    k_per_index: str | int = 1  # an int, or the name of the weight attribute that holds it


SHARD_RULES: dict[type[QuantizedWeightTensor], dict[str, FieldRule]] = {
    # colwise: qdata rows and scales split along N; rowwise: qdata columns split, per-channel scales stay whole
    Int8WeightTensor: {"qdata": FieldRule(0, 1), "scale": FieldRule(0, None)},
    # colwise: everything splits along N; rowwise: along K in whole groups (two values per qdata byte)
    Int4WeightTensor: {
        "qdata": FieldRule(0, 1, 2),
        "scale": FieldRule(0, 1, "group_size"),
        "zero_point": FieldRule(0, 1, "group_size"),
    },
}


def _rules(w: QuantizedWeightTensor) -> dict[str, FieldRule]:
    rules = SHARD_RULES.get(type(w))
    if rules is None:
        raise NotImplementedError(
            f"{type(w).__name__} cannot be sharded yet (tensor parallelism supports "
            f"{[t.__name__ for t in SHARD_RULES]})"
        )
    return rules


def slice_weight(w: QuantizedWeightTensor, dim: int, start: int, stop: int) -> QuantizedWeightTensor:
    """``w`` sliced to ``[start, stop)`` along its (logical) ``dim``, as a weight of the same kind.

    A K slice of an int4 weight that would cut a group is a ``ValueError`` naming the group size. Shards are in the
    weight's canonical form.
    """
    w = w.canonical()
    rules = _rules(w)
    dim = dim % 2
    along_n = dim == (1 if w.transposed else 0)
    sliced = []
    for name, t in zip(w.tensor_data_names, w._tensors(), strict=True):
        rule = rules[name]
        if along_n:
            sliced.append(t.narrow(rule.n_dim, start, stop - start))
            continue
        if rule.k_dim is None:
            sliced.append(t)
            continue
        per = _k_per_index(w, rule)
        _check_whole_units(w, rule, per, dim, start, stop)
        sliced.append(t.narrow(rule.k_dim, start // per, (stop - start) // per))
    return type(w)(*sliced, dtype=w.dtype, transposed=w.transposed, **w._attrs())


def cat_weights(ws: list[QuantizedWeightTensor], dim: int) -> QuantizedWeightTensor:
    """The inverse of ``slice_weight``: weights of one kind joined along their (logical) ``dim``. Per-channel
    fields (no K dimension) must agree between the pieces of a K join."""
    ws = [w.canonical() for w in ws]
    first = ws[0]
    for w in ws[1:]:
        if type(w) is not type(first) or w.transposed != first.transposed or w._attrs() != first._attrs():
            raise ValueError(f"cannot concatenate {first!r} with {w!r}")
    dim = dim % 2
    along_n = dim == (1 if first.transposed else 0)
    joined = []
    for i, name in enumerate(first.tensor_data_names):
        rule = _rules(first)[name]
        parts = [w._tensors()[i] for w in ws]
        if along_n:
            joined.append(torch.cat(parts, rule.n_dim))
        elif rule.k_dim is None:
            if not all(torch.equal(parts[0], p) for p in parts[1:]):
                raise ValueError(f"cannot join {type(first).__name__} pieces along K: their {name} differ")
            joined.append(parts[0])
        else:
            joined.append(torch.cat(parts, rule.k_dim))
    return type(first)(*joined, dtype=first.dtype, transposed=first.transposed, **first._attrs())


def pad_weight(w: QuantizedWeightTensor, dim: int, size: int) -> QuantizedWeightTensor:
    """``w`` with ``size`` zero rows (``dim`` along N) or columns (along K: whole groups) appended: DTensor pads
    the last shard of an uneven split so that every rank's shard has the same shape."""
    w = w.canonical()
    dim = dim % 2
    along_n = dim == (1 if w.transposed else 0)
    padded = []
    for name, t in zip(w.tensor_data_names, w._tensors(), strict=True):
        rule = _rules(w)[name]
        if along_n:
            pad_dim, pad = rule.n_dim, size
        elif rule.k_dim is None:
            padded.append(t)
            continue
        else:
            per = _k_per_index(w, rule)
            _check_whole_units(w, rule, per, dim, w.shape[dim], w.shape[dim] + size)
            pad_dim, pad = rule.k_dim, size // per
        shape = list(t.shape)
        shape[pad_dim] = pad
        padded.append(torch.cat([t, t.new_zeros(shape)], pad_dim))
    return type(w)(*padded, dtype=w.dtype, transposed=w.transposed, **w._attrs())


def _k_per_index(w: QuantizedWeightTensor, rule: FieldRule) -> int:
    return rule.k_per_index if isinstance(rule.k_per_index, int) else getattr(w, rule.k_per_index)


def _check_whole_units(w, rule: FieldRule, per: int, dim: int, start: int, stop: int) -> None:
    if start % per or stop % per:
        what = f"group_size={per}" if isinstance(rule.k_per_index, str) else f"{per} values per byte"
        raise ValueError(
            f"cannot split the input features (K={w.shape[dim]}) of this {type(w).__name__} at [{start}, {stop}): "
            f"a shard must hold whole groups ({what}); choose a shard count that divides K / {per}"
        )


implements = QuantizedWeightTensor.implements


@implements(aten.split.Tensor)
def _(func, args, kwargs):
    w, split_size = args[0], args[1]
    dim = args[2] if len(args) > 2 else kwargs.get("dim", 0)
    size = w.shape[dim]
    return [slice_weight(w, dim, s, min(s + split_size, size)) for s in range(0, size, split_size)]


@implements(aten.slice.Tensor)
def _(func, args, kwargs):
    w, dim, start, end, step = (list(args) + [0, None, None, 1][len(args) - 1 :])[:5]
    size = w.shape[dim]
    start, end = start or 0, size if end is None else end
    start, end = max(start + size if start < 0 else start, 0), min(end + size if end < 0 else end, size)
    if step != 1:
        raise NotImplementedError(f"{type(w).__name__} slices with step 1 only, got step={step}")
    return return_and_correct_aliasing(func, args, kwargs, slice_weight(w, dim, start, max(start, end)))


@implements(aten.view.default, aten._unsafe_view.default)
def _(func, args, kwargs):
    w, shape = args
    if list(shape) != list(w.shape):
        raise NotImplementedError(
            f"{type(w).__name__} can only be viewed as its own shape, got {list(shape)}"
        )
    return w._rebuild(lambda t: t.view(t.shape))


@implements(aten.empty_like.default, aten.zeros_like.default)
def _(func, args, kwargs):
    return args[0]._rebuild(torch.zeros_like)


@implements(aten.is_same_size.default)
def _(func, args, kwargs):
    return args[0].shape == args[1].shape


@implements(aten.is_pinned.default)
def _(func, args, kwargs):
    return all(t.is_pinned() for t in args[0]._tensors())


@implements(aten.cat.default)
def _(func, args, kwargs):
    tensors = args[0]
    dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
    return cat_weights(list(tensors), dim)


@implements(aten.constant_pad_nd.default)
def _(func, args, kwargs):
    w, pad = args[0], list(args[1])
    value = args[2] if len(args) > 2 else kwargs.get("value", 0)
    pad += [0] * (4 - len(pad))
    if value != 0 or pad[0] or pad[2] or min(pad) < 0:
        raise NotImplementedError(
            f"{type(w).__name__} pads with zeros at the end only, got pad={pad} value={value}"
        )
    if pad[1]:
        w = pad_weight(w, 1, pad[1])
    if pad[3]:
        w = pad_weight(w, 0, pad[3])
    return w
