"""quantized_matmul, every cell of the table, side by side in one run: the W8A8 prefill row.

For each K x N and M: one ``QuantizedLinear`` per cell (W8A16 / W4A16 / W8A8 / W4A8, per-channel and blockwise),
each compiled alone with ``backend="quant_inductor"``, and the dense bf16 layer in eager (oneDNN), all on the same
bf16 ``[M, K]`` activations, timed round-robin (medians). Reported: time per cell, and each cell's speed relative
to dense bf16 and to W8A16 per-channel (higher is faster). Prefill (M = 512) is compute-bound: one layer is enough.

    python benchmarks/bench_quantized_matmul.py [--shapes 4096x4096,4096x11008,11008x4096] [--m 512]
"""

from __future__ import annotations

import argparse
import gc
import json

import torch
from bench_int8 import _compile
from torch import nn

from inductor_quant.demo.timing import interleaved_medians
from inductor_quant.nn import QuantizedLinear

BLOCK = 128
CELLS = {
    "W8A16": dict(weight_bits=8),
    "W8A16 b128": dict(weight_bits=8, block_size=BLOCK),
    "W4A16": dict(weight_bits=4),
    "W4A16 b128": dict(weight_bits=4, block_size=BLOCK),
    "W8A8": dict(weight_bits=8, quantize_activation=True),
    "W8A8 b128": dict(weight_bits=8, block_size=BLOCK, quantize_activation=True),
    "W4A8": dict(weight_bits=4, quantize_activation=True),
    "W4A8 b128": dict(weight_bits=4, block_size=BLOCK, quantize_activation=True),
}


def bench_shape(k, n, m, rounds):
    torch.manual_seed(0)
    dense = nn.Linear(k, n, bias=False).to(torch.bfloat16)
    x = torch.randn(m, k, dtype=torch.bfloat16)
    fns = {"dense": lambda: dense(x)}
    with torch.no_grad():
        for name, settings in CELLS.items():
            layer = QuantizedLinear.from_linear(dense.float(), **settings)
            dense.to(torch.bfloat16)
            compiled, _ = _compile(layer, x, "quant_inductor")
            fns[name] = lambda c=compiled: c(x)
        t = interleaved_medians(fns, rounds=rounds)
    row = dict(K=k, N=n, M=m, dense_ms=t["dense"] * 1e3)
    for name in CELLS:
        row[f"{name} ms"] = t[name] * 1e3
        row[f"{name} vs dense"] = t["dense"] / t[name]
        row[f"{name} vs W8A16"] = t["W8A16"] / t[name]
    return row


def _print_tables(rows):
    header = "| K x N | M | dense bf16 ms | " + " | ".join(CELLS) + " |"
    print("\ntime, ms (and speed vs W8A16 per-channel)\n")
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for r in rows:
        cells = " | ".join(f"{r[f'{c} ms']:.1f} ({r[f'{c} vs W8A16']:.2f}x)" for c in CELLS)
        print(f"| {r['K']}x{r['N']} | {r['M']} | {r['dense_ms']:.1f} | {cells} |")
    print("\nspeed vs dense bf16 (eager oneDNN)\n")
    print(header.replace("dense bf16 ms | ", ""))
    print("|" + "---|" * (header.count("|") - 2))
    for r in rows:
        print(
            f"| {r['K']}x{r['N']} | {r['M']} | "
            + " | ".join(f"{r[f'{c} vs dense']:.2f}x" for c in CELLS)
            + " |"
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="4096x4096,4096x11008,11008x4096", help="K x N, comma separated")
    parser.add_argument("--m", default="512", help="activation rows, comma separated")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()}"
    )
    rows = []
    for shape in args.shapes.split(","):
        k, n = (int(v) for v in shape.split("x"))
        for m in (int(v) for v in args.m.split(",")):
            rows.append(bench_shape(k, n, m, args.rounds))
            print(
                f"{k}x{n} M={m}: " + ", ".join(f"{c} {rows[-1][f'{c} ms']:.1f} ms" for c in CELLS), flush=True
            )
            torch._dynamo.reset()
            gc.collect()
    _print_tables(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
