"""Memory of a compiled model through Hugging Face generate(): the weight bytes it holds and the RSS it grows by.

    python benchmarks/bench_memory.py [--size base] [--prompts 16,24,40] [--configs bf16,inductor,int8,...]

Each row runs in a fresh process: a random-weight ``LlamaForCausalLM`` (``demo.models.RANDOM_SIZES``), quantized
in place, its forward compiled with static shapes (``dynamic=False``: every prompt length is a graph of its own,
as is the one-token step), ``generate()`` with a static cache for each prompt length, then a second
``torch.compile`` of the same forward and one more generate(). Columns:

* quantized MiB: ``iq.weight_bytes`` (parameters and buffers, quantized weights by their inner tensors);
* resident MiB: ``iq.resident_weight_bytes``, measured by data pointer over the module and every compiled graph
  that holds one of its weights (packed copies, concatenations), and its ratio to the quantized bytes;
* RSS +MiB: the process's resident set after all the generates minus before the first compile; peak +MiB: its
  high-water mark above that same baseline (reset before compiling through ``/proc/self/clear_refs``);
* graphs: Dynamo's unique graphs; compile s: the wall time of all the generates (compiles included), cold: each
  row compiles into an Inductor cache directory of its own, deleted after it.

Rows: eager bf16, stock Inductor on the bf16 model, quant_inductor on each config, and int8 held in the plain
``[N, K]`` layout (``layout="plain"``: the compiled graphs read a packed copy made at compile time, as every int8
weight did before CPU weights were held in the kernels' blocked layout).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import torch

CONFIGS = {
    "int8": lambda iq: iq.Int8WeightOnlyConfig(),
    "int8-plain": lambda iq: iq.Int8WeightOnlyConfig(layout="plain"),
    "int4-g32": lambda iq: iq.Int4WeightOnlyConfig(group_size=32),
    "int4": lambda iq: iq.Int4WeightOnlyConfig(group_size=128),
}


def _status(field: str) -> float:
    """A ``/proc/self/status`` field in MiB (VmRSS: resident now; VmHWM: its high-water mark)."""
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def _row(name: str, size: str, prompts: list[int], new_tokens: int) -> dict:
    import inductor_quant as iq
    from inductor_quant.demo.models import build_random

    model, _ = build_random(size, torch.bfloat16)
    if name in CONFIGS:
        iq.quantize_(model, CONFIGS[name](iq))
    quantized = iq.weight_bytes(model)
    options = None
    backend = "inductor" if name == "inductor" else "quant_inductor"
    forward = model.forward

    def generate(length: int) -> None:
        ids = torch.randint(
            3, model.config.vocab_size, (1, length), generator=torch.Generator().manual_seed(0)
        )
        model.generate(
            ids,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            cache_implementation="static",
        )

    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # the high-water mark restarts from the current RSS
    baseline = _status("VmRSS")
    start = time.perf_counter()
    with torch.no_grad():
        if name != "bf16":
            model.forward = torch.compile(forward, backend=backend, dynamic=False, options=options)
        for length in prompts:
            generate(length)
        if name != "bf16":  # a second compile of the same model
            model.forward = torch.compile(forward, backend=backend, dynamic=False, options=options)
        generate(prompts[0])
    elapsed = time.perf_counter() - start
    from torch._dynamo.utils import counters

    return {
        "config": name,
        "quantized MiB": quantized / 2**20,
        "resident MiB": iq.resident_weight_bytes(model) / 2**20,
        "RSS +MiB": _status("VmRSS") - baseline,
        "peak +MiB": _status("VmHWM") - baseline,
        "graphs": counters["stats"]["unique_graphs"],
        "compile s": elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="base", help="a demo.models.RANDOM_SIZES name")
    parser.add_argument("--prompts", default="16,24,40", help="prompt lengths, one generate() each")
    parser.add_argument("--new-tokens", type=int, default=4)
    parser.add_argument("--configs", default="bf16,inductor,int8,int8-plain,int4-g32,int4")
    parser.add_argument("--row", help=argparse.SUPPRESS)  # run one row (in the child process)
    args = parser.parse_args()
    prompts = [int(p) for p in args.prompts.split(",")]
    if args.row:
        print(json.dumps(_row(args.row, args.size, prompts, args.new_tokens)))
        return
    from inductor_quant.demo.generation import cpu_name

    print(
        f"random LlamaForCausalLM size {args.size}, bf16; prompts {prompts} + a second compile; {cpu_name()}, "
        f"{torch.get_num_threads()} threads"
    )
    header = f"{'config':15} {'quantized MiB':>13} {'resident MiB':>12} {'ratio':>6} {'RSS +MiB':>9} {'peak +MiB':>9}"
    print(header + f" {'graphs':>6} {'compile s':>9}")
    for name in args.configs.split(","):
        command = [sys.executable, __file__, "--row", name, "--size", args.size, "--prompts", args.prompts]
        command += ["--new-tokens", str(args.new_tokens)]
        with tempfile.TemporaryDirectory() as cache:  # a cold compile: an Inductor cache of its own
            env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
            out = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(
            f"{name:15} {r['quantized MiB']:13.1f} {r['resident MiB']:12.1f} "
            f"{r['resident MiB'] / r['quantized MiB']:6.2f} {r['RSS +MiB']:9.0f} {r['peak +MiB']:9.0f} "
            f"{r['graphs']:6d} {r['compile s']:9.1f}"
        )


if __name__ == "__main__":
    main()
