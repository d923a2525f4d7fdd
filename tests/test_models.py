"""Real model architectures from Hugging Face transformers, quantized and compiled the way users run them.

Each causal LM is built from a small config with seeded random weights (no hub access), quantized, its forward
compiled with quant_inductor (``model.forward = torch.compile(model.forward, ...)``, as HF documents), and run
through ``generate()`` greedily with a static cache. Every generated step's logits are compared with the eager
quantized model's, teacher-forced (its full-sequence logits on the generated tokens), at ``MIN_STEP_SQNR_DB``; the
decode steps must have run the packed decode kernels (counters). A BERT encoder checks the same on a padded batch.
"""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

import inductor_quant as iq
from inductor_quant.primitives import sqnr

transformers = pytest.importorskip("transformers")


MIN_STEP_SQNR_DB = (
    30.0  # two bf16 runs of a 2-layer model differ by 40-48 dB per step here; a misread layout ~0
)
VOCAB = 256
PROMPT, NEW_TOKENS = 12, 5
_COMMON = dict(
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=VOCAB,
    max_position_embeddings=256,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)

# family -> its config; what each adds: Qwen2 biased q / k / v, Phi-3 fused qkv and gate_up projections,
# Gemma tied embeddings (and an embedding scaled by sqrt(hidden)), GPT-2 Conv1D projections and tied embeddings.
FAMILIES = {
    "llama": lambda: transformers.LlamaConfig(**_COMMON, head_dim=32),
    "qwen2": lambda: transformers.Qwen2Config(**_COMMON),
    "mistral": lambda: transformers.MistralConfig(**_COMMON, head_dim=32),
    "phi3": lambda: transformers.Phi3Config(**_COMMON),
    "gemma": lambda: transformers.GemmaConfig(**_COMMON, head_dim=32),
    "gpt2": lambda: transformers.GPT2Config(
        n_embd=128, n_layer=2, n_head=4, vocab_size=VOCAB, n_positions=256, bos_token_id=1, eos_token_id=2
    ),
}

# scheme -> (config, the counter of its packed decode kernel)
SCHEMES = {
    "int8": (iq.Int8WeightOnlyConfig(), "int8_kernel_int8_gemv_packed"),
    "int4": (iq.Int4WeightOnlyConfig(group_size=32), "int4_kernel_int4_gemv_packed"),
    "w4a8": (iq.Int8DynamicActivationInt4WeightConfig(group_size=32), "int4_a8_kernel_int4_a8_gemv"),
}


def _model(family: str, scheme: str):
    torch.manual_seed(0)
    config = FAMILIES[family]()
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).eval()
    iq.quantize_(model, SCHEMES[scheme][0])
    return model


def _prompt(length: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(3, VOCAB, (1, length), generator=torch.Generator().manual_seed(seed))


def _generate(model, ids, new_tokens=NEW_TOKENS):
    return model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        cache_implementation="static",
        output_logits=True,
        return_dict_in_generate=True,
    )


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("family", FAMILIES)
def test_generate_matches_eager_at_every_step(family, scheme):
    model = _model(family, scheme)
    if model.config.tie_word_embeddings:
        # one quantized tensor serves the lookup and the head
        assert model.get_input_embeddings().weight is model.get_output_embeddings().weight
        assert isinstance(model.get_input_embeddings().weight, iq.Int8WeightTensor | iq.Int4WeightTensor)
    eager_forward = model.forward
    model.forward = torch.compile(model.forward, backend="quant_inductor")
    ids = _prompt(PROMPT)
    with torch.no_grad():
        out = _generate(model, ids)
        teacher = eager_forward(out.sequences).logits[0].float()
    steps = [sqnr(teacher[PROMPT - 1 + i], step[0].float()) for i, step in enumerate(out.logits)]
    assert len(steps) == NEW_TOKENS
    assert min(steps) >= MIN_STEP_SQNR_DB, [round(s, 1) for s in steps]
    # the first token (from the prefill graph's last position, HF's hidden[:, -1:, :]) is the eager model's
    assert out.sequences[0, PROMPT] == teacher[PROMPT - 1].argmax()
    assert counters["inductor_quant"][SCHEMES[scheme][1]] > 0, dict(counters["inductor_quant"])


def test_new_prompt_lengths_compile_a_bounded_number_of_graphs():
    """HF rebuilds the static cache for a new prompt length; Dynamo recompiles the prefill and decode graphs once
    with dynamic shapes and serves every later length from them. Measured: 2 graphs for the first prompt, 4 after
    the second, still 4 after the third; the generalized decode graph keeps the packed GEMV (M = 1 stays static)."""
    model = _model("llama", "int8")
    eager_forward = model.forward
    model.forward = torch.compile(model.forward, backend="quant_inductor")
    graphs, gemv = [], []
    with torch.no_grad():
        for length in (8, 13, 21):
            out = _generate(model, _prompt(length, seed=length))
            graphs.append(counters["stats"]["unique_graphs"])
            gemv.append(counters["inductor_quant"]["int8_kernel_int8_gemv_packed"])
            teacher = eager_forward(out.sequences).logits[0].float()
            steps = [sqnr(teacher[length - 1 + i], s[0].float()) for i, s in enumerate(out.logits)]
            assert min(steps) >= MIN_STEP_SQNR_DB, (length, [round(s, 1) for s in steps])
    assert graphs == [2, 4, 4], graphs
    assert gemv[1] > gemv[0], gemv  # the recompiled (dynamic) decode graph lowered its linears to the GEMV


@pytest.mark.parametrize("scheme", SCHEMES)
def test_bert_encoder_padded_batch(scheme):
    config = transformers.BertConfig(
        hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, vocab_size=VOCAB
    )
    torch.manual_seed(0)
    model = transformers.BertModel(config).to(torch.bfloat16).eval()
    iq.quantize_(model, SCHEMES[scheme][0])
    ids = torch.randint(3, VOCAB, (2, 10), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0  # the second sequence is padded
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask).last_hidden_state.float()
        compiled = torch.compile(model, backend="quant_inductor")
        actual = compiled(input_ids=ids, attention_mask=mask).last_hidden_state.float()
    for row in range(2):
        valid = int(mask[row].sum())
        assert sqnr(expected[row, :valid], actual[row, :valid]) >= MIN_STEP_SQNR_DB
    assert counters["inductor_quant"][SCHEMES[scheme][1].split("_kernel_")[0] + "_lowered"] > 0
