"""Merging LoRA deltas into int8 / int4 weights: bit-exact unmerge, the error bound of the merge, errors."""

from __future__ import annotations

import pytest
import torch

from inductor_quant.nn import lora_merge
from inductor_quant.nn.lora_merge import (
    lora_delta,
    merge_adapters,
    merge_lora_delta,
    unmerge_lora_delta,
)
from inductor_quant.primitives import (
    dequantize_int4,
    dequantize_int8,
    quantize_int4_groupwise,
    quantize_int8_per_channel,
    sqnr,
    unpack_int4,
)
from inductor_quant.tensor import Int4WeightTensor, Int8WeightTensor

# Weight shapes: an odd N, and N spanning several row chunks once ROW_CHUNK is made small.
SHAPES = [(65, 128), (96, 256)]
SCHEMES = ["int8", "int4-g32", "int4-g128"]
# Delta norm relative to the weight's: small (values move a step or less: no unit is regridded), typical for a
# trained adapter (some values clipped by one step), large (units regridded).
DELTAS = {"small": 0.003, "typical": 0.05, "large": 0.5}


def quantized_weight(scheme: str, n: int, k: int, seed: int = 0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) / k**0.5
    if scheme.startswith("int8"):
        q, s = quantize_int8_per_channel(w)
        if scheme == "int8-bf16-scale":
            s = s.to(torch.bfloat16)
        return Int8WeightTensor(q, s, dtype=dtype)
    group = int(scheme.split("-g")[1])
    if k % group:
        pytest.skip(f"K={k} is not a multiple of group {group}")
    q, s, z = quantize_int4_groupwise(w, group)
    return Int4WeightTensor(q, s, z, dtype=dtype, group_size=group)


def adapter(n: int, k: int, r: int, relative: float, weight: torch.Tensor, seed: int = 1):
    """LoRA ``A [r, K]``, ``B [N, r]`` whose delta ``B @ A`` has norm ``relative * ||W||``."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(r, k, generator=g) / k**0.5
    b = torch.randn(n, r, generator=g)
    b *= relative * weight.dequantize().norm() / (b @ a).norm()
    return a, b


def inner(w) -> list[torch.Tensor]:
    return [t.clone() for t in w._tensors()]


def assert_bit_identical(w, saved: list[torch.Tensor]) -> None:
    for t, s in zip(w._tensors(), saved, strict=True):
        assert t.dtype == s.dtype and torch.equal(t, s)


@pytest.fixture(params=[False, True], ids=["one-chunk", "many-chunks"])
def row_chunk(request, monkeypatch):
    if request.param:
        monkeypatch.setattr(lora_merge, "ROW_CHUNK", 16)


@pytest.mark.parametrize("size", list(DELTAS))
@pytest.mark.parametrize("scheme", [*SCHEMES, "int8-bf16-scale"])
@pytest.mark.parametrize(("n", "k"), SHAPES)
def test_unmerge_restores_the_weight_bit_exactly_over_ten_cycles(scheme, n, k, size, row_chunk):
    w = quantized_weight(scheme, n, k)
    a, b = adapter(n, k, 4, DELTAS[size], w)
    original = inner(w)
    for _ in range(10):
        record = merge_lora_delta(w, a, b, 2.0, "a")
        # (A small delta may be below int4's resolution: merging it changes nothing.)
        changed = any(not torch.equal(t, o) for t, o in zip(w._tensors(), original, strict=True))
        assert changed or size == "small"
        unmerge_lora_delta(w, record)
        assert_bit_identical(w, original)
    # The grid-leaving paths are exercised where they should be: no regridding for a small delta, some for a large.
    if size == "small":
        assert record.regridded.numel() == 0
    if size == "large":
        assert record.regridded.numel() > 0


def exact_dequantize(w) -> torch.Tensor:
    """The weight in float64, exactly (``dequantize`` rounds int8 products to fp32)."""
    if isinstance(w, Int8WeightTensor):
        return w.qdata.double() * w.scale.double()[:, None]
    q = unpack_int4(w.qdata).double().unflatten(1, (-1, w.group_size))
    return ((q - w.zero_point.double()[..., None]) * w.scale.double()[..., None]).flatten(1)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_merge_is_a_requantization_on_the_weight_grid(scheme):
    """Reference: W + delta in float64. A value that kept its grid is within half a step of it, a clipped one
    within 1.5 steps; a regridded unit is exactly what the package's quantizer makes of the reference."""
    n, k = 96, 256
    w = quantized_weight(scheme, n, k)
    a, b = adapter(n, k, 8, 0.2, w)
    reference = exact_dequantize(w) + lora_delta(a, b, 1.0, slice(0, n))
    record = merge_lora_delta(w, a, b, 1.0, "a")
    assert record.clipped.numel() > 0 and record.regridded.numel() > 0, "all three kinds of unit are checked"
    merged = exact_dequantize(w)
    unit = k if scheme == "int8" else w.group_size
    units = lambda t: t.reshape(-1, unit)  # noqa: E731
    regridded = torch.zeros(n * k // unit, dtype=torch.bool)
    regridded[record.regridded] = True
    clipped = torch.zeros(n * k, dtype=torch.bool)
    clipped[record.clipped] = True
    step = w.scale.double().reshape(-1, 1).expand(-1, unit)
    error = units(merged - reference).abs() / step
    kept = ~units(clipped) & ~regridded[:, None]
    assert (error[kept] <= 0.5 + 1e-9).all()
    assert (error[units(clipped)] <= 1.5 + 1e-9).all()
    fresh = units(reference)[regridded].float()
    if scheme == "int8":
        expected = dequantize_int8(*quantize_int8_per_channel(fresh), torch.float64)
    else:
        expected = dequantize_int4(*quantize_int4_groupwise(fresh, unit), unit, torch.float64)
    torch.testing.assert_close(units(merged)[regridded], expected, atol=0, rtol=1e-6)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_merge_is_as_accurate_as_dequantize_add_requantize(scheme):
    """The design document's merge (dequantize, add, requantize from scratch) as the baseline for the output
    error vs the float-merged weight: ours is within 0.75 dB of it at every delta size (clipping values by one
    step costs int4 ~0.5 dB at deltas of 20-50% of the weight) and better for small deltas, which a fresh grid
    would round into noise."""
    n, k = 96, 256
    x = torch.randn(64, k, generator=torch.Generator().manual_seed(3))
    for size, relative in DELTAS.items():
        w = quantized_weight(scheme, n, k)
        a, b = adapter(n, k, 8, relative, w)
        reference = w.dequantize() + lora_delta(a, b, 1.0, slice(0, n)).float()
        merge_lora_delta(w, a, b, 1.0, "a")
        if scheme == "int8":
            baseline = dequantize_int8(*quantize_int8_per_channel(reference))
        else:
            baseline = dequantize_int4(*quantize_int4_groupwise(reference, w.group_size), w.group_size)
        ours_db = sqnr(x @ reference.T, x @ w.dequantize().T)
        baseline_db = sqnr(x @ reference.T, x @ baseline.T)
        assert ours_db >= baseline_db - 0.75, (size, ours_db, baseline_db)
        if size == "small":
            assert ours_db > baseline_db, (ours_db, baseline_db)


def test_several_adapters_unmerge_last_first():
    w = quantized_weight("int4-g32", 65, 64)
    original = inner(w)
    adapters = [(name, *adapter(65, 64, 2, rel, w, seed=i)) for i, (name, rel) in enumerate(DELTAS.items())]
    records = [r for _, r in merge_adapters(w, [(n, a, b, 1.0) for n, a, b in adapters], safe_merge=False)]
    for record in reversed(records):
        unmerge_lora_delta(w, record)
    assert_bit_identical(w, original)


def test_unmerge_uses_the_adapter_as_it_was_merged():
    """Training (or deleting) the adapter after merging does not break the exact unmerge."""
    w = quantized_weight("int8", 96, 256)
    a, b = adapter(96, 256, 4, DELTAS["typical"], w)
    original = inner(w)
    record = merge_lora_delta(w, a, b, 1.0, "a")
    a.add_(1.0)
    b.mul_(3.0)
    unmerge_lora_delta(w, record)
    assert_bit_identical(w, original)


def test_delta_does_not_depend_on_the_thread_count():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(16, 512, generator=g), torch.randn(300, 16, generator=g)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = lora_delta(a, b, 0.37, slice(0, 300))
        torch.set_num_threads(max(2, threads))
        many = lora_delta(a, b, 0.37, slice(0, 300))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, many)


@pytest.mark.parametrize("scheme", ["int8", "int4-g32"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_delta_raises_naming_the_adapter_and_changes_nothing(scheme, bad):
    w = quantized_weight(scheme, 65, 64)
    good_a, good_b = adapter(65, 64, 2, 0.05, w)
    bad_a = good_a.clone()
    bad_a[1, 7] = bad
    original = inner(w)
    with pytest.raises(ValueError, match="LoRA adapter 'broken' has non-finite values"):
        merge_lora_delta(w, bad_a, good_b, 1.0, "broken")
    assert_bit_identical(w, original)
    # safe_merge: all or nothing. Without it, the good adapter before the bad one lands.
    adapters = [("good", good_a, good_b, 1.0), ("broken", bad_a, good_b, 1.0)]
    landed = []
    with pytest.raises(ValueError, match="'broken'"):
        landed.extend(merge_adapters(w, adapters, safe_merge=True))
    assert landed == []
    assert_bit_identical(w, original)
    with pytest.raises(ValueError, match="'broken'"):
        landed.extend(merge_adapters(w, adapters, safe_merge=False))
    assert [name for name, _ in landed] == ["good"]


def test_unmergeable_weights_are_rejected():
    w = quantized_weight("int8", 65, 64)
    a, b = adapter(65, 64, 2, 0.05, w)
    with pytest.raises(ValueError, match=r"delta of shape \(65, 32\) does not match the weight's \(65, 64\)"):
        merge_lora_delta(w, a[:, :32], b, 1.0, "a")
    with pytest.raises(ValueError, match="transposed view"):
        merge_lora_delta(w.t(), a, b, 1.0, "a")
    with pytest.raises(ValueError, match="got Tensor"):
        merge_lora_delta(torch.randn(65, 64), a, b, 1.0, "a")
