"""int8 weight-only linears: quant_inductor vs stock Inductor vs dense F.linear, side by side in one run.

Decode (M = 1, 4, 16): a stack of distinct layers whose int8 weights exceed the last-level cache, each applied to
the same [1, M, K] activations; reported as weight GB/s, its ratio to the memory read bandwidth measured in the
same rounds (benchmarks/read_bw.c: a prefetching AVX-512 read of 1 GiB, timed interleaved with the kernels,
because this machine's bandwidth drifts by tens of percent over minutes), and the ratio of our time to stock
Inductor's best configuration. Compile times are cold (a fresh Inductor cache per compile, after one warm-up
compile of a trivial function pays the process's one-time costs).
Prefill (M = 256, 512): a few layers; TFLOP/s and the ratio to dense F.linear (eager, oneDNN). Activations and
the dense layers are bf16 unless --dtype says otherwise.
Stock Inductor runs the gpt-fast form `F.linear(x, w.to(x.dtype)) * s` on the same int8 data, under each
configuration in --stock (default, freezing, max-autotune: the last costs minutes of compile per shape).

    python benchmarks/bench_int8.py [--shapes 4096x4096,4096x11008,11008x4096] [--stock default,freezing]
        [--dtype bf16|fp16|fp32]
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import time

import torch
import torch.nn.functional as F
from read_bw import ReadProbe
from torch import nn
from torch._dynamo.utils import counters
from torch._inductor.utils import fresh_cache

import inductor_quant as iq
from inductor_quant.demo.timing import interleaved_medians


class HandWrittenInt8Linear(nn.Module):
    """What a stock-Inductor user writes for int8 weights (gpt-fast): ``F.linear(x, w.to(x.dtype)) * scale``."""

    def __init__(self, qweight: iq.Int8WeightTensor):
        super().__init__()
        self.register_buffer("w", qweight.plain_qdata())  # [N, K] (quantize_ holds a CPU weight blocked)
        self.register_buffer("s", qweight.scale.to(qweight.dtype))

    def forward(self, x):
        return F.linear(x, self.w.to(x.dtype)) * self.s


DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
STOCK_CONFIGS = {
    "default": {},
    "freezing": {"freezing": True},
    "max-autotune": {"freezing": True, "max_autotune": True},
}


class Stack(nn.Module):
    """Distinct layers applied to the same input: the weights stream from memory once per step."""

    def __init__(self, layers):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x):
        return [layer(x) for layer in self.layers]


def _layers(k, n, count, dtype):
    dense = [nn.Linear(k, n, bias=False).to(dtype) for _ in range(count)]
    quantized = [
        iq.quantize_(nn.Linear(k, n, bias=False).to(dtype), iq.Int8WeightOnlyConfig()) for _ in range(count)
    ]
    return Stack(dense), Stack(quantized), Stack([HandWrittenInt8Linear(q.weight) for q in quantized])


def _compile(model, x, backend, options=None):
    torch._dynamo.reset()
    freezing = bool(options and options.get("freezing"))
    compiled = torch.compile(
        model, backend=backend, options={k: v for k, v in (options or {}).items() if k != "freezing"}
    )
    start = time.perf_counter()
    # stock Inductor reads freezing globally at trace time; a fresh cache makes the compile cold
    with torch._inductor.config.patch(freezing=freezing), fresh_cache():
        compiled(x)
    return compiled, time.perf_counter() - start


def bench_shape(k, n, ms, count, dtype, stock_configs, probe, rounds):
    dense, ours_model, stock_model = _layers(k, n, count, dtype)
    weight_bytes = count * k * n
    rows = []
    for m in ms:
        x = torch.randn(1, m, k, dtype=dtype)
        with torch.no_grad():
            counters["inductor_quant"].clear()
            ours, t_compile = _compile(ours_model, x, "quant_inductor")
            kernel = next(
                (
                    key.removeprefix("int8_kernel_")
                    for key in counters["inductor_quant"]
                    if key.startswith("int8_kernel_")
                ),
                "?",
            )
            stock, failed = {}, []
            for name in stock_configs:
                try:
                    stock[name] = _compile(stock_model, x, "inductor", STOCK_CONFIGS[name])
                except Exception as e:  # noqa: BLE001 - a stock failure is a result, reported in the table
                    failed.append(name)
                    print(
                        f"  stock Inductor ({name}) failed on K={k} N={n} M={m}: {type(e).__name__}: "
                        f"{str(e).splitlines()[0][:160]}",
                        flush=True,
                    )
            fns = {"read": probe, "dense": lambda x=x: dense(x), "ours": lambda x=x, c=ours: c(x)}
            fns.update({f"stock:{name}": (lambda x=x, c=c: c(x)) for name, (c, _) in stock.items()})
            t = interleaved_medians(fns, rounds=rounds)
        bandwidth = probe.nbytes / t["read"] / 1e9
        best_stock = min((name for name in t if name.startswith("stock:")), key=t.get)
        flops = 2 * m * k * n * count
        rows.append(
            dict(
                K=k,
                N=n,
                read_gbs=bandwidth,
                M=m,
                layers=count,
                kernel=kernel,
                compile_s=round(t_compile, 1),
                ours_ms=t["ours"] * 1e3,
                dense_ms=t["dense"] * 1e3,
                stock_ms=t[best_stock] * 1e3,
                stock_best=best_stock.removeprefix("stock:")
                + (f"; {', '.join(failed)} failed" if failed else ""),
                stock_compile_s=round(stock[best_stock.removeprefix("stock:")][1], 1),
                ours_gbs=weight_bytes / t["ours"] / 1e9,
                ours_bw_ratio=weight_bytes / t["ours"] / 1e9 / bandwidth,
                stock_bw_ratio=weight_bytes / t[best_stock] / 1e9 / bandwidth,
                dense_bw_ratio=2 * weight_bytes / t["dense"] / 1e9 / bandwidth,
                ours_tflops=flops / t["ours"] / 1e12,
                dense_tflops=flops / t["dense"] / 1e12,
                vs_stock=t[best_stock] / t["ours"],
                vs_dense=t["dense"] / t["ours"],
            )
        )
        print(_row(rows[-1]), flush=True)
        # free this M's compiled graphs (frozen constants, packed copies) before compiling the next one
        del ours, stock, fns
        torch._dynamo.reset()
        gc.collect()
    return rows


HEADER = (
    "| K x N | M | layers | kernel | read BW GB/s | ours GB/s | ours / read BW | stock best (config) / read BW | dense / read BW "
    "| ours vs stock | ours TFLOP/s | ours vs dense | compile s (ours / stock) |"
)


def _row(r):
    return (
        f"| {r['K']}x{r['N']} | {r['M']} | {r['layers']} | {r['kernel']} | {r['read_gbs']:.1f} | {r['ours_gbs']:.1f} "
        f"| {r['ours_bw_ratio']:.2f} "
        f"| {r['stock_bw_ratio']:.2f} ({r['stock_best']}) | {r['dense_bw_ratio']:.2f} | {r['vs_stock']:.2f}x "
        f"| {r['ours_tflops']:.2f} | {r['vs_dense']:.2f}x | {r['compile_s']} / {r['stock_compile_s']} |"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="4096x4096,4096x11008,11008x4096", help="K x N, comma separated")
    parser.add_argument("--decode-m", default="1,4,16")
    parser.add_argument("--prefill-m", default="256,512")
    parser.add_argument(
        "--working-set-mb", type=int, default=1024, help="int8 weight bytes of the decode stack"
    )
    parser.add_argument("--prefill-layers", type=int, default=4)
    parser.add_argument(
        "--stock", default="default,freezing", help=f"stock configs among {list(STOCK_CONFIGS)}"
    )
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--dtype", default="bf16", choices=sorted(DTYPES), help="activation dtype")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    stock_configs = args.stock.split(",")
    probe = ReadProbe()
    torch.compile(lambda t: t.sin() + 1)(torch.randn(4))  # one-time process costs (ISA probe, compiler start)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()}; "
        f"read bandwidth probe: 1 GiB, prefetch {probe.prefetch} B, timed in every row; stock configs {stock_configs}\n"
    )
    print(HEADER)
    print("|" + "---|" * (HEADER.count("|") - 1))
    rows = []
    for shape in args.shapes.split(","):
        k, n = (int(v) for v in shape.split("x"))
        decode_layers = math.ceil(args.working_set_mb * 2**20 / (k * n))
        if args.decode_m:
            rows += bench_shape(
                k,
                n,
                [int(m) for m in args.decode_m.split(",")],
                decode_layers,
                DTYPES[args.dtype],
                stock_configs,
                probe,
                args.rounds,
            )
        if args.prefill_m:
            rows += bench_shape(
                k,
                n,
                [int(m) for m in args.prefill_m.split(",")],
                args.prefill_layers,
                DTYPES[args.dtype],
                stock_configs,
                probe,
                max(3, args.rounds // 2),
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
