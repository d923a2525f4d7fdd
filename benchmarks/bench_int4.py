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

    python benchmarks/bench_int4.py [--groups 32,128] [--decode-m 1,4,16] [--prefill-m 512] [--stock default] [--a8]

--a8 adds the W4A8 option (Int8DynamicActivationInt4WeightConfig: the same int4 weights, activations quantized to
int8 per token) as a column next to the default, and a table of the accuracy each costs: SQNR of one layer's output
against the float layer, for normal activations and for activations with outlier channels.

Memory: each row's compiled graphs are dropped (Dynamo reset), and with them their frozen and packed weights; a run
of 12 decode rows (four groups, --a8) peaked at 17 GiB. (Before the backend freed a dropped graph's constants,
which Inductor's generated modules otherwise keep for the life of the process, a run outgrew 24 GiB by its
seventh row.)
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
from inductor_quant.primitives import sqnr, unpack_int4


class StockInt4Linear(nn.Module):
    """The same int4 values in aten's CPU layout, through aten's int4 matmul (what gpt-fast and torchao emit)."""

    def __init__(self, weight: iq.Int4WeightTensor):
        super().__init__()
        k, g = weight.shape[1], weight.group_size
        q = unpack_int4(weight.plain_qdata()).to(torch.int32)  # (quantize_ holds a CPU weight blocked)
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


def _as_a8(layer: nn.Linear) -> nn.Linear:
    """The same int4 weight (shared storage) behind the W4A8 linear."""
    w = layer.weight
    out = nn.Linear(w.shape[1], w.shape[0], bias=False, device="meta")
    a8 = iq.Int4WeightA8Tensor(w.plain_qdata(), w.scale, w.zero_point, dtype=w.dtype, group_size=w.group_size)
    out.weight = nn.Parameter(a8, requires_grad=False)
    return out


def accuracy(k, n, groups, dtype=torch.bfloat16, m=64, outlier_channels=0.01, outlier_scale=20.0):
    """SQNR (dB) of one layer's output vs the float layer (fp32 math on the float weight), W4A16 and W4A8, for
    N(0, 1) activations and for the same with ``outlier_channels`` of the K channels scaled by ``outlier_scale``
    (LLM activations carry such channels, and per-token int8 quantization is what they hurt)."""
    torch.manual_seed(0)
    float_layer = nn.Linear(k, n, bias=False).to(dtype)
    x = torch.randn(m, k, dtype=dtype)
    x_out = x.clone()
    x_out[:, torch.randperm(k)[: max(1, int(k * outlier_channels))]] *= outlier_scale
    rows = []
    for g in groups:
        a16 = iq.quantize_(_copy(float_layer), iq.Int4WeightOnlyConfig(group_size=g))
        a8 = iq.quantize_(_copy(float_layer), iq.Int8DynamicActivationInt4WeightConfig(group_size=g))
        for name, inp in (("normal", x), (f"{outlier_channels:.0%} channels x{outlier_scale:g}", x_out)):
            with torch.no_grad():
                ref = inp.float() @ float_layer.weight.float().t()
                rows.append(
                    dict(
                        group=g,
                        activations=name,
                        a16=sqnr(ref, a16(inp).float()),
                        a8=sqnr(ref, a8(inp).float()),
                    )
                )
    return rows


def _copy(layer: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(layer)


def bench(k, n, g, ms, count, stock_configs, probe, rounds, dtype=torch.bfloat16, a8=False):
    torch.manual_seed(0)
    dense_layer = nn.Linear(k, n, bias=False).to(dtype)
    int4_layer = iq.quantize_(nn.Linear(k, n, bias=False).to(dtype), iq.Int4WeightOnlyConfig(group_size=g))
    int8_layer = iq.quantize_(nn.Linear(k, n, bias=False).to(dtype), iq.Int8WeightOnlyConfig())
    dense = Stack(_clones(dense_layer, count))
    ours4 = Stack(_clones(int4_layer, count))
    ours8 = Stack(_clones(int8_layer, count))
    stock4 = Stack([StockInt4Linear(lin.weight) for lin in ours4.layers])
    ours4a8 = Stack([_as_a8(lin) for lin in ours4.layers]) if a8 else None
    int4_bytes = count * n * k // 2
    rows = []
    for m in ms:
        x = torch.randn(1, m, k, dtype=dtype)
        with torch.no_grad():
            counters["inductor_quant"].clear()
            c4, t_compile = _compile(ours4, x, "quant_inductor")
            kernel = _kernel("int4_kernel_")
            c8, _ = _compile(ours8, x, "quant_inductor")
            if a8:
                ca8, t_compile_a8 = _compile(ours4a8, x, "quant_inductor")
                kernel_a8 = _kernel("int4_a8_kernel_")
            stock = {name: _compile(stock4, x, "inductor", STOCK_CONFIGS[name])[0] for name in stock_configs}
            fns = {"read": probe, "dense": lambda x=x: dense(x)}
            fns.update({"int4": lambda x=x, c=c4: c(x), "int8": lambda x=x, c=c8: c(x)})
            fns.update({f"stock:{name}": (lambda x=x, c=c: c(x)) for name, c in stock.items()})
            if a8:
                fns["a8"] = lambda x=x, c=ca8: c(x)
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
        if a8:
            rows[-1].update(
                a8_kernel=kernel_a8, a8_compile_s=round(t_compile_a8, 1), a8_ms=t["a8"] * 1e3,
                a8_bw_ratio=int4_bytes / t["a8"] / 1e9 / bw, a8_vs_a16=t["int4"] / t["a8"],
                a8_vs_int8=t["int8"] / t["a8"], a8_vs_dense=t["dense"] / t["a8"], a8_vs_stock=t[best] / t["a8"],
            )  # fmt: skip
            del ca8
        print(_row(rows[-1]), flush=True)
        del c4, c8, stock, fns
        _free_compiled()
    return rows


def _free_compiled() -> None:
    """Drop this row's compiled graphs (the backend then frees their frozen constants and packed weights) and
    Inductor's in-memory module cache."""
    from torch._inductor.codecache import PyCodeCache

    torch._dynamo.reset()
    PyCodeCache.cache_clear()
    gc.collect()


HEADER = (
    "| K x N | group | M | layers | kernel | read BW GB/s | int4 / read BW | stock int4 / read BW (config) "
    "| vs stock int4 | vs our int8 | vs dense bf16 | TFLOP/s (int4 / dense) | compile s |"
)


A8_HEADER = (
    "| K x N | group | M | W4A8 kernel | read BW GB/s | W4A8 / read BW | W4A16 / read BW | W4A8 vs W4A16 "
    "| vs stock int4 | vs our int8 | vs dense bf16 | compile s |"
)


def _row(r):
    row = (
        f"| {r['K']}x{r['N']} | {r['group']} | {r['M']} | {r['layers']} | {r['kernel']} | {r['read_gbs']:.1f} "
        f"| {r['int4_bw_ratio']:.2f} | {r['stock_bw_ratio']:.2f} ({r['stock_best']}) | {r['vs_stock']:.2f}x "
        f"| {r['vs_int8']:.2f}x | {r['vs_dense']:.2f}x | {r['int4_tflops']:.2f} / {r['dense_tflops']:.2f} "
        f"| {r['compile_s']} |"
    )
    return row + (f"\n{_a8_row(r)}" if "a8_ms" in r else "")


def _a8_row(r):
    return (
        f"| {r['K']}x{r['N']} | {r['group']} | {r['M']} | {r['a8_kernel']} | {r['read_gbs']:.1f} "
        f"| {r['a8_bw_ratio']:.2f} | {r['int4_bw_ratio']:.2f} | {r['a8_vs_a16']:.2f}x | {r['a8_vs_stock']:.2f}x "
        f"| {r['a8_vs_int8']:.2f}x | {r['a8_vs_dense']:.2f}x | {r['a8_compile_s']} |"
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
    parser.add_argument("--a8", action="store_true", help="add the W4A8 option's speed and accuracy")
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
            rows += bench(k, n, g, ms, count, args.stock.split(","), probe, args.rounds, a8=args.a8)
        if args.prefill_m:
            ms = [int(m) for m in args.prefill_m.split(",")]
            rows += bench(
                k,
                n,
                g,
                ms,
                args.prefill_layers,
                args.stock.split(","),
                probe,
                max(3, args.rounds // 2),
                a8=args.a8,
            )
    if args.a8:
        print("\nW4A8 rows (the same runs):\n")
        print(A8_HEADER)
        print("|" + "---|" * (A8_HEADER.count("|") - 1))
        for r in rows:
            if "a8_ms" in r:
                print(_a8_row(r))
        groups = sorted({r["group"] for r in rows})
        acc = accuracy(k, n, groups)
        print("\nAccuracy: SQNR (dB) of one layer's output vs the float layer, M = 64\n")
        print("| group | activations | W4A16 (default) | W4A8 |\n|---|---|---|---|")
        for r in acc:
            print(f"| {r['group']} | {r['activations']} | {r['a16']:.1f} | {r['a8']:.1f} |")
        rows += [dict(accuracy=r) for r in acc]
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
