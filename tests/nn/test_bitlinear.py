"""BitLinear: construction, the three states (training / eval / deployed), STE gradients, learning, memory."""

from __future__ import annotations

import io
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from inductor_quant.nn import BitLinear, BitQuantConfig
from inductor_quant.primitives import (
    fake_quantize_activation_int8,
    fake_quantize_ternary,
    quantize_ternary,
    ternary_linear_reference,
)

CONFIGS = {
    "token-tensor": BitQuantConfig(),
    "tensor-channel": BitQuantConfig(activation_granularity="per_tensor", weight_granularity="per_channel"),
}


def _layer(k=300, n=37, bias=True, cfg="token-tensor", seed=0):
    torch.manual_seed(seed)
    layer = BitLinear(k, n, bias=bias, quant_config=CONFIGS[cfg])
    if bias:
        nn.init.normal_(layer.bias)  # nonzero, so the tests see it
    return layer


def test_constructor_errors_name_the_value():
    with pytest.raises(ValueError, match="in_features must be a positive int, got 0"):
        BitLinear(0, 4)
    with pytest.raises(ValueError, match="out_features must be a positive int, got 2.5"):
        BitLinear(4, 2.5)
    with pytest.raises(ValueError, match="init_method must be one of .* got 'normal'"):
        BitLinear(4, 4, init_method="normal")
    with pytest.raises(TypeError, match="quant_config must be a BitQuantConfig, got dict"):
        BitLinear(4, 4, quant_config={"weight_granularity": "per_channel"})


@pytest.mark.parametrize(
    "init_method, bound",
    [("xavier_uniform", math.sqrt(6 / (512 + 256))), ("kaiming_uniform", 1 / math.sqrt(512))],
)
def test_init_methods_draw_from_their_uniform_range(init_method, bound):
    torch.manual_seed(0)
    w = BitLinear(512, 256, init_method=init_method).weight
    assert w.abs().max() <= bound and w.abs().max() > 0.99 * bound
    assert BitLinear(512, 256).bias.eq(0).all()


def test_documented_properties_in_each_state():
    layer = _layer()
    assert layer.training and layer.use_bias and not layer.is_deployed
    assert layer.qweight is None and layer.qweight_scale is None and layer.weight.shape == (37, 300)
    layer.eval()
    assert layer.qweight.dtype == torch.uint8 and layer.qweight.shape == (
        37,
        128,
    )  # 300 -> 2 blocks of 64 bytes
    assert layer.qweight_scale.shape == (1,) and layer.qweight_scale.dtype == torch.float32
    assert torch.equal(layer.ternary_weight(), quantize_ternary(layer.weight)[0])
    layer.train()
    assert layer.qweight is None  # stale as soon as the weight trains
    with pytest.raises(RuntimeError, match="training mode; call eval"):
        layer.ternary_weight()
    assert not BitLinear(8, 4, bias=False).use_bias


@pytest.mark.parametrize("cfg", list(CONFIGS))
def test_training_forward_is_fake_quantized_with_straight_through_gradients(cfg):
    layer = _layer(cfg=cfg)
    x = torch.randn(2, 3, 300, requires_grad=True)
    out = layer(x)
    c = CONFIGS[cfg]
    wq = fake_quantize_ternary(layer.weight.detach(), c.weight_granularity)
    xq = fake_quantize_activation_int8(x.detach(), c.activation_granularity)
    torch.testing.assert_close(out, F.linear(xq, wq, layer.bias.detach()))
    grad = torch.randn_like(out)
    out.backward(grad)
    # STE: the gradients of F.linear at the quantized point, passed through the rounding unchanged
    torch.testing.assert_close(layer.weight.grad, grad.reshape(-1, 37).t() @ xq.reshape(-1, 300))
    torch.testing.assert_close(x.grad, grad @ wq)
    torch.testing.assert_close(layer.bias.grad, grad.sum((0, 1)))


def test_a_small_bitlinear_model_learns():
    """Two BitLinear layers fit a random teacher MLP: the loss falls to well under half its start."""
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8))
    model = nn.Sequential(BitLinear(64, 128), nn.ReLU(), BitLinear(128, 8))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x = torch.randn(512, 64)
    with torch.no_grad():
        y = teacher(x)
    losses = []
    for _ in range(300):
        loss = F.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0], (losses[0], losses[-1])
    # and the trained model keeps its accuracy quantized for inference
    model.eval()
    with torch.no_grad():
        assert F.mse_loss(model(x), y).item() < 0.35 * losses[0]


@pytest.mark.parametrize("cfg", list(CONFIGS))
def test_eval_forward_runs_the_ternary_op_and_equals_training_numerics(cfg):
    layer = _layer(cfg=cfg)
    x = torch.randn(4, 300)
    with torch.no_grad():
        trained = layer(x)
        layer.eval()
        evaluated = layer(x)
    # int8 x ternary in exact int32, scales after: the eager reference, to the bit
    expected = ternary_linear_reference(
        x, layer.ternary_weight(), layer.qweight_scale, layer.bias, CONFIGS[cfg].activation_granularity
    )
    assert torch.equal(evaluated, expected)
    # the fake-quantized float forward computes the same products in another order
    torch.testing.assert_close(evaluated, trained, atol=1e-5, rtol=1e-5)


def test_eval_requantizes_after_training_and_after_load_state_dict():
    layer = _layer().eval()
    before = layer.qweight.clone()
    layer.train()
    with torch.no_grad():
        layer.weight.neg_()
    layer.eval()
    assert not torch.equal(layer.qweight, before)
    assert torch.equal(layer.ternary_weight(), quantize_ternary(layer.weight)[0])
    other = _layer(seed=1)
    layer.load_state_dict(other.state_dict())  # in eval mode: qweight follows the loaded weight
    assert torch.equal(layer.ternary_weight(), quantize_ternary(other.weight)[0])
    assert set(other.state_dict()) == {"weight", "bias"}  # derived buffers are not saved before deploy


def test_deploy_drops_the_float_weight_irreversibly_and_saves_the_packed_state():
    layer = _layer(cfg="tensor-channel")
    x = torch.randn(3, 300)
    with torch.no_grad():
        expected = layer.eval()(x)
    assert layer.deploy() is layer and layer.is_deployed and not layer.training
    assert layer.weight is None and "weight" not in dict(layer.named_parameters())
    assert set(layer.state_dict()) == {"bias", "qweight", "qweight_scale"}
    with torch.no_grad():
        assert torch.equal(layer(x), expected)
    with pytest.raises(RuntimeError, match="deployed: its float weight is gone"):
        layer.train()
    with pytest.raises(RuntimeError, match="deployed: its float weight is gone"):
        nn.Sequential(layer).train()
    with pytest.raises(RuntimeError, match="deployed and has no float weight"):
        layer.reset_parameters()
    layer.deploy()  # again: nothing happens
    # a deployed checkpoint loads into a layer deployed first
    buffer = io.BytesIO()
    torch.save(layer.state_dict(), buffer)
    buffer.seek(0)
    fresh = BitLinear(300, 37, quant_config=CONFIGS["tensor-channel"]).deploy()
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    with torch.no_grad():
        assert torch.equal(fresh(x), expected)


@pytest.mark.parametrize("cfg", list(CONFIGS))
def test_deployed_weight_memory_is_at_most_2_1_bits_per_weight(cfg):
    layer = BitLinear(1024, 1024, bias=False, quant_config=CONFIGS[cfg]).deploy()
    stored = sum(t.nbytes for t in layer.state_dict().values())
    bits = 8 * stored / (1024 * 1024)
    assert bits <= 2.1, bits
    assert bits >= 2.0  # four values per byte, plus the scales: nothing is hidden elsewhere
    assert sum(p.numel() for p in layer.parameters()) == 0


def test_inputs_of_any_rank_and_dtype_and_a_clear_error_for_the_wrong_width():
    layer = _layer().to(torch.bfloat16).eval()
    x = torch.randn(2, 3, 300, dtype=torch.bfloat16)
    with torch.no_grad():
        out = layer(x)
        assert out.shape == (2, 3, 37) and out.dtype == torch.bfloat16
        assert torch.equal(out[1], layer(x[1]))  # per-token scales: rows do not see each other
    with pytest.raises(ValueError, match=r"BitLinear\(300 -> 37\) got an input with 299 features"):
        layer(torch.randn(2, 299, dtype=torch.bfloat16))


def test_from_linear_copies_weight_and_bias():
    linear = nn.Linear(64, 16)
    layer = BitLinear.from_linear(linear, BitQuantConfig(weight_granularity="per_channel"))
    assert torch.equal(layer.weight, linear.weight) and torch.equal(layer.bias, linear.bias)
    assert layer.training and layer.quant_config.weight_granularity == "per_channel"
    assert "deployed=False" in repr(layer)


def test_the_docs_example_runs(tmp_path, monkeypatch):
    """docs/bitlinear.md's example is runnable as written (train -> eval -> deploy -> save -> compile)."""
    from test_docs import docs_blocks

    (code,) = docs_blocks("bitlinear.md", "python checked")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "docs/bitlinear.md", "exec"), namespace)
    assert namespace["y"].shape == (1, 256)
    assert all(namespace["model"][i].is_deployed for i in (0, 2))
    assert set(torch.load(tmp_path / "bitnet.pt", weights_only=True)) == {
        f"{i}.{name}" for i in (0, 2) for name in ("qweight", "qweight_scale", "bias")
    }


def test_a_compiled_training_step_gives_the_eager_gradients():
    """Training mode is plain torch ops: quant_inductor compiles forward and backward like stock Inductor does."""
    torch.manual_seed(0)
    model = nn.Sequential(BitLinear(64, 32), nn.ReLU(), BitLinear(32, 8))
    x, target = torch.randn(16, 64), torch.randn(16, 8)

    def grads(fn):
        model.zero_grad()
        F.mse_loss(fn(x), target).backward()
        return [p.grad.clone() for p in model.parameters()]

    eager = grads(model)
    compiled = grads(torch.compile(model, backend="quant_inductor"))
    for a, b in zip(compiled, eager, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
