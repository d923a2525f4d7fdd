"""The epilogues of the package's templates, written once (stage 6 of the pipeline): the CPP GEMV templates and
the Triton templates both apply them, each through its own ``ops`` (Inductor's ``V.ops`` for Triton, expression
strings for the CPP kernels)."""

from __future__ import annotations


def scale_bias(ops, acc, scale=None, bias=None):
    """``acc * scale + bias`` in fp32: ``acc`` is the fp32 dot product of the activations with the integer weight,
    ``scale`` the weight's per-output-channel scale (``None`` where the kernel already applied per-group scales),
    ``bias`` the layer's bias. The caller rounds the result once to the output dtype."""
    out = acc if scale is None else ops.mul(acc, scale)
    return out if bias is None else ops.add(out, bias)


class SourceExpr:
    """``ops`` that build an epilogue's expression as source text, the same in C++ and in Python / Triton (the CPP
    templates render it; the tests' standalone Triton kernels too)."""

    @staticmethod
    def mul(a: str, b: str) -> str:
        return f"{a} * {b}"

    @staticmethod
    def add(a: str, b: str) -> str:
        return f"{a} + {b}"


def cpp_scale_bias(acc: str, scale: str | None = None, bias: str | None = None) -> str:
    """The C++ expression of ``scale_bias`` for a CPP template. Operands are C++ expressions, each cast to float;
    a compound ``acc`` must come parenthesized (the expression is built by plain concatenation)."""
    as_float = "static_cast<float>({})".format
    return scale_bias(
        SourceExpr, acc, None if scale is None else as_float(scale), None if bias is None else as_float(bias)
    )


def triton_scale_bias(has_scale: bool, has_bias: bool):
    """The ``epilogue_fn`` of a Triton template whose suffix inputs are (scale, bias) as present: Inductor loads
    each at the output index (in fp32) and passes them after the accumulator."""
    from torch._inductor.virtualized import V

    def epilogue(acc, *suffix):
        scale = suffix[0] if has_scale else None
        bias = suffix[-1] if has_bias else None
        return scale_bias(V.ops, acc, scale, bias)

    return epilogue
