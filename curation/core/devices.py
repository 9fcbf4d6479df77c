"""Which torch device and dtype a model runs on: one rule for every stage that loads a model.

Kept out of the stages (repaint, recaption, MSP) so none of them imports another for it.
"""

from __future__ import annotations

from collections.abc import Sequence
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


def visible_cuda_devices() -> list[str]:
    """The CUDA devices this process may use ('cuda:0', ...), as `CUDA_VISIBLE_DEVICES` numbers them.

    Counting does not create a CUDA context, so a driver can ask before it spawns its workers.
    """
    import torch

    return [f"cuda:{index}" for index in range(torch.cuda.device_count())]


def worker_devices(device: str, workers: int, visible: Sequence[str]) -> list[str]:
    """The device each of `workers` local worker processes loads its models on.

    'auto' or a bare 'cuda' spreads the workers round-robin over the visible GPUs (two workers on one
    GPU when there are more workers than GPUs), so four workers on two GPUs are not four copies of the
    model on `cuda:0`; 'auto' without a GPU is the CPU. A named device ('cuda:1', 'cpu') is every
    worker's: the user pinned it.
    """
    if device in ("auto", "", "cuda") and visible:
        return [visible[index % len(visible)] for index in range(workers)]
    if device in ("auto", ""):
        return ["cpu"] * workers
    return [device] * workers
