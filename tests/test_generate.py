"""iq.generate, the lean decode loop: the tokens of transformers' own greedy generate(), two compiled graphs for
every prompt length and generation length, top-k sampling and end-of-sequence stops inside the loop."""

from __future__ import annotations

import pytest
import torch
from conftest import small_llama
from torch._dynamo.utils import counters

import inductor_quant as iq

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def model():
    # fp32 activations: compiled and eager logits agree to ~1e-6, so greedy tokens cannot flip on rounding
    return iq.quantize_(small_llama(torch.float32), iq.Int8WeightOnlyConfig())


def _prompt(length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, 512, (1, length), generator=torch.Generator().manual_seed(seed))


def test_greedy_tokens_are_transformers_generate_tokens_and_new_lengths_do_not_recompile(model):
    ids = _prompt(7)
    with torch.no_grad():
        expected = model.generate(ids, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    out = iq.generate(model, ids, 6)
    assert torch.equal(out, expected)
    graphs = counters["stats"]["unique_graphs"]
    assert graphs == 2  # the prompt (dynamic length) and the one-token step
    # the step runs the packed decode kernels (on the int8 weights quantize_ holds blocked)
    assert counters["inductor_quant"]["int8_kernel_int8_gemv_packed"] > 0

    ids = _prompt(12, seed=1)  # another prompt length and another generation length
    with torch.no_grad():
        expected = model.generate(ids, max_new_tokens=9, min_new_tokens=9, do_sample=False)
    assert torch.equal(iq.generate(model, ids, 9), expected)
    assert counters["stats"]["unique_graphs"] == graphs


def test_two_models_of_one_architecture_each_generate_their_own_tokens(model):
    """Each model's steps are compiled from their own code object (the module-tree guards are skipped): a second
    model of the same architecture must not be served the first one's frozen graphs."""
    torch.manual_seed(1)
    other = iq.quantize_(transformers.LlamaForCausalLM(model.config).eval(), iq.Int8WeightOnlyConfig())
    ids = _prompt(6)
    for m in (model, other, model):
        with torch.no_grad():
            expected = m.generate(ids, max_new_tokens=5, min_new_tokens=5, do_sample=False)
        assert torch.equal(iq.generate(m, ids, 5), expected)


def test_each_backend_gets_its_own_compiled_step(model):
    """A model generated with one backend and then another runs the second one (steps are kept per backend)."""
    from torch._dynamo.testing import CompileCounter

    ids = _prompt(5)
    first = iq.generate(model, ids, 4)
    counting = CompileCounter()  # Dynamo's graphs run as they are (eager), counted
    assert torch.equal(iq.generate(model, ids, 4, backend=counting), first)
    assert counting.frame_count == 2  # its own prompt and one-token steps


def test_top_k_one_is_greedy_and_sampling_stays_in_the_top_k(model):
    ids = _prompt(5)
    greedy = iq.generate(model, ids, 4)
    assert torch.equal(iq.generate(model, ids, 4, top_k=1), greedy)
    torch.manual_seed(0)
    sampled = iq.generate(model, ids, 4, top_k=5, temperature=0.7)
    assert sampled.shape == greedy.shape
    with torch.no_grad():
        logits = model(sampled).logits[0, ids.shape[1] - 1 : -1]
    top5 = logits.topk(5, dim=-1).indices
    assert (top5 == sampled[0, ids.shape[1] :, None]).any(dim=-1).all()


def test_generation_stops_once_every_sequence_has_ended(model):
    ids = _prompt(5)
    greedy = iq.generate(model, ids, 6)
    generated = greedy[0, ids.shape[1] :].tolist()
    eos = generated[1]  # the second generated token, which may also have come earlier
    stopped = iq.generate(model, ids, 6, eos_token_id=eos)
    assert torch.equal(stopped, greedy[:, : ids.shape[1] + generated.index(eos) + 1])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"input_ids": torch.ones(4, dtype=torch.long)}, "input_ids must be integer"),
        ({"max_new_tokens": 0}, "max_new_tokens must be at least 1, got 0"),
        ({"top_k": 0}, r"top_k must be in \[1, 512\], got 0"),
        ({"temperature": 0.0}, "temperature must be positive, got 0.0"),
    ],
)
def test_bad_arguments_name_the_value(model, kwargs, message):
    args = {"input_ids": _prompt(3), "max_new_tokens": 2, **kwargs}
    with pytest.raises(ValueError, match=message):
        iq.generate(model, **args)
