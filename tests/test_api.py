import pytest
import torch
from torch import nn

import inductor_quant as iq


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
