"""The main job: quantize the built-in transformer, compile it with quant_inductor, check it, time it.

python -m inductor_quant.demo [--size small] [--dtype bfloat16] [--m 1] [--steps 15] [--group-size 128]
"""

from __future__ import annotations

import argparse
import copy
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch._dynamo.utils import counters

import inductor_quant as iq
from inductor_quant.demo.model import SIZES, build
from inductor_quant.demo.timing import interleaved_medians
from inductor_quant.primitives import INT4_GROUP_SIZES, sqnr

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
# end-to-end through every block of the built-in model; per layer int8 is >= 35 dB and int4 (g128) ~20 dB, and the
# errors of 7 linears per block add up (measured int4 g128: 20.3 dB on tiny, 17.2 dB on small)
MIN_SQNR_DB = {"int8": 25.0, "int4": 15.0, "int4_a8": 15.0}


class HandWrittenInt8Linear(nn.Module):
    """What a stock-Inductor user writes for int8 weights (gpt-fast): ``F.linear(x, w.to(x.dtype)) * scale``."""

    def __init__(self, qweight: iq.Int8WeightTensor):
        super().__init__()
        self.register_buffer("w", qweight.qdata)
        self.register_buffer("s", qweight.scale.to(qweight.dtype))

    def forward(self, x):
        return F.linear(x, self.w.to(x.dtype)) * self.s


def _hand_written(quantized: nn.Module) -> nn.Module:
    model = copy.deepcopy(quantized)
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.Linear) and isinstance(child.weight, iq.Int8WeightTensor):
                setattr(module, child_name, HandWrittenInt8Linear(child.weight))
    return model


def _compile(model: nn.Module, x: torch.Tensor, backend: str) -> tuple[nn.Module, float]:
    torch._dynamo.reset()
    compiled = torch.compile(model, backend=backend)
    start = time.perf_counter()
    compiled(x)
    return compiled, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m inductor_quant.demo", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--size", default="small", choices=sorted(SIZES), help="built-in model size")
    parser.add_argument(
        "--dtype", default="bfloat16", choices=sorted(DTYPES), help="activation / float weight dtype"
    )
    parser.add_argument(
        "--m", type=int, default=1, help="tokens per step (1 = decode; 256 = a prefill chunk)"
    )
    parser.add_argument("--steps", type=int, default=15, help="timed steps per variant (median reported)")
    parser.add_argument(
        "--group-size", type=int, default=128, choices=INT4_GROUP_SIZES, help="int4 group size"
    )
    args = parser.parse_args(argv)
    if args.m < 1:
        parser.error(f"--m must be >= 1, got {args.m}")
    dtype = DTYPES[args.dtype]
    size = SIZES[args.size]

    float_model = build(args.size, dtype)
    quantized = iq.quantize_(copy.deepcopy(float_model), iq.Int8WeightOnlyConfig())
    quantized4 = iq.quantize_(copy.deepcopy(float_model), iq.Int4WeightOnlyConfig(group_size=args.group_size))
    a8_config = iq.Int8DynamicActivationInt4WeightConfig(group_size=args.group_size)
    quantized4a8 = iq.quantize_(copy.deepcopy(float_model), a8_config)
    stock_int8 = _hand_written(quantized)
    x = torch.randn(1, args.m, size.dim, dtype=dtype)
    print(
        f"model {args.size}: dim {size.dim}, hidden {size.hidden}, {size.layers} blocks; {args.dtype}; M = {args.m}"
    )

    rows = []
    with torch.no_grad():
        reference = float_model(x)
        stock_float, t_stock_float = _compile(float_model, x, "inductor")
        stock_q, t_stock_q = _compile(stock_int8, x, "inductor")
        counters["inductor_quant"].clear()
        ours, t_ours = _compile(quantized, x, "quant_inductor")
        packed_copies = counters["inductor_quant"]["int8_prepacked_bytes"]
        counters["inductor_quant"].clear()
        ours4, t_ours4 = _compile(quantized4, x, "quant_inductor")
        packed_copies4 = counters["inductor_quant"]["int4_prepacked_bytes"]
        counters["inductor_quant"].clear()
        ours4a8, t_ours4a8 = _compile(quantized4a8, x, "quant_inductor")
        packed_copies4a8 = counters["inductor_quant"]["int4_prepacked_bytes"]
        quality = {
            "int8": sqnr(reference, ours(x)),
            "int4": sqnr(reference, ours4(x)),
            "int4_a8": sqnr(reference, ours4a8(x)),
        }
        stock_quality = sqnr(reference, stock_q(x))
        times = interleaved_medians(
            {
                "eager float": lambda: float_model(x),
                "stock Inductor, float": lambda: stock_float(x),
                "stock Inductor, int8 (gpt-fast form)": lambda: stock_q(x),
                "quant_inductor, int8": lambda: ours(x),
                f"quant_inductor, int4 g{args.group_size}": lambda: ours4(x),
                f"quant_inductor, W4A8 g{args.group_size}": lambda: ours4a8(x),
            },
            rounds=args.steps,
        )
    weights = {
        "eager float": iq.weight_bytes(float_model),
        "stock Inductor, float": iq.weight_bytes(float_model),
        "stock Inductor, int8 (gpt-fast form)": iq.weight_bytes(stock_int8),
        # the module's int8 weights plus the decode-layout copies the compiled graph holds (prepacking)
        "quant_inductor, int8": iq.weight_bytes(quantized) + packed_copies,
        f"quant_inductor, int4 g{args.group_size}": iq.weight_bytes(quantized4) + packed_copies4,
        f"quant_inductor, W4A8 g{args.group_size}": iq.weight_bytes(quantized4a8) + packed_copies4a8,
    }
    compile_s = {
        "stock Inductor, float": t_stock_float,
        "stock Inductor, int8 (gpt-fast form)": t_stock_q,
        "quant_inductor, int8": t_ours,
        f"quant_inductor, int4 g{args.group_size}": t_ours4,
        f"quant_inductor, W4A8 g{args.group_size}": t_ours4a8,
    }
    for name, seconds in times.items():
        rows.append((name, seconds * 1e3, seconds * 1e3 / args.m, weights[name] / 2**20, compile_s.get(name)))

    base = times["eager float"]
    print(
        f"{'variant':38} {'ms/step':>9} {'ms/token':>9} {'vs eager':>9} {'weights MiB':>12} {'compile s':>10}"
    )
    print(
        "(weights MiB: bytes the variant holds for its weights, the module's and any copy its compiled graph keeps)"
    )
    for name, ms, ms_tok, mib, comp in rows:
        comp_s = f"{comp:10.1f}" if comp is not None else f"{'-':>10}"
        print(f"{name:38} {ms:9.2f} {ms_tok:9.3f} {base * 1e3 / ms:8.2f}x {mib:12.1f} {comp_s}")
    print(
        f"SQNR vs the float model: quant_inductor int8 {quality['int8']:.1f} dB (required >= {MIN_SQNR_DB['int8']}), "
        f"int4 {quality['int4']:.1f} dB (required >= {MIN_SQNR_DB['int4']}), "
        f"W4A8 {quality['int4_a8']:.1f} dB (required >= {MIN_SQNR_DB['int4_a8']}); stock int8 {stock_quality:.1f} dB"
    )
    failed = [scheme for scheme, db in quality.items() if db < MIN_SQNR_DB[scheme]]
    for scheme in failed:
        print(
            f"FAIL: quant_inductor {scheme} output SQNR {quality[scheme]:.1f} dB < {MIN_SQNR_DB[scheme]} dB",
            file=sys.stderr,
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
