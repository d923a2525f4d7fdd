import pytest
import torch

from inductor_quant import Int4WeightOnlyConfig, Int8WeightOnlyConfig


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


def test_int4_layer_whose_k_the_group_does_not_divide_is_a_value_error_naming_k():
    from torch import nn

    import inductor_quant as iq

    with pytest.raises(ValueError, match=r"K=96"):
        iq.quantize_(nn.Linear(96, 8), Int4WeightOnlyConfig(group_size=64))
