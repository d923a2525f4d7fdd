"""Real PEFT on quantize_d models, with the one line of set-up (use_with_peft): training, merge_adapter,
unmerge_adapter (bit-exact), merge_and_unload; PEFT's own behaviour on the float layers of the same model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import inductor_quant as iq
from inductor_quant.nn import use_with_peft
from inductor_quant.primitives import sqnr

peft = pytest.importorskip("peft", reason="peft is a test dependency (pip install -e '.[test]')")
from peft import LoraConfig, get_peft_model  # noqa: E402

from inductor_quant.nn.lora_peft import PeftQuantizedLoraLinear  # noqa: E402

CONFIGS = {"int8": iq.Int8WeightOnlyConfig(), "int4": iq.Int4WeightOnlyConfig(group_size=32)}


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.up = nn.Linear(64, 160)
        self.down = nn.Linear(160, 96, bias=False)
        self.head = nn.Linear(96, 10)

    def forward(self, x):
        return self.head(torch.relu(self.down(torch.relu(self.up(x)))))


def peft_model(scheme: str, **config):
    model = MLP()
    iq.quantize_(model, CONFIGS[scheme], filter_fn=lambda m, fqn: fqn in ("up", "down"))
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["up", "down", "head"], **config)
    return get_peft_model(model, use_with_peft(config))


def base_tensors(model) -> dict[str, list[torch.Tensor]]:
    inner = model.base_model.model
    return {n: [t.clone() for t in getattr(inner, n).base_layer.weight._tensors()] for n in ("up", "down")}


def train(model, steps: int) -> list[float]:
    g = torch.Generator().manual_seed(0)
    x, target = torch.randn(32, 64, generator=g), torch.randn(32, 10, generator=g)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    losses = []
    for _ in range(steps):
        loss = nn.functional.mse_loss(model(x), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("scheme", list(CONFIGS))
def test_peft_train_merge_unmerge_and_unload(scheme):
    model = peft_model(scheme)
    inner = model.base_model.model
    assert all(isinstance(getattr(inner, n), PeftQuantizedLoraLinear) for n in ("up", "down", "head"))
    base = base_tensors(model)

    losses = train(model, 20)
    assert losses[-1] < 0.8 * losses[0], losses
    for name, saved in base.items():  # trained: the quantized base is untouched
        current = getattr(inner, name).base_layer.weight._tensors()
        assert all(torch.equal(t, s) for t, s in zip(current, saved, strict=True))

    model.eval()
    x = torch.randn(8, 64)
    with torch.no_grad():
        unmerged = model(x)
        for _ in range(10):
            model.merge_adapter()
            assert inner.up.merged and inner.head.merged
            merged = model(x)
            model.unmerge_adapter()
            for name, saved in base.items():
                current = getattr(inner, name).base_layer.weight._tensors()
                assert all(torch.equal(t, s) for t, s in zip(current, saved, strict=True))
        # int8: ~1e-2 of the output; int4: its step is ~15x coarser (see test_lora_merge for the bounds).
        assert sqnr(unmerged, merged) > (35.0 if scheme == "int8" else 15.0)
        unloaded = model.merge_and_unload()
    assert type(unloaded.up) is nn.Linear and type(unloaded.head) is nn.Linear
    assert type(unloaded.up.weight).__name__ == f"{scheme.capitalize()}WeightTensor"
    with torch.no_grad():
        torch.testing.assert_close(unloaded(x), merged, atol=0, rtol=0)


def test_float_layers_keep_peft_behaviour():
    model = peft_model("int8", init_lora_weights=False)
    head = model.base_model.model.head
    w = head.base_layer.weight.detach().clone()
    model.merge_adapter()
    torch.testing.assert_close(head.base_layer.weight, w + head.get_delta_weight("default"))
    model.unmerge_adapter()
    torch.testing.assert_close(head.base_layer.weight, w)


def test_safe_merge_names_the_broken_adapter():
    model = peft_model("int8", init_lora_weights=False)
    up = model.base_model.model.up
    up.lora_B["default"].weight.data[0, 0] = float("nan")
    before = [t.clone() for t in up.base_layer.weight._tensors()]
    with pytest.raises(ValueError, match="LoRA adapter 'default' has non-finite values"):
        up.merge(safe_merge=True)
    assert not up.merged
    assert all(torch.equal(t, s) for t, s in zip(up.base_layer.weight._tensors(), before, strict=True))


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (dict(lora_bias=True), "lora_bias=True is not supported on a quantized base layer"),
        (dict(use_dora=True), "cannot be merged into a quantized weight"),
    ],
    ids=["lora_bias", "dora"],
)
def test_unmergeable_options_are_refused_on_quantized_layers(config, message):
    with pytest.raises(ValueError, match=message):
        peft_model("int4", **config)


def test_without_the_setup_line_merging_fails_loudly():
    """PEFT's own lora.Linear adds a float delta to the weight, which a quantized weight refuses by name."""
    model = MLP()
    iq.quantize_(model, CONFIGS["int8"], filter_fn=lambda m, fqn: fqn in ("up", "down"))
    model = get_peft_model(model, LoraConfig(r=4, target_modules=["up"], init_lora_weights=False))
    model(torch.randn(2, 64))  # the forward works: the base runs its quantized kernel
    with pytest.raises(NotImplementedError, match="Int8WeightTensor does not implement"):
        model.merge_adapter()
