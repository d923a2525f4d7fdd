"""Decode with weights held in the kernels' blocked layout vs held plain with a packed copy, side by side.

    python benchmarks/bench_layout.py [--rounds 15]

A stack of 16 distinct 4096 x 4096 bf16 linears quantized twice from the same float weights, int8 and int4 g32:
``layout="auto"`` (a CPU weight held blocked: the compiled graph reads the module's own bytes) and
``layout="plain"`` (the graph reads a packed copy made at compile time). Each is compiled with quant_inductor at
M = 1, 4, 16 (static shapes, frozen) and timed in rounds alternating between all of them; medians and the ratio
blocked / plain. The two run the same decode template on the same layout, so the ratio should be 1 within noise.
"""

from __future__ import annotations

import argparse
import copy

import torch
from bench_int8 import Stack
from torch import nn

import inductor_quant as iq
from inductor_quant.demo.timing import interleaved_medians

CONFIGS = {
    "int8": lambda layout: iq.Int8WeightOnlyConfig(layout=layout),
    "int4 g32": lambda layout: iq.Int4WeightOnlyConfig(group_size=32, layout=layout),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    torch._dynamo.config.recompile_limit = 64
    torch._dynamo.config.accumulated_recompile_limit = 256
    torch.manual_seed(0)
    float_layers = [nn.Linear(4096, 4096, bias=False).to(torch.bfloat16) for _ in range(16)]
    for scheme, config in CONFIGS.items():
        runs = {}
        for layout in ("auto", "plain"):
            model = iq.quantize_(Stack(copy.deepcopy(float_layers)), config(layout))
            for m in (1, 4, 16):
                x = torch.randn(1, m, 4096, dtype=torch.bfloat16)
                compiled = torch.compile(model, backend="quant_inductor", dynamic=False)

                def run(compiled=compiled, x=x):
                    with torch.no_grad():
                        compiled(x)

                run()  # compile
                runs[(layout, m)] = run
        medians = interleaved_medians(runs, rounds=args.rounds)
        for m in (1, 4, 16):
            blocked, plain = medians[("auto", m)], medians[("plain", m)]
            print(
                f"{scheme} M={m}: blocked {blocked * 1e3:.2f} ms, plain + packed copy {plain * 1e3:.2f} ms, "
                f"ratio {blocked / plain:.3f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
