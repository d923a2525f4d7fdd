"""The main job (README's first command) on the tiny model: it runs, checks SQNR, and prints its table."""

from __future__ import annotations

import pytest
import torch

from inductor_quant.demo.__main__ import main
from inductor_quant.demo.model import build


def test_demo_prints_the_table_and_passes_its_sqnr_check(capsys):
    assert main(["--size", "tiny", "--steps", "2"]) == 0
    out = capsys.readouterr().out
    for row in (
        "eager float",
        "stock Inductor, float",
        "stock Inductor, int8 (gpt-fast form)",
        "quant_inductor, int8",
        "quant_inductor, int4 g128",
        "quant_inductor, W4A8 g128",
    ):
        assert row in out
    assert "SQNR vs the float model: quant_inductor int8" in out and "int4" in out and "W4A8" in out


def test_demo_rejects_a_bad_m():
    with pytest.raises(SystemExit):
        main(["--size", "tiny", "--m", "0"])


def test_model_sizes_are_named_in_errors():
    with pytest.raises(ValueError, match="'huge'"):
        build("huge")


def test_built_in_model_is_deterministic_and_causal():
    a, b = build("tiny", torch.float32), build("tiny", torch.float32)
    x = torch.randn(1, 5, 256)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), atol=0, rtol=0)
        # causal: the first token's output does not depend on later tokens
        torch.testing.assert_close(a(x)[:, :1], a(x[:, :1]), atol=1e-5, rtol=1e-5)
