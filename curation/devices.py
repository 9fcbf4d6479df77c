"""Which torch device and dtype a model runs on: one rule for every stage that loads a model.

Kept out of the stages (repaint, recaption, MSP) so none of them imports another for it.
"""

from __future__ import annotations

from typing import Any


def torch_device(device: str | None = None) -> str:
    """The device named, or CUDA when present for 'auto', '' or None, else CPU."""
    import torch

    if device and device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_device(device: str, dtype: str) -> tuple[str, Any]:
    """'auto' means CUDA when present, and fp16 there (fp32 on CPU, where fp16 is slow or unsupported)."""
    import torch

    device = torch_device(device)
    if dtype == "auto":
        dtype = "float16" if device.startswith("cuda") else "float32"
    return device, getattr(torch, dtype)
