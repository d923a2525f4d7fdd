"""int4 groupwise weight-only linears: quant_inductor vs stock Inductor's int4 path vs our int8 vs dense bf16,
side by side in one run.

Decode (M = 1, 4, 16): a stack of distinct K x N layers whose int4 weights exceed the last-level cache (512 MiB by
default), applied to the same [1, M, K] activations; reported as weight GB/s, its ratio to the memory read bandwidth
measured in the same rounds (benchmarks/read_bw.c, timed interleaved with the kernels: this machine's bandwidth
drifts by tens of percent over minutes), and per-token speed-ups over our int8 path and over dense bf16 (eager
F.linear, oneDNN) on the same layer count. Stock Inductor runs the gpt-fast / torchao CPU form,
`torch.ops.aten._weight_int4pack_mm_for_cpu` on aten-packed weights, compiled with backend="inductor" (default
config, and with --stock freezing / max-autotune).
Prefill (M = 512): a few layers; TFLOP/s and the ratio to dense bf16.

    python benchmarks/bench_int4.py [--groups 32,128] [--decode-m 1,4,16] [--prefill-m 512] [--stock default]

Memory: each row's compiled graphs are dropped (Dynamo reset, Inductor's module cache cleared), yet a run of both
default groups still grew past 24 GiB by its seventh row; run one --groups value per process on such a machine.
"""

from __future__ import annotations

import argparse
import gc
import json
import math

import torch
from bench_int8 import STOCK_CONFIGS, Stack, _compile
from read_bw import ReadProbe
from torch import nn
from torch._dynamo.utils import counters

import inductor_quant as iq
from inductor_quant.demo.timing import interleaved_medians
from inductor_quant.primitives import unpack_int4


class StockInt4Linear(nn.Module):
    """The same int4 values in aten's CPU layout, through aten's int4 matmul (what gpt-fast and torchao emit)."""

    def __init__(self, weight: iq.Int4WeightTensor):
        super().__init__()
        k, g = weight.shape[1], weight.group_size
        q = unpack_int4(weight.qdata).to(torch.int32)
        self.register_buffer("w", torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1))
        s, z = weight.scale.float(), weight.zero_point.float()
        # aten computes (q - 8) * s + zero: our (q - zp) * s is zero = (8 - zp) * s
        sz = torch.stack([s.t(), ((8 - z) * s).t()], dim=-1).to(weight.dtype)
        self.register_buffer("sz", sz.contiguous())
        self.group_size, self.k = g, k

    def forward(self, x):
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(
            x.reshape(-1, self.k), self.w, self.group_size, self.sz
        )
        return y.reshape(*x.shape[:-1], -1)


def _clones(module: nn.Module, count: int) -> list[nn.Module]:
    """Distinct copies (own memory) of one layer: the weights' values do not change the speed."""
    import copy

    return [copy.deepcopy(module) for _ in range(count)]


def _kernel(prefix: str) -> str:
    return next((k.removeprefix(prefix) for k in counters["inductor_quant"] if k.startswith(prefix)), "?")


def bench(k, n, g, ms, count, stock_configs, probe, rounds, dtype=torch.bfloat16):
    torch.manual_seed(0)
    dense_layer = nn.Linear(k, n, bias=False).to(dtype)
    int4_layer = iq.quantize_(nn.Linear(k, n, bias=False).to(dtype), iq.Int4WeightOnlyConfig(group_size=g))
    int8_layer = iq.quantize_(nn.Linear(k, n, bias=False).to(dtype), iq.Int8WeightOnlyConfig())
    dense = Stack(_clones(dense_layer, count))
    ours4 = Stack(_clones(int4_layer, count))
    ours8 = Stack(_clones(int8_layer, count))
    stock4 = Stack([StockInt4Linear(lin.weight) for lin in ours4.layers])
    int4_bytes = count * n * k // 2
    rows = []
    for m in ms:
        x = torch.randn(1, m, k, dtype=dtype)
        with torch.no_grad():
            counters["inductor_quant"].clear()
            c4, t_compile = _compile(ours4, x, "quant_inductor")
            kernel = _kernel("int4_kernel_")
            c8, _ = _compile(ours8, x, "quant_inductor")
            stock = {name: _compile(stock4, x, "inductor", STOCK_CONFIGS[name])[0] for name in stock_configs}
            fns = {"read": probe, "dense": lambda x=x: dense(x)}
            fns.update({"int4": lambda x=x, c=c4: c(x), "int8": lambda x=x, c=c8: c(x)})
            fns.update({f"stock:{name}": (lambda x=x, c=c: c(x)) for name, c in stock.items()})
            t = interleaved_medians(fns, rounds=rounds)
        bw = probe.nbytes / t["read"] / 1e9
        best = min((name for name in t if name.startswith("stock:")), key=t.get)
        flops = 2 * m * k * n * count
        rows.append(
            dict(
                K=k, N=n, group=g, M=m, layers=count, kernel=kernel, compile_s=round(t_compile, 1), read_gbs=bw,
                int4_ms=t["int4"] * 1e3, int4_bw_ratio=int4_bytes / t["int4"] / 1e9 / bw,
                stock_bw_ratio=int4_bytes / t[best] / 1e9 / bw, stock_best=best.removeprefix("stock:"),
                vs_stock=t[best] / t["int4"], vs_int8=t["int8"] / t["int4"], vs_dense=t["dense"] / t["int4"],
                int4_tflops=flops / t["int4"] / 1e12, dense_tflops=flops / t["dense"] / 1e12,
            )
        )  # fmt: skip
        print(_row(rows[-1]), flush=True)
        del c4, c8, stock, fns
        _free_compiled()
    return rows


def _free_compiled() -> None:
    """Drop this row's compiled graphs. Inductor's module cache keeps every generated module, and with it the
    frozen constants and packed weights attached to it: without this a full run exceeds 24 GiB."""
    from torch._inductor.codecache import PyCodeCache

    torch._dynamo.reset()
    PyCodeCache.cache_clear()
    gc.collect()


HEADER = (
    "| K x N | group | M | layers | kernel | read BW GB/s | int4 / read BW | stock int4 / read BW (config) "
    "| vs stock int4 | vs our int8 | vs dense bf16 | TFLOP/s (int4 / dense) | compile s |"
)


def _row(r):
    return (
        f"| {r['K']}x{r['N']} | {r['group']} | {r['M']} | {r['layers']} | {r['kernel']} | {r['read_gbs']:.1f} "
        f"| {r['int4_bw_ratio']:.2f} | {r['stock_bw_ratio']:.2f} ({r['stock_best']}) | {r['vs_stock']:.2f}x "
        f"| {r['vs_int8']:.2f}x | {r['vs_dense']:.2f}x | {r['int4_tflops']:.2f} / {r['dense_tflops']:.2f} "
        f"| {r['compile_s']} |"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="4096x4096", help="K x N")
    parser.add_argument("--groups", default="32,128")
    parser.add_argument("--decode-m", default="1,4,16")
    parser.add_argument("--prefill-m", default="512")
    parser.add_argument(
        "--working-set-mb", type=int, default=512, help="int4 weight bytes of the decode stack"
    )
    parser.add_argument("--prefill-layers", type=int, default=4)
    parser.add_argument("--stock", default="default", help=f"stock configs among {list(STOCK_CONFIGS)}")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    probe = ReadProbe()
    torch.compile(lambda t: t.sin() + 1)(torch.randn(4))  # one-time process costs
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()}; "
        f"read bandwidth probe: 1 GiB, timed in every row; stock configs {args.stock}\n"
    )
    print(HEADER)
    print("|" + "---|" * (HEADER.count("|") - 1))
    k, n = (int(v) for v in args.shape.split("x"))
    rows = []
    for g in (int(v) for v in args.groups.split(",")):
        if args.decode_m:
            count = math.ceil(args.working_set_mb * 2**20 / (k * n // 2))
            ms = [int(m) for m in args.decode_m.split(",")]
            rows += bench(k, n, g, ms, count, args.stock.split(","), probe, args.rounds)
        if args.prefill_m:
            ms = [int(m) for m in args.prefill_m.split(",")]
            rows += bench(
                k, n, g, ms, args.prefill_layers, args.stock.split(","), probe, max(3, args.rounds // 2)
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
