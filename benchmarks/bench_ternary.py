"""Ternary (BitLinear) decode vs our int8 decode vs dense bf16, side by side in one run.

A stack of distinct deployed ``BitLinear`` layers (2-bit packed weights, int8 activations) and a stack of int8
weight-only linears (``quantize_`` + ``Int8WeightOnlyConfig``), both compiled with ``backend="quant_inductor"``,
and the dense bf16 layers in eager (oneDNN), each applied to the same bf16 [1, M, K] activations. The stacks hold
the same layer count (int8 weights of ``--working-set-mb``), so every step streams the weights from memory.
Reported: time per layer, weight GB/s and its ratio to the read bandwidth measured in the same rounds
(``read_bw.c``), and the ratios ternary / int8 and ternary / dense (times, higher is faster).

    python benchmarks/bench_ternary.py [--shapes 4096x4096,4096x11008,11008x4096] [--decode-m 1,4,16]
"""

from __future__ import annotations

import argparse
import gc
import json
import math

import torch
from bench_int8 import Stack, _compile
from read_bw import ReadProbe
from torch import nn
from torch._dynamo.utils import counters

import inductor_quant as iq
from inductor_quant.demo.timing import interleaved_medians
from inductor_quant.nn import BitLinear


def _stacks(k, n, count, dtype):
    ternary = [BitLinear(k, n, bias=False, dtype=dtype).deploy() for _ in range(count)]
    int8 = [
        iq.quantize_(nn.Linear(k, n, bias=False).to(dtype), iq.Int8WeightOnlyConfig()) for _ in range(count)
    ]
    dense = [nn.Linear(k, n, bias=False).to(dtype) for _ in range(count)]
    return Stack(ternary), Stack(int8), Stack(dense)


def _kernel(scheme):
    prefix = f"{scheme}_kernel_"
    return next(
        (key.removeprefix(prefix) for key in counters["inductor_quant"] if key.startswith(prefix)), "?"
    )


def bench_shape(k, n, ms, count, probe, rounds):
    ternary_model, int8_model, dense = _stacks(k, n, count, torch.bfloat16)
    ternary_bytes = sum(layer.qweight.nbytes + layer.qweight_scale.nbytes for layer in ternary_model.layers)
    rows = []
    for m in ms:
        x = torch.randn(1, m, k, dtype=torch.bfloat16)
        with torch.no_grad():
            counters["inductor_quant"].clear()
            ternary, t_ternary = _compile(ternary_model, x, "quant_inductor")
            int8, _ = _compile(int8_model, x, "quant_inductor")
            kernels = f"{_kernel('ternary')} / {_kernel('int8')}"
            fns = {
                "read": probe,
                "ternary": lambda x=x, c=ternary: c(x),
                "int8": lambda x=x, c=int8: c(x),
                "dense": lambda x=x: dense(x),
            }
            t = interleaved_medians(fns, rounds=rounds)
        bandwidth = probe.nbytes / t["read"] / 1e9
        rows.append(
            dict(
                K=k,
                N=n,
                M=m,
                layers=count,
                kernels=kernels,
                read_gbs=bandwidth,
                ternary_us=t["ternary"] / count * 1e6,
                int8_us=t["int8"] / count * 1e6,
                dense_us=t["dense"] / count * 1e6,
                ternary_bw_ratio=ternary_bytes / t["ternary"] / 1e9 / bandwidth,
                int8_bw_ratio=count * k * n / t["int8"] / 1e9 / bandwidth,
                vs_int8=t["int8"] / t["ternary"],
                vs_dense=t["dense"] / t["ternary"],
                compile_s=round(t_ternary, 1),
            )
        )
        print(_row(rows[-1]), flush=True)
        del ternary, int8, fns
        torch._dynamo.reset()
        gc.collect()
    return rows


HEADER = (
    "| K x N | M | layers | kernels (ternary / int8) | read BW GB/s | ternary us | int8 us | dense bf16 us "
    "| ternary / read BW | int8 / read BW | ternary vs int8 | ternary vs dense | compile s |"
)


def _row(r):
    return (
        f"| {r['K']}x{r['N']} | {r['M']} | {r['layers']} | {r['kernels']} | {r['read_gbs']:.1f} "
        f"| {r['ternary_us']:.0f} | {r['int8_us']:.0f} | {r['dense_us']:.0f} | {r['ternary_bw_ratio']:.2f} "
        f"| {r['int8_bw_ratio']:.2f} | {r['vs_int8']:.2f}x | {r['vs_dense']:.2f}x | {r['compile_s']} |"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="4096x4096,4096x11008,11008x4096", help="K x N, comma separated")
    parser.add_argument("--decode-m", default="1,4,16")
    parser.add_argument("--working-set-mb", type=int, default=1024, help="int8 weight bytes of each stack")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    probe = ReadProbe()
    torch.compile(lambda t: t.sin() + 1)(torch.randn(4))  # one-time process costs (ISA probe, compiler start)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()}; "
        f"read bandwidth probe: 1 GiB, timed in every row\n"
    )
    print(HEADER)
    print("|" + "---|" * (HEADER.count("|") - 1))
    rows = []
    for shape in args.shapes.split(","):
        k, n = (int(v) for v in shape.split("x"))
        layers = math.ceil(args.working_set_mb * 2**20 / (k * n))
        rows += bench_shape(k, n, [int(m) for m in args.decode_m.split(",")], layers, probe, args.rounds)
        gc.collect()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
