"""A LoRA model at decode, side by side in one run: what the adapters cost, unmerged and merged.

A stack of ``--layers`` int8 (per-channel) linear layers of K x N = 4096 x 4096 (a working set larger than the
last-level cache), each with a rank-``--rank`` fp32 adapter, bf16 activations of ``M`` rows. Timed round-robin
(medians), per token batch through the whole stack:

* dense bf16, eager (the float model);
* the LoRA model in eager, unmerged;
* stock Inductor (``backend="inductor"``, freezing on), unmerged;
* quant_inductor: the base without adapters, the LoRA model unmerged (adapter add fused into the GEMV), merged.

    python benchmarks/bench_lora.py [--layers 24] [--rank 16] [--m 1,16] [--rounds 7]
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import subprocess
import sys

import torch
from torch import nn

import inductor_quant as iq
from inductor_quant.demo.timing import interleaved_medians
from inductor_quant.nn import LoraLinear, add_lora

K = N = 4096


def _compile(model, x, backend):
    """Compile and run once (no ``dynamo.reset``: the variants are timed together, so their caches must stay)."""
    compiled = torch.compile(model, backend=backend)
    # stock Inductor reads freezing globally at trace time; quant_inductor turns it on itself under no_grad
    with torch._inductor.config.patch(freezing=backend == "inductor"):
        compiled(x)
    return compiled


def build(layers: int, rank: int):
    torch.manual_seed(0)
    dense = nn.Sequential(*(nn.Linear(K, N, bias=False) for _ in range(layers))).to(torch.bfloat16)
    base = copy.deepcopy(dense)
    iq.quantize_(base, iq.Int8WeightOnlyConfig())
    lora = copy.deepcopy(base)
    add_lora(lora, "task", r=rank, alpha=2 * rank)
    for layer in lora.modules():
        if isinstance(layer, LoraLinear):
            nn.init.normal_(layer.lora_B["task"].weight, std=1e-3)
    merged = copy.deepcopy(lora)
    for layer in merged.modules():
        if isinstance(layer, LoraLinear):
            layer.merge()
    return dense, base, lora.eval(), merged.eval()


def run(m: int, layers: int, rank: int, rounds: int) -> dict[str, float]:
    dense, base, lora, merged = build(layers, rank)
    x = torch.randn(m, K, dtype=torch.bfloat16)
    with torch.no_grad():
        variants = {
            "dense bf16 eager": dense,
            "LoRA eager": lora,
            # first: once quant_inductor has run, its lowerings serve the package's ops in any Inductor graph
            "LoRA stock Inductor": _compile(lora, x, "inductor"),
            "base quant_inductor": _compile(base, x, "quant_inductor"),
            "LoRA quant_inductor": _compile(lora, x, "quant_inductor"),
            "merged quant_inductor": _compile(merged, x, "quant_inductor"),
        }
        return interleaved_medians({k: functools.partial(f, x) for k, f in variants.items()}, rounds=rounds)


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--m", default="1,16", help="token batch sizes; each is measured in its own process")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument(
        "--json", action="store_true", help=argparse.SUPPRESS
    )  # one M, for the parent process
    args = parser.parse_args()
    if args.json:
        print(json.dumps(run(int(args.m), args.layers, args.rank, args.rounds)))
        return
    rows = []
    for m in args.m.split(","):
        cmd = [sys.executable, __file__, "--json", "--m", m, "--layers", str(args.layers)]
        cmd += ["--rank", str(args.rank), "--rounds", str(args.rounds)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows.append((m, json.loads(out.strip().splitlines()[-1])))
    names = list(rows[0][1])
    print(
        f"\n{args.layers} layers of {K} x {N} int8, rank {args.rank}; ms per token batch (speed vs dense bf16)\n"
    )
    print("| M | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for m, t in rows:
        cells = [f"{t[n] * 1e3:.2f} ({t['dense bf16 eager'] / t[n]:.2f}x)" for n in names]
        print(f"| {m} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
