import pytest
import torch

from inductor_quant import Int8WeightOnlyConfig


def test_int8_config_defaults_to_fp32_scales():
    assert Int8WeightOnlyConfig().scale_dtype == torch.float32


def test_int8_config_rejects_bad_scale_dtype_naming_it():
    with pytest.raises(ValueError, match="torch.int8"):
        Int8WeightOnlyConfig(scale_dtype=torch.int8)
