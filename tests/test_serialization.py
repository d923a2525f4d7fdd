"""safetensors save / load of quantized state dicts: exact, every subclass, plain tensors untouched."""

import pytest
import torch
from torch import nn

import inductor_quant as iq

CONFIGS = [
    iq.Int8WeightOnlyConfig(),
    iq.Int4WeightOnlyConfig(group_size=32),
    iq.Int4WeightOnlyConfig(),
    iq.Int8DynamicActivationInt4WeightConfig(group_size=64),
]


def _model(config, dtype=torch.bfloat16):
    torch.manual_seed(0)
    # two quantized linears (the second reads the input again: K = 256 fits every group size) and a LayerNorm
    model = nn.Sequential(nn.Linear(256, 72), nn.LayerNorm(72), nn.Linear(256, 40))
    return iq.quantize_(model.to(dtype), config, filter_fn=lambda m, fqn: fqn in ("0", "2"))


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: repr(c))
def test_safetensors_round_trip_is_exact(config, tmp_path):
    model = _model(config)
    path = tmp_path / "model.safetensors"
    iq.save_safetensors(model, path, metadata={"note": "kept"})
    sd = iq.load_safetensors(path)
    assert set(sd) == set(model.state_dict())
    for name, t in model.state_dict().items():
        assert type(sd[name]) is type(t) and sd[name].dtype == t.dtype
        assert torch.equal(sd[name], t), name  # subclasses compare every field and attribute
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        assert f.metadata()["note"] == "kept"


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: repr(c))
def test_load_into_a_fresh_float_model_with_assign(config, tmp_path):
    model = _model(config)
    path = tmp_path / "model.safetensors"
    iq.save_safetensors(model.state_dict(), path)
    fresh = nn.Sequential(nn.Linear(256, 72), nn.LayerNorm(72), nn.Linear(256, 40)).to(torch.bfloat16)
    fresh.load_state_dict(iq.load_safetensors(path), assign=True)
    x = torch.randn(3, 256, dtype=torch.bfloat16)
    with torch.no_grad():
        assert torch.equal(fresh[0](x), model[0](x)) and torch.equal(fresh[2](x), model[2](x))


def test_reserved_metadata_key_and_bad_names_are_errors(tmp_path):
    model = _model(iq.Int4WeightOnlyConfig())
    with pytest.raises(ValueError, match="inductor_quant"):
        iq.save_safetensors(model, tmp_path / "a.safetensors", metadata={"inductor_quant": "x"})
    with pytest.raises(ValueError, match="'a#b'"):
        iq.save_safetensors({"a#b": torch.zeros(1)}, tmp_path / "b.safetensors")
