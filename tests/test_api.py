import pytest
import torch
from torch import nn

import inductor_quant as iq
from inductor_quant.primitives import quantize_int8_per_channel


def _model():
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16), nn.LayerNorm(16))


def test_quantize_swaps_every_linear_weight():
    m = iq.quantize_(_model(), iq.Int8WeightOnlyConfig())
    assert isinstance(m[0].weight, iq.Int8WeightTensor) and isinstance(m[2].weight, iq.Int8WeightTensor)
    assert not isinstance(m[3].weight, iq.Int8WeightTensor)
    assert m[0].weight.shape == (32, 64) and m[0].weight.dtype == torch.float32
    assert not m[0].weight.requires_grad


def test_quantize_filter_fn_sees_module_and_fqn():
    seen = []

    def only_first(module, fqn):
        seen.append(fqn)
        return fqn == "0"

    m = iq.quantize_(_model(), iq.Int8WeightOnlyConfig(), filter_fn=only_first)
    assert isinstance(m[0].weight, iq.Int8WeightTensor) and not isinstance(m[2].weight, iq.Int8WeightTensor)
    assert "2" in seen and "" in seen


@pytest.mark.parametrize("first", [iq.Int8WeightOnlyConfig(), iq.Int4WeightOnlyConfig(group_size=32)])
def test_quantize_twice_is_an_error(first):
    m = iq.quantize_(_model(), first)
    with pytest.raises(ValueError, match=r"already quantized \(Int(8|4)WeightTensor\)"):
        iq.quantize_(m, iq.Int8WeightOnlyConfig())


def test_unknown_config_is_a_type_error_naming_it():
    with pytest.raises(TypeError, match="object"):
        iq.quantize_(_model(), object())


def test_weight_bytes_counts_int8_data_and_scales():
    m = nn.Linear(64, 32, bias=False).to(torch.bfloat16)
    assert iq.weight_bytes(m) == 64 * 32 * 2
    iq.quantize_(m, iq.Int8WeightOnlyConfig())
    assert iq.weight_bytes(m) == 64 * 32 + 32 * 4


class _TiedLM(nn.Module):
    """A token embedding tied to the output head, as ``tie_word_embeddings=True`` models have them."""

    def __init__(self, vocab=96, hidden=64):
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.head = nn.Linear(hidden, vocab, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids):
        return self.head(self.norm(self.embed(ids)))


@pytest.mark.parametrize(
    "config", [iq.Int8WeightOnlyConfig(), iq.Int4WeightOnlyConfig(group_size=32)], ids=["int8", "int4"]
)
def test_tied_embedding_reads_the_quantized_head_weight(config, caplog):
    torch.manual_seed(0)
    model = _TiedLM()
    with caplog.at_level("INFO", logger="inductor_quant.api"):
        iq.quantize_(model, config)
    assert "'embed' is tied to 'head'" in caplog.text
    assert model.embed.weight is model.head.weight  # one tensor, not a float copy beside a quantized one
    # int8 under every config (api.TIED_EMBEDDING_CONFIG): the shared table is where 4 bits cost the most
    assert isinstance(model.head.weight, iq.Int8WeightTensor)
    ids = torch.tensor([[5, 0, 95, 5]])
    # reference: the rows of the dequantized weight, exactly
    torch.testing.assert_close(model.embed(ids), model.head.weight.dequantize()[ids], atol=0, rtol=0)
    assert iq.weight_bytes(model) < 96 * 64 * 4 / 3  # int8 or int4 bytes (+ scales), held once


def test_tie_to_a_module_that_cannot_read_a_quantized_weight_is_broken_with_a_warning(caplog):
    head = nn.Linear(64, 96, bias=False)
    other = nn.Module()
    other.weight = head.weight
    model = nn.ModuleDict({"head": head, "other": other})
    with caplog.at_level("WARNING", logger="inductor_quant.api"):
        iq.quantize_(model, iq.Int8WeightOnlyConfig())
    assert "'other' was tied to 'head'" in caplog.text
    assert isinstance(model["head"].weight, iq.Int8WeightTensor)
    assert not isinstance(model["other"].weight, iq.Int8WeightTensor)


def test_gpt2_conv1d_is_quantized_as_its_linear():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    conv = transformers.pytorch_utils.Conv1D(48, 64)  # nf=48 outputs, nx=64 inputs: weight [64, 48]
    nn.init.normal_(conv.bias)
    w = conv.weight.detach().t().clone()
    iq.quantize_(conv, iq.Int8WeightOnlyConfig())
    assert isinstance(conv.weight, iq.Int8WeightTensor) and conv.weight.shape == (64, 48)
    x = torch.randn(2, 5, 64)
    # reference: fp32 linear with the dequantized weight (the int8 grid of the transposed float weight)
    q, s = quantize_int8_per_channel(w)
    expected = torch.nn.functional.linear(x, q.float() * s[:, None], conv.bias)
    torch.testing.assert_close(conv(x), expected, atol=1e-4, rtol=1e-4)


def test_int4_takes_a_group_that_divides_k_or_keeps_the_layer_float(caplog):
    """SmolLM2's K = 576 under the default g128: g64 (the largest supported group dividing K), logged; K = 100 (no
    int4 group divides it) stays float with a log line; the rest of the model quantizes, and a summary closes."""
    model = nn.Sequential(nn.Linear(576, 64), nn.Linear(64, 100), nn.Linear(100, 32), nn.Linear(32, 256))
    with caplog.at_level("INFO", logger="inductor_quant.api"):
        iq.quantize_(model, iq.Int4WeightOnlyConfig())
    assert [getattr(m.weight, "group_size", None) for m in model] == [64, 64, None, 32]
    assert "K=576 is not a multiple of group_size=128: group_size=64" in caplog.text
    assert "'2' stays torch.float32: K=100 is not a multiple of any int4 group size" in caplog.text
    summary = caplog.records[-1].getMessage()
    assert summary.startswith("quantize_ Int4WeightOnlyConfig: ")
    assert "2 x Int4WeightTensor(g64)" in summary and "1 x kept float" in summary and "MiB ->" in summary
