"""LoRA merge / unmerge on quantized weights: ours vs the design document's dequantize -> add -> requantize.

One ``[N, K]`` layer quantized per scheme (int8 per channel, int4 g128), a rank-``r`` adapter whose delta has a
given norm relative to the weight (1% and 5%: the range of trained adapters; 20%: a large one), bf16 weights as in
a real model. For each method, side by side on the same weight and adapter:

* merged-output error: ``||y_merged - y_unmerged|| / ||y_unmerged||`` on random activations, where ``y_unmerged``
  is the quantized base plus the adapter in float (what the model computes before merging);
* weight drift after 1, 5 and 10 merge / unmerge cycles: ``||W_n - W_0|| / ||W_0||`` (dequantized);
* median merge and unmerge time over the 10 cycles, and the memory a merged layer holds beyond its weight (ours: the record).

    python benchmarks/bench_lora_merge.py [--shape 4096x4096] [--rank 16]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from inductor_quant.nn.lora_merge import lora_delta, merge_lora_delta, unmerge_lora_delta
from inductor_quant.primitives import quantize_int4_groupwise, quantize_int8_per_channel
from inductor_quant.tensor import Int4WeightTensor, Int8WeightTensor

SCHEMES = ("int8", "int4-g128")
RELATIVE_DELTAS = (0.01, 0.05, 0.2)
CYCLES = (1, 5, 10)


def quantize(scheme: str, w: torch.Tensor):
    if scheme == "int8":
        q, s = quantize_int8_per_channel(w)
        return Int8WeightTensor(q, s, dtype=torch.bfloat16)
    q, s, z = quantize_int4_groupwise(w, 128)
    return Int4WeightTensor(q, s, z, dtype=torch.bfloat16, group_size=128)


class Ours:
    name = "ours (grid-preserving)"

    def merge(self, w, a, b):
        return merge_lora_delta(w, a, b, 1.0, "bench")

    def unmerge(self, w, record):
        unmerge_lora_delta(w, record)

    def extra_bytes(self, record) -> int:
        return record.nbytes()


class Requantize:
    """The design document's merge: dequantize, add the delta, quantize from scratch (and the reverse)."""

    name = "dequantize-add-requantize"

    def _apply(self, w, sign, a, b):
        fresh = quantize(
            "int8" if isinstance(w, Int8WeightTensor) else "int4",
            w.dequantize(torch.float32) + sign * (b.float() @ a.float()),
        )
        for dst, src in zip(w._tensors(), fresh._tensors(), strict=True):
            dst.copy_(src)

    def merge(self, w, a, b):
        self._apply(w, 1.0, a, b)

    def unmerge(self, w, record):
        self._apply(w, -1.0, *self._adapter)

    def extra_bytes(self, record) -> int:
        return 0


def _timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def run(k: int, n: int, rank: int):
    g = torch.Generator().manual_seed(0)
    w_float = (torch.randn(n, k, generator=g) / k**0.5).to(torch.bfloat16).float()
    x = torch.randn(64, k, generator=g)
    rows = []
    for scheme in SCHEMES:
        for relative in RELATIVE_DELTAS:
            a = (torch.randn(rank, k, generator=g) / k**0.5).to(torch.bfloat16)
            b = torch.randn(n, rank, generator=g)
            b = (b * relative * w_float.norm() / (b @ a.float()).norm()).to(torch.bfloat16)
            for method in (Ours(), Requantize()):
                method._adapter = (a, b)
                w = quantize("int8" if scheme == "int8" else "int4", w_float)
                w0 = w.dequantize(torch.float32)
                unmerged = x @ w0.T + x @ (lora_delta(a, b, 1.0, slice(0, n)).float()).T
                merge_s, unmerge_s, drift = [], [], {}
                for cycle in range(1, max(CYCLES) + 1):
                    record, t = _timed(method.merge, w, a, b)
                    merge_s.append(t)
                    if cycle == 1:
                        merged = x @ w.dequantize(torch.float32).T
                        error = ((merged - unmerged).norm() / unmerged.norm()).item()
                        extra = method.extra_bytes(record)
                    _, t = _timed(method.unmerge, w, record)
                    unmerge_s.append(t)
                    if cycle in CYCLES:
                        drift[cycle] = ((w.dequantize(torch.float32) - w0).norm() / w0.norm()).item()
                rows.append(
                    dict(
                        scheme=scheme,
                        relative=relative,
                        method=method.name,
                        error=error,
                        drift=drift,
                        merge_ms=statistics.median(merge_s) * 1e3,
                        unmerge_ms=statistics.median(unmerge_s) * 1e3,
                        extra_mib=extra / 2**20,
                        weight_mib=w.nbytes_quantized() / 2**20,
                    )
                )
    return rows


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shape", default="4096x4096", help="KxN of the layer")
    parser.add_argument("--rank", type=int, default=16)
    args = parser.parse_args()
    k, n = map(int, args.shape.split("x"))
    rows = run(k, n, args.rank)
    print(
        f"\nK x N = {k} x {n}, rank {args.rank}, bf16 weights; drift after 1 / 5 / 10 merge-unmerge cycles\n"
    )
    print(
        "| scheme | delta / W | method | merged-output error | drift 1 / 5 / 10 | merge ms | unmerge ms "
        "| extra MiB while merged (weight MiB) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        drift = " / ".join(f"{r['drift'][c]:.1e}" if r["drift"][c] else "0" for c in CYCLES)
        print(
            f"| {r['scheme']} | {r['relative']:.0%} | {r['method']} | {r['error']:.2e} | {drift} "
            f"| {r['merge_ms']:.0f} | {r['unmerge_ms']:.0f} | {r['extra_mib']:.2f} ({r['weight_mib']:.1f}) |"
        )


if __name__ == "__main__":
    main()
