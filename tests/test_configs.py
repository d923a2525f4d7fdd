import pytest
import torch

from inductor_quant import Int4WeightOnlyConfig, Int8DynamicActivationInt4WeightConfig, Int8WeightOnlyConfig


def test_int8_config_defaults_to_fp32_scales():
    assert Int8WeightOnlyConfig().scale_dtype == torch.float32


def test_int8_config_rejects_bad_scale_dtype_naming_it():
    with pytest.raises(ValueError, match="torch.int8"):
        Int8WeightOnlyConfig(scale_dtype=torch.int8)


def test_int4_config_defaults():
    c = Int4WeightOnlyConfig()
    assert c.group_size == 128 and c.scale_dtype == torch.bfloat16


@pytest.mark.parametrize("group_size", [16, 100, 512, 0])
def test_int4_config_rejects_bad_group_size_naming_it(group_size):
    with pytest.raises(ValueError, match=f"got {group_size}"):
        Int4WeightOnlyConfig(group_size=group_size)


def test_int4_layer_whose_k_the_group_does_not_divide_takes_a_group_that_does():
    from torch import nn

    import inductor_quant as iq

    layer = iq.quantize_(nn.Linear(96, 8), Int4WeightOnlyConfig(group_size=64))
    assert layer.weight.group_size == 32  # 96 = 3 x 32 (test_api.py checks the log lines)


def test_bit_quant_config_defaults_and_errors_name_the_value():
    from inductor_quant import BitQuantConfig

    cfg = BitQuantConfig()
    assert (cfg.activation_dtype, cfg.activation_granularity, cfg.weight_granularity) == (
        "int8",
        "per_token",
        "per_tensor",
    )
    bad = [
        (dict(activation_dtype="int4"), "activation_dtype must be 'int8', got 'int4'"),
        (dict(activation_granularity="per_row"), "activation_granularity must be one of .* got 'per_row'"),
        (dict(weight_granularity="per_group"), "weight_granularity must be one of .* got 'per_group'"),
        (dict(eps=0.0), "eps must be a positive finite number, got 0.0"),
        (dict(eps=float("nan")), "eps must be a positive finite number, got nan"),
    ]
    for kwargs, message in bad:
        with pytest.raises(ValueError, match=message):
            BitQuantConfig(**kwargs)


def test_w4a8_config_has_the_int4_fields_and_checks():
    c = Int8DynamicActivationInt4WeightConfig()
    assert c.group_size == 128 and c.scale_dtype == torch.bfloat16
    with pytest.raises(ValueError, match="got 48"):
        Int8DynamicActivationInt4WeightConfig(group_size=48)
