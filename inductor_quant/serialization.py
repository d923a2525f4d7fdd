"""safetensors save / load of state dicts that hold quantized weight subclasses.

safetensors stores plain tensors only, so each quantized weight is written as its inner tensors under
``"<name>#<field>"`` keys, and the header's metadata records, per weight, its class, float dtype, orientation and
attributes. Files hold each weight's canonical (device-neutral) form; loading rebuilds the subclasses exactly (bit
for bit), in the layout the loading device's kernels read; plain tensors pass through unchanged.
Needs the ``safetensors`` package (``pip install safetensors``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import torch
from torch import nn

from .tensor import Int4WeightA8Tensor, Int4WeightTensor, Int8WeightTensor, QuantizedWeightTensor

METADATA_KEY = "inductor_quant"
_FIELD_SEP = "#"
_CLASSES = {cls.__name__: cls for cls in (Int8WeightTensor, Int4WeightTensor, Int4WeightA8Tensor)}


def _safetensors():
    try:
        import safetensors.torch
    except ImportError as e:
        raise ImportError("save_safetensors / load_safetensors need the safetensors package") from e
    return safetensors.torch


def save_safetensors(
    state: nn.Module | Mapping[str, torch.Tensor],
    path: str | os.PathLike,
    metadata: dict[str, str] | None = None,
) -> None:
    """Write a model's ``state_dict()`` (or a state dict) to a safetensors file, quantized weights included."""
    state_dict = state.state_dict() if isinstance(state, nn.Module) else state
    if metadata and METADATA_KEY in metadata:
        raise ValueError(f"metadata key {METADATA_KEY!r} is reserved by inductor_quant")
    flat: dict[str, torch.Tensor] = {}
    described: dict[str, dict] = {}
    for name, t in state_dict.items():
        if _FIELD_SEP in name:
            raise ValueError(f"state dict key {name!r} contains {_FIELD_SEP!r}, which marks quantized fields")
        if isinstance(t, QuantizedWeightTensor):
            t = t.canonical()  # files hold the device-neutral form; loading into a model converts back
            for field, inner in zip(t.tensor_data_names, t._tensors(), strict=True):
                flat[f"{name}{_FIELD_SEP}{field}"] = inner.detach().contiguous()
            described[name] = {
                "class": type(t).__name__,
                "dtype": str(t.dtype).removeprefix("torch."),
                "transposed": t.transposed,
                "attrs": t._attrs(),
            }
        else:
            flat[name] = t.detach().contiguous()
    _safetensors().save_file(
        flat, os.fspath(path), metadata={**(metadata or {}), METADATA_KEY: json.dumps(described)}
    )


def load_safetensors(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Read a file written by ``save_safetensors``: a state dict with the quantized weights rebuilt.

    Load it into a quantized model with ``model.load_state_dict(sd)``, or into a float model's structure with
    ``model.load_state_dict(sd, assign=True)``.
    """
    st = _safetensors()
    from safetensors import safe_open

    with safe_open(os.fspath(path), framework="pt") as f:
        described = json.loads((f.metadata() or {}).get(METADATA_KEY, "{}"))
    flat = st.load_file(os.fspath(path), device=str(device))
    state_dict: dict[str, torch.Tensor] = {}
    for name, info in described.items():
        cls = _CLASSES.get(info["class"])
        if cls is None:
            raise ValueError(f"{path}: {name!r} has unknown quantized class {info['class']!r}")
        inner = [flat.pop(f"{name}{_FIELD_SEP}{field}") for field in cls.tensor_data_names]
        state_dict[name] = cls(
            *inner, dtype=getattr(torch, info["dtype"]), transposed=info["transposed"], **info["attrs"]
        ).with_kernel_layout()
    stray = [k for k in flat if _FIELD_SEP in k]
    if stray:
        raise ValueError(f"{path}: quantized fields without a description in the header: {stray[:5]}")
    state_dict.update(flat)
    return state_dict
