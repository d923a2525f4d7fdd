"""Merging a LoRA delta into a quantized weight, and taking it out again bit-exactly.

A quantized weight is a set of *units* (int8: an output row; int4: a group of K within a row), each with integer
values ``q`` on a grid ``(q - zero) * scale``. ``merge_lora_delta`` requantizes ``W + delta`` on that same grid:
``q`` becomes ``q + round(delta / scale)``, which is exactly ``round((W + delta) / scale)`` since ``W / scale`` is
already an integer. Scales and zero points do not change, so ``unmerge_lora_delta`` recomputes the same integers
and subtracts them. What keeps that exact rather than approximate:

* the delta is computed deterministically: ``B @ A`` summed one rank at a time in float64, where each product of two
  <= 24-bit mantissas is exact, so the result does not depend on BLAS blocking, thread count or FMA contraction;
* values that leave the quantized range by one step are clipped (the quantizers themselves clip group extremes by
  more) and their original value is kept in the record; a unit that would leave it by more is requantized on a
  fresh grid instead, and its original values, scale and zero point are kept. These are the only memory merging
  costs (measured in ``benchmarks/bench_lora_merge.py``);
* the record holds its own copy of the adapter's ``A``, ``B`` and scaling, so unmerging is exact even if the adapter
  was trained, replaced or deleted after the merge.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from ..primitives import (
    INT4_QMAX,
    INT8_QMAX,
    pack_int4,
    quantize_int4_rows,
    quantize_int8_per_channel,
    unpack_int4,
)
from ..tensor import Int4WeightTensor, Int8WeightTensor, QuantizedWeightTensor

# Rows of the weight processed at a time: bounds the float64 delta to ROW_CHUNK * K * 8 bytes (16 MiB at K = 4096).
ROW_CHUNK = 512

# How far (in grid steps) a merged value may leave the quantized range and be clipped rather than regridded.
CLIP_STEPS = 1


@dataclass
class MergeRecord:
    """What ``unmerge_lora_delta`` needs to take one merged adapter out of a quantized weight.

    Fields:
        lora_A: ``[r, K]`` copy of the adapter's A weight (its own dtype).
        lora_B: ``[N, r]`` copy of the adapter's B weight.
        scaling: the adapter's ``alpha / r`` when it was merged.
        clipped: int64 ``[C]`` flat indices (``unit * unit_len + i``) of the values clipped to the range.
        clipped_q: int8 ``[C]`` their values before the merge.
        regridded: int64 ``[U]`` indices of the units requantized on a fresh grid.
        regridded_q: int8 ``[U, unit_len]`` their values before the merge.
        regridded_params: their scale (and zero point) before the merge, ``[U]`` each.
    """

    lora_A: torch.Tensor
    lora_B: torch.Tensor
    scaling: float
    clipped: torch.Tensor
    clipped_q: torch.Tensor
    regridded: torch.Tensor
    regridded_q: torch.Tensor
    regridded_params: tuple[torch.Tensor, ...]

    def nbytes(self) -> int:
        """Bytes this record holds (the adapter copy included)."""
        tensors = (self.lora_A, self.lora_B, self.clipped, self.clipped_q, self.regridded, self.regridded_q)
        return sum(t.numel() * t.element_size() for t in (*tensors, *self.regridded_params))


@dataclass(frozen=True)
class _Grid:
    """One scheme's weight seen as units on a grid.

    ``read(w, rows)`` gives the units of those rows as int32 ``q [U, unit_len]`` and params ``(scale [U], ...)``
    (a copy); ``write`` stores them back; ``requantize(fresh float64 [U, unit_len], scale_dtype)`` quantizes units
    on fresh grids; ``zero(params)`` is the float64 zero point per unit ``[U, 1]`` (0 for symmetric grids).
    """

    qmin: int
    qmax: int
    units_per_row: Callable[[QuantizedWeightTensor], int]
    read: Callable
    write: Callable
    requantize: Callable
    zero: Callable


def _int8_read(w: Int8WeightTensor, rows: slice):
    return w.qdata_rows(rows).to(torch.int32), (w.scale[rows].clone(),)


def _int8_write(w: Int8WeightTensor, rows: slice, q: torch.Tensor, params) -> None:
    w.set_qdata_rows(rows, q.to(torch.int8))
    w.scale[rows] = params[0]


def _int8_requantize(fresh: torch.Tensor, scale_dtype: torch.dtype):
    q, scale = quantize_int8_per_channel(fresh)
    if scale_dtype != scale.dtype:  # round against the scale as stored
        scale = scale.to(scale_dtype)
        q = torch.round(fresh / scale.double()[:, None]).clamp_(-INT8_QMAX, INT8_QMAX)
    return q.to(torch.int32), (scale,)


def _int4_read(w: Int4WeightTensor, rows: slice):
    q = unpack_int4(w.qdata_rows(rows)).to(torch.int32).reshape(-1, w.group_size)
    return q, (w.scale[rows].reshape(-1).clone(), w.zero_point[rows].reshape(-1).clone())


def _int4_write(w: Int4WeightTensor, rows: slice, q: torch.Tensor, params) -> None:
    n_rows = rows.stop - rows.start
    w.set_qdata_rows(rows, pack_int4(q.reshape(n_rows, -1)))
    w.scale[rows] = params[0].reshape(n_rows, -1)
    w.zero_point[rows] = params[1].reshape(n_rows, -1)


def _int4_requantize(fresh: torch.Tensor, scale_dtype: torch.dtype):
    packed, scale, zero = quantize_int4_rows(fresh, fresh.shape[1], scale_dtype)
    return unpack_int4(packed).to(torch.int32), (scale[:, 0], zero[:, 0])


_GRIDS = {
    Int8WeightTensor: _Grid(
        -INT8_QMAX,
        INT8_QMAX,
        lambda w: 1,
        _int8_read,
        _int8_write,
        _int8_requantize,
        lambda params: torch.zeros_like(params[0], dtype=torch.float64)[:, None],
    ),
    Int4WeightTensor: _Grid(
        0,
        INT4_QMAX,
        lambda w: w.shape[1] // w.group_size,
        _int4_read,
        _int4_write,
        _int4_requantize,
        lambda params: params[1].double()[:, None],
    ),
}


def lora_delta(lora_A: torch.Tensor, lora_B: torch.Tensor, scaling: float, rows: slice) -> torch.Tensor:
    """``scaling * (B @ A)[rows]`` in float64, bit-identical on every call (see the module docstring)."""
    a = lora_A.detach().double()
    b = lora_B.detach()[rows].double()
    delta = torch.zeros(b.shape[0], a.shape[1], dtype=torch.float64, device=a.device)
    for i in range(a.shape[0]):
        delta += b[:, i, None] * a[None, i, :]
    return delta.mul_(scaling)


def check_mergeable(weight: torch.Tensor, lora_A: torch.Tensor, lora_B: torch.Tensor) -> None:
    """Raise ``ValueError`` unless ``weight`` is an int8 / int4 weight of the shape ``B @ A`` has."""
    if type(weight) not in _GRIDS:
        raise ValueError(
            f"can only merge LoRA into {[t.__name__ for t in _GRIDS]} weights, got {type(weight).__name__}"
        )
    if weight.transposed:
        raise ValueError("cannot merge LoRA into a transposed view of a quantized weight")
    shape = (lora_B.shape[0], lora_A.shape[1])
    if tuple(weight.shape) != shape:
        raise ValueError(f"LoRA delta of shape {shape} does not match the weight's {tuple(weight.shape)}")


def check_finite_delta(lora_A: torch.Tensor, lora_B: torch.Tensor, scaling: float, adapter: str) -> None:
    """Raise ``ValueError`` naming ``adapter`` if its delta has a NaN or infinity."""
    for rows in _row_chunks(lora_B.shape[0]):
        if not torch.isfinite(lora_delta(lora_A, lora_B, scaling, rows)).all():
            raise _non_finite(adapter)


def merge_lora_delta(
    weight: QuantizedWeightTensor, lora_A: torch.Tensor, lora_B: torch.Tensor, scaling: float, adapter: str
) -> MergeRecord:
    """Fold ``scaling * B @ A`` into ``weight`` in place (its inner tensors change; the tensor object does not).

    Raises ``ValueError`` naming ``adapter``, with the weight unchanged, if the weight is not mergeable or the
    delta is not finite (an integer weight cannot hold a NaN, so this is checked on every merge).
    """
    check_mergeable(weight, lora_A, lora_B)
    grid = _GRIDS[type(weight)]
    lora_A, lora_B, scaling = lora_A.detach().clone(), lora_B.detach().clone(), float(scaling)
    per_row = grid.units_per_row(weight)
    merged_chunks, clipped, clipped_q, regridded, regridded_q, regridded_params = [], [], [], [], [], []
    for rows in _row_chunks(weight.shape[0]):
        q, params = grid.read(weight, rows)
        delta = lora_delta(lora_A, lora_B, scaling, rows).view(q.shape)
        steps = torch.round(delta / params[0].double()[:, None])
        if not torch.isfinite(steps).all():
            raise _non_finite(adapter)
        # Anything beyond twice the range overflows just the same; saturating keeps the sum in int32.
        span = grid.qmax - grid.qmin
        merged = q + steps.clamp_(-2 * span, 2 * span).to(torch.int32)
        outside = torch.maximum(grid.qmin - merged, merged - grid.qmax)
        regrid = (outside > CLIP_STEPS).any(dim=1).nonzero()[:, 0]
        clip = (outside > 0) & (outside <= CLIP_STEPS)
        clip[regrid] = False
        first_unit = rows.start * per_row
        flat = clip.view(-1).nonzero()[:, 0]
        clipped.append(flat + first_unit * q.shape[1])
        clipped_q.append(q.view(-1)[flat].to(torch.int8))
        if regrid.numel():
            fresh = (q[regrid].double() - grid.zero(params)[regrid]) * params[0][regrid, None].double()
            fresh_q, fresh_params = grid.requantize(fresh + delta[regrid], params[0].dtype)
            regridded.append(regrid + first_unit)
            regridded_q.append(q[regrid].to(torch.int8))
            regridded_params.append(tuple(p[regrid].clone() for p in params))
            merged[regrid] = fresh_q
            for p, fresh_p in zip(params, fresh_params, strict=True):
                p[regrid] = fresh_p.to(p.dtype)
        merged_chunks.append((rows, merged.clamp_(grid.qmin, grid.qmax), params))
    # Commit only once every chunk succeeded: a failure above leaves the weight as it was.
    for rows, merged, params in merged_chunks:
        grid.write(weight, rows, merged, params)
    index = torch.empty(0, dtype=torch.int64, device=weight.device)
    q1, params1 = grid.read(weight, slice(0, 1))
    q0, params0 = q1[:0], tuple(p[:0] for p in params1)
    return MergeRecord(
        lora_A,
        lora_B,
        scaling,
        clipped=torch.cat(clipped),
        clipped_q=torch.cat(clipped_q),
        regridded=torch.cat([index, *regridded]),
        regridded_q=torch.cat([q0.to(torch.int8), *regridded_q]),
        regridded_params=tuple(torch.cat(ps) for ps in zip(params0, *regridded_params, strict=True)),
    )


def merge_adapters(
    weight: QuantizedWeightTensor,
    adapters: Sequence[tuple[str, torch.Tensor, torch.Tensor, float]],
    safe_merge: bool,
) -> Iterator[tuple[str, MergeRecord]]:
    """Merge ``(name, A, B, scaling)`` adapters into ``weight`` one by one, yielding each one's record as it lands.

    Every adapter's shape is checked before any merges; with ``safe_merge`` its delta is checked for non-finite
    values too, so a bad adapter stops the merge before anything changed (all or nothing). Without it, the
    adapters before a non-finite one stay merged (and were yielded) and a ``ValueError`` names it.
    """
    for _, a, b, _ in adapters:
        check_mergeable(weight, a, b)
    if safe_merge:
        for name, a, b, scaling in adapters:
            check_finite_delta(a, b, scaling, name)
    for name, a, b, scaling in adapters:
        yield name, merge_lora_delta(weight, a, b, scaling, name)


def unmerge_lora_delta(weight: QuantizedWeightTensor, record: MergeRecord) -> None:
    """Undo ``merge_lora_delta`` (the last merge still in ``weight``), in place, bit-exactly."""
    grid = _GRIDS[type(weight)]
    per_row = grid.units_per_row(weight)
    for rows in _row_chunks(weight.shape[0]):
        q, params = grid.read(weight, rows)
        delta = lora_delta(record.lora_A, record.lora_B, record.scaling, rows).view(q.shape)
        # Units that kept their grid have the scale the merge used, so these are the merge's own steps.
        steps = torch.round(delta / params[0].double()[:, None])
        span = grid.qmax - grid.qmin
        q -= steps.clamp_(-2 * span, 2 * span).to(torch.int32)
        first_unit, stop_unit = rows.start * per_row, rows.stop * per_row
        mine = _within(record.clipped, first_unit * q.shape[1], stop_unit * q.shape[1])
        q.view(-1)[record.clipped[mine] - first_unit * q.shape[1]] = record.clipped_q[mine].to(torch.int32)
        mine = _within(record.regridded, first_unit, stop_unit)
        local = record.regridded[mine] - first_unit
        q[local] = record.regridded_q[mine].to(torch.int32)
        for p, saved in zip(params, record.regridded_params, strict=True):
            p[local] = saved[mine]
        grid.write(weight, rows, q, params)


def _row_chunks(n: int):
    return (slice(start, min(start + ROW_CHUNK, n)) for start in range(0, n, ROW_CHUNK))


def _within(index: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    return (index >= start) & (index < stop)


def _non_finite(adapter: str) -> ValueError:
    return ValueError(
        f"LoRA adapter {adapter!r} has non-finite values in its delta weight; it was not merged"
    )
