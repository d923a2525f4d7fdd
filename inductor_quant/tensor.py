"""Weight tensor subclasses (stage 2 of the pipeline): quantized data that behaves like the float weight it replaces.

A subclass declares its inner tensors and attributes once, as data; flatten / unflatten (what torch.compile
needs), repr, detach, device / dtype moves and pickling all derive from that declaration. Each aten op it
supports is one ``@implements`` block.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch.utils._python_dispatch import return_and_correct_aliasing

from . import ops as _ops  # noqa: F401  (registers torch.ops.inductor_quant.*)
from .primitives import (
    INT4_PACK_RUN,
    PACK_K_STEP,
    WEIGHT_LAYOUTS,
    dequantize_int4,
    dequantize_int8,
    int8_blocked_numel,
    pack_int4_blocked,
    pack_int8_blocked,
    read_blocked_rows,
    unpack_int4_blocked,
    unpack_int8_blocked,
    write_blocked_rows,
)

aten = torch.ops.aten


class QuantizedWeightTensor(torch.Tensor):
    """Base class: a wrapper subclass whose inner tensors are ``tensor_data_names``.

    ``dtype`` is the float dtype the weight stands in for (what ``weight.dtype`` reports); ``transposed`` marks the
    ``w.t()`` view that ``F.linear`` takes before its matmul.
    """

    tensor_data_names: ClassVar[tuple[str, ...]] = ()
    tensor_attribute_names: ClassVar[tuple[str, ...]] = ()
    _impls: ClassVar[dict[Any, Callable]] = {}

    @staticmethod
    def __new__(cls, *tensors: torch.Tensor, dtype: torch.dtype, transposed: bool = False, **attrs):
        first = tensors[0]
        shape = first.shape[::-1] if transposed else first.shape
        return torch.Tensor._make_wrapper_subclass(
            cls, shape, dtype=dtype, device=first.device, requires_grad=False
        )

    def __init__(self, *tensors: torch.Tensor, dtype: torch.dtype, transposed: bool = False, **attrs):
        for name, t in zip(self.tensor_data_names, tensors, strict=True):
            setattr(self, name, t)
        for name in self.tensor_attribute_names:
            setattr(self, name, attrs[name] if name in attrs else getattr(type(self), name))
        self.transposed = transposed

    # --- derived from the declaration -------------------------------------------------------------
    def _tensors(self) -> list[torch.Tensor]:
        return [getattr(self, n) for n in self.tensor_data_names]

    def _attrs(self) -> dict[str, Any]:
        return {n: getattr(self, n) for n in self.tensor_attribute_names}

    def _rebuild(self, fn: Callable[[torch.Tensor], torch.Tensor] = lambda t: t, **changes):
        kwargs = {"dtype": self.dtype, "transposed": self.transposed, **self._attrs(), **changes}
        return type(self)(*(fn(t) for t in self._tensors()), **kwargs)

    def __tensor_flatten__(self):
        return list(self.tensor_data_names), (self.dtype, self.transposed, self._attrs())

    @classmethod
    def __tensor_unflatten__(cls, inner, ctx, outer_size, outer_stride):
        dtype, transposed, attrs = ctx
        return cls(*(inner[n] for n in cls.tensor_data_names), dtype=dtype, transposed=transposed, **attrs)

    def __reduce_ex__(self, protocol):
        return _rebuild_quantized_weight, (
            type(self),
            self._tensors(),
            self.dtype,
            self.transposed,
            self._attrs(),
        )

    def __repr__(self) -> str:
        fields = ", ".join(
            f"{n}={tuple(t.shape)}:{t.dtype}"
            for n, t in zip(self.tensor_data_names, self._tensors(), strict=True)
        )
        attrs = "".join(f", {n}={v}" for n, v in self._attrs().items())
        return (
            f"{type(self).__name__}(shape={tuple(self.shape)}, dtype={self.dtype}, {fields}{attrs}, "
            f"transposed={self.transposed})"
        )

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The float weight (as ``self.dtype`` unless ``dtype`` is given), transposed if this is a ``w.t()`` view."""
        raise NotImplementedError

    def canonical(self) -> QuantizedWeightTensor:
        """This weight with its inner tensors in the scheme's documented, device-neutral form (what is saved,
        sharded and moved): itself, unless a kernel layout holds it (``BlockedLayoutWeight``, ``layout="blocked"``)."""
        return self

    def with_kernel_layout(self) -> QuantizedWeightTensor:
        """This weight in the layout its device's kernels read (what ``quantize_`` and ``load_safetensors`` give)."""
        return self

    def rows(self, index: torch.Tensor) -> QuantizedWeightTensor:
        """The output rows ``index`` of the (untransposed) weight, as a weight of the same kind."""
        return self._rebuild(lambda t: t[index])

    def linear(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """``x @ W.T (+ bias)`` through this scheme's quantized op, for an ``[M, K]`` activation."""
        raise NotImplementedError

    def _stable_hash_for_caching(self) -> str:
        """AOTAutograd's cache key for this tensor: its metadata (class, shape, dtypes, attributes, inner layouts),
        not its values, as for any tensor input."""
        parts = [
            type(self).__qualname__,
            tuple(self.shape),
            str(self.dtype),
            self.transposed,
            sorted(self._attrs().items()),
        ]
        parts += [(tuple(t.shape), tuple(t.stride()), str(t.dtype), str(t.device)) for t in self._tensors()]
        return hashlib.blake2b(repr(parts).encode(), digest_size=16).hexdigest()

    def nbytes_quantized(self) -> int:
        """Bytes held by the inner tensors."""
        return sum(t.numel() * t.element_size() for t in self._tensors())

    __torch_function__ = torch._C._disabled_torch_function_impl

    @classmethod
    def implements(cls, *aten_ops):
        def decorator(fn):
            for op in aten_ops:
                cls._impls[op] = fn
            return fn

        return decorator

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        impl = cls._impls.get(func)
        if impl is None:
            raise NotImplementedError(
                f"{cls.__name__} does not implement {func}; call .dequantize() first if a float weight is what you need"
            )
        return impl(func, args, kwargs)


def _rebuild_quantized_weight(cls, tensors, dtype, transposed, attrs):
    return cls(*tensors, dtype=dtype, transposed=transposed, **attrs)


class BlockedLayoutWeight(QuantizedWeightTensor):
    """A weight whose ``qdata`` (output rows of values, first inner tensor) is held plain or in a blocked decode
    layout (``layout``): blocks of ``PACK_ROWS`` rows, ``blocked_run`` bytes of each row per step, one contiguous run
    per block, flat. On the CPU, where K allows it, ``quantize_`` holds it blocked: every CPU kernel (decode GEMV,
    prefill GEMM, the eager op) reads that layout, so a compiled model reads the module's own bytes and holds each
    weight once. The other inner tensors (scales, zero points) are the same in both layouts."""

    layout = "plain"
    blocked_run: ClassVar[int]  # bytes of a row per step
    blocked_k_multiple: ClassVar[int]  # K a blocked weight needs a multiple of
    values_per_byte: ClassVar[int]
    _pack: ClassVar[Callable]  # plain qdata -> blocked
    _unpack: ClassVar[Callable]  # (blocked, N, K) -> plain qdata

    @staticmethod
    def _check_layout(layout: str) -> None:
        if layout not in WEIGHT_LAYOUTS:
            raise ValueError(f"layout must be one of {WEIGHT_LAYOUTS}, got {layout!r}")

    def _shape_nk(self) -> tuple[int, int]:
        return tuple(self.shape[::-1] if self.transposed else self.shape)

    def _row_bytes(self) -> int:
        return self._shape_nk()[1] // self.values_per_byte

    def plain_qdata(self) -> torch.Tensor:
        """``qdata`` in its plain form (a copy for the blocked layout)."""
        return type(self)._unpack(self.qdata, *self._shape_nk()) if self.layout == "blocked" else self.qdata

    def with_layout(self, layout: str) -> BlockedLayoutWeight:
        """This weight with ``qdata`` in ``layout`` (itself if it is already)."""
        self._check_layout(layout)
        if layout == self.layout:
            return self
        qdata = type(self)._pack(self.qdata) if layout == "blocked" else self.plain_qdata()
        return type(self)(
            qdata,
            *self._tensors()[1:],
            dtype=self.dtype,
            transposed=self.transposed,
            **{**self._attrs(), "layout": layout},
        )

    def canonical(self) -> BlockedLayoutWeight:
        return self.with_layout("plain")

    def with_kernel_layout(self) -> BlockedLayoutWeight:
        """Blocked on the CPU where K is a multiple of ``blocked_k_multiple``; plain elsewhere."""
        blocked = self.device.type == "cpu" and self._shape_nk()[1] % self.blocked_k_multiple == 0
        return self.with_layout("blocked" if blocked else "plain")

    def qdata_rows(self, rows: torch.Tensor | slice) -> torch.Tensor:
        """Rows ``rows`` of ``qdata`` in its plain form."""
        if self.layout != "blocked":
            return self.qdata[rows]
        return read_blocked_rows(self.qdata, self._row_bytes(), self.blocked_run, rows)

    def set_qdata_rows(self, rows: slice, q: torch.Tensor) -> None:
        """Set rows ``rows`` of ``qdata`` (given in its plain form), in place."""
        if self.layout != "blocked":
            self.qdata[rows] = q.to(self.qdata.dtype)
        else:
            write_blocked_rows(self.qdata, self._row_bytes(), self.blocked_run, rows, q)

    def rows(self, index: torch.Tensor) -> BlockedLayoutWeight:
        if self.layout != "blocked":
            return super().rows(index)
        return type(self)(
            self.qdata_rows(index),
            *(t[index] for t in self._tensors()[1:]),
            dtype=self.dtype,
            **{**self._attrs(), "layout": "plain"},
        )


class Int8WeightTensor(BlockedLayoutWeight):
    """Per-output-channel symmetric int8 weight: ``w ≈ qdata * scale[:, None]``.

    Fields:
        qdata: int8 in ``[-127, 127]``; ``layout="plain"``: ``[N, K]``, row-major; ``layout="blocked"``: flat, the
            layout of ``primitives.pack_int8_blocked`` (K % 32 == 0; see ``BlockedLayoutWeight``).
        scale: ``[N]`` float (fp32 by default), one per output channel.
    ``canonical()`` is the plain form: what is saved, sharded and moved to other devices.
    """

    tensor_data_names = ("qdata", "scale")
    tensor_attribute_names = ("layout",)
    blocked_run = PACK_K_STEP
    blocked_k_multiple = PACK_K_STEP
    values_per_byte = 1
    _pack = staticmethod(pack_int8_blocked)
    _unpack = staticmethod(unpack_int8_blocked)

    @staticmethod
    def __new__(cls, qdata, scale, *, dtype, transposed=False, layout="plain"):
        cls._check_layout(layout)
        n = scale.shape[0]
        shape = (n, qdata.numel() // int8_blocked_numel(n, 1)) if layout == "blocked" else tuple(qdata.shape)
        return torch.Tensor._make_wrapper_subclass(
            cls, shape[::-1] if transposed else shape, dtype=dtype, device=qdata.device, requires_grad=False
        )

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        w = dequantize_int8(self.plain_qdata(), self.scale, dtype or self.dtype)
        return w.t() if self.transposed else w

    def linear(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        if self.layout == "blocked":
            n = self._shape_nk()[0]
            return torch.ops.inductor_quant.int8_weight_linear_packed(
                x, self.qdata, self.scale, bias, None, n
            )
        return torch.ops.inductor_quant.int8_weight_linear(x, self.qdata, self.scale, bias)


class Int4WeightTensor(BlockedLayoutWeight):
    """Asymmetric groupwise int4 weight: ``w[n, k] ≈ (q[n, k] - zero_point[n, g]) * scale[n, g]``,
    ``g = k // group_size``.

    Fields:
        qdata: uint8, two values per byte (``k = 2j`` low nibble, ``k = 2j + 1`` high nibble); ``layout="plain"``:
            ``[N, K / 2]``; ``layout="blocked"``: flat, the layout of ``primitives.pack_int4_blocked`` (K % 128 == 0;
            see ``BlockedLayoutWeight``).
        scale: ``[N, K / group_size]`` float (bf16 by default).
        zero_point: ``[N, K / group_size]`` uint8 in [0, 15], or float (fractional: ``INT4_ZERO_POINT_DTYPES``).
        group_size: 32, 64, 128 or 256.
    ``canonical()`` is the plain form: what is saved, sharded and moved to other devices.
    """

    tensor_data_names = ("qdata", "scale", "zero_point")
    tensor_attribute_names = ("group_size", "layout")
    blocked_run = INT4_PACK_RUN
    blocked_k_multiple = 2 * INT4_PACK_RUN
    values_per_byte = 2
    _pack = staticmethod(pack_int4_blocked)
    _unpack = staticmethod(unpack_int4_blocked)

    @staticmethod
    def __new__(cls, qdata, scale, zero_point, *, dtype, transposed=False, group_size, layout="plain"):
        cls._check_layout(layout)
        if layout == "blocked":
            n, k = scale.shape[0], scale.shape[1] * group_size
        else:
            n, k = qdata.shape[0], 2 * qdata.shape[1]
        shape = (k, n) if transposed else (n, k)
        return torch.Tensor._make_wrapper_subclass(
            cls, shape, dtype=dtype, device=qdata.device, requires_grad=False
        )

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        w = dequantize_int4(
            self.plain_qdata(), self.scale, self.zero_point, self.group_size, dtype or self.dtype
        )
        return w.t() if self.transposed else w

    def linear(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        if self.layout == "blocked":
            return torch.ops.inductor_quant.int4_weight_linear_packed(
                x, self.qdata, self.scale, self.zero_point, self.group_size, bias, None, self._shape_nk()[0]
            )
        return torch.ops.inductor_quant.int4_weight_linear(
            x, self.qdata, self.scale, self.zero_point, self.group_size, bias
        )


class Int4WeightA8Tensor(Int4WeightTensor):
    """The int4 groupwise weight of ``Int4WeightTensor`` (same fields, same storage) whose linear quantizes the
    activations to int8 per token first (W4A8: ``Int8DynamicActivationInt4WeightConfig``). Inference only. Held
    plain: its decode kernel reads a lane layout made at compile time."""

    def with_kernel_layout(self) -> Int4WeightA8Tensor:
        return self.canonical()

    def linear(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        from .ops import int4_a8_linear

        w = self.canonical()
        return int4_a8_linear(x, w.qdata, w.scale, w.zero_point, w.group_size, bias)


implements = QuantizedWeightTensor.implements


@implements(aten.detach.default, aten.alias.default)
def _(func, args, kwargs):
    return return_and_correct_aliasing(func, args, kwargs, args[0]._rebuild(func))


@implements(aten.clone.default)
def _(func, args, kwargs):
    return args[0]._rebuild(torch.clone)


@implements(aten.t.default)
def _(func, args, kwargs):
    w = args[0]
    return return_and_correct_aliasing(func, args, kwargs, w._rebuild(transposed=not w.transposed))


@implements(aten.transpose.int)
def _(func, args, kwargs):
    w, d0, d1 = args
    if {d0 % 2, d1 % 2} != {0, 1}:
        raise NotImplementedError(f"{type(w).__name__}.transpose({d0}, {d1}) on a 2-D weight")
    return return_and_correct_aliasing(func, args, kwargs, w._rebuild(transposed=not w.transposed))


@implements(aten.mm.default)
def _(func, args, kwargs):
    x, w = args
    if isinstance(w, QuantizedWeightTensor) and w.transposed and not isinstance(x, QuantizedWeightTensor):
        return w.linear(x)
    # Any other product (e.g. grad @ w in a backward) is correct but not a quantized kernel.
    return func(
        *(
            a.dequantize(x.dtype if a is w else w.dtype) if isinstance(a, QuantizedWeightTensor) else a
            for a in args
        )
    )


@implements(aten.addmm.default)
def _(func, args, kwargs):
    bias, x, w = args
    plain = kwargs.get("beta", 1) == 1 and kwargs.get("alpha", 1) == 1 and bias.dim() == 1
    if isinstance(w, QuantizedWeightTensor) and w.transposed and plain:
        return w.linear(x, bias)
    return func(bias, x, w.dequantize(x.dtype), **kwargs)


@implements(aten.expand.default)
def _(func, args, kwargs):
    w, size = args[0], list(args[1])
    if not w.transposed or size[-2:] not in (list(w.shape), [-1, -1]):
        raise NotImplementedError(f"{type(w).__name__} of shape {tuple(w.shape)}: expand to {size}")
    return BatchExpandedWeight(w, [*size[:-2], *w.shape])


@implements(aten.embedding.default)
def _(func, args, kwargs):
    """A tied token embedding reading the quantized lm_head weight: the rows it looks up, dequantized."""
    w, indices = args[0], args[1]
    if w.transposed:
        raise NotImplementedError(f"embedding lookup in a transposed {type(w).__name__}")
    flat = indices.reshape(-1)
    rows = w.rows(flat).dequantize()
    return rows.reshape(*indices.shape, rows.shape[-1])


@implements(aten._to_copy.default)
def _(func, args, kwargs):
    w = args[0]
    dtype = kwargs.get("dtype") or w.dtype
    if not dtype.is_floating_point:
        raise ValueError(f"{type(w).__name__} stands in for a float weight; cannot convert it to {dtype}")
    device = kwargs.get("device")
    if device is None or torch.device(device).type == w.device.type:
        return w._rebuild(lambda t: t.to(device) if device is not None else t, dtype=dtype)
    # kernel layouts belong to one kind of device: move the canonical form, then take the target's layout
    return w.canonical()._rebuild(lambda t: t.to(device), dtype=dtype).with_kernel_layout()


@implements(aten.copy_.default)
def _(func, args, kwargs):
    dst, src = args
    if type(src) is type(dst) and getattr(src, "layout", None) != getattr(dst, "layout", None):
        src = src.with_layout(dst.layout)  # e.g. a saved (plain) weight loaded into a blocked one
    if (
        type(src) is not type(dst)
        or src.transposed != dst.transposed
        or src.shape != dst.shape
        or src._attrs() != dst._attrs()
    ):
        raise ValueError(
            f"can only copy a {type(dst).__name__} of shape {tuple(dst.shape)} and {dst._attrs()} into one, "
            f"got {src!r}"
        )
    for d, s in zip(dst._tensors(), src._tensors(), strict=True):
        d.copy_(s)
    return dst


@implements(aten.equal.default)
def _(func, args, kwargs):
    a, b = (w.canonical() if isinstance(w, QuantizedWeightTensor) else w for w in args)
    return (
        type(a) is type(b)
        and a.transposed == b.transposed
        and a._attrs() == b._attrs()
        and all(torch.equal(x, y) for x, y in zip(a._tensors(), b._tensors(), strict=True))
    )


class BatchExpandedWeight(torch.Tensor):
    """``w.t().expand(*batch, K, N)`` of a quantized weight: what ``matmul`` makes of a linear's weight when the
    activation's leading dimensions cannot be folded into rows (a 3-D view such as ``x[:, 3:, :]``), before its
    ``bmm``. It holds the 2-D weight, not copies: its views that keep the last two dimensions and its ``bmm`` with a
    float ``[B, M, K]`` activation (one quantized linear over all ``B * M`` rows) are all it supports."""

    @staticmethod
    def __new__(cls, weight: QuantizedWeightTensor, size):
        return torch.Tensor._make_wrapper_subclass(
            cls, size, dtype=weight.dtype, device=weight.device, requires_grad=False
        )

    def __init__(self, weight: QuantizedWeightTensor, size):
        self.weight = weight

    __torch_function__ = torch._C._disabled_torch_function_impl

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        w = args[0] if isinstance(args[0], cls) else None
        if func in (aten.view.default, aten._unsafe_view.default) and w is not None:
            size = list(args[1])
            if size[-2:] == list(w.shape[-2:]):
                return cls(w.weight, size)
        if func is aten.bmm.default and isinstance(args[1], cls) and not isinstance(args[0], cls):
            x, w = args
            b, m, k = x.shape
            return w.weight.linear(x.reshape(b * m, k)).view(b, m, -1)
        raise NotImplementedError(
            f"a batch-expanded {type((w or args[1]).weight).__name__} supports views and bmm only, not {func}"
        )


# torch.load(weights_only=True) accepts only allow-listed globals.
torch.serialization.add_safe_globals(
    [Int8WeightTensor, Int4WeightTensor, Int4WeightA8Tensor, _rebuild_quantized_weight]
)
