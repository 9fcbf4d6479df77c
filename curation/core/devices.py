"""Which torch device and dtype a model runs on, and which onnxruntime providers an ONNX model gets: one
rule for every stage that loads a model.

Kept out of the stages (repaint, recaption, MSP) so none of them imports another for it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import cache
from typing import Any

from curation.core.errors import CurateError

_log = logging.getLogger(__name__)
CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"


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


def onnx_providers(device: str, setting: str) -> list[Any]:
    """The onnxruntime execution providers a model runs on for `device` (as `torch_device` reads it).

    The PyPI `onnxruntime` wheel is CPU-only; its GPU build is `onnxruntime-gpu` (`pip install
    'curate[gpu]'`). A CUDA device the user named without a CUDA provider is an error, not a silent CPU
    run; 'auto' on a machine with a GPU but the CPU wheel runs on the CPU and says so once.

    Raises:
        CurateError: `setting` names a CUDA device and this onnxruntime has no CUDA provider, or a
            device onnxruntime cannot use.
    """
    import onnxruntime

    target = torch_device(device)
    if target == "cpu":
        return [CPU_PROVIDER]
    available = onnxruntime.get_available_providers()
    if not target.startswith("cuda"):
        raise CurateError(f"{setting} = {device!r}: onnxruntime models run on 'cpu' or 'cuda[:N]'")
    if CUDA_PROVIDER not in available:
        why = f"this onnxruntime has no CUDA provider (it has {', '.join(available)})"
        if device in ("", "auto"):
            _say_once(f"{setting} = 'auto' found a GPU, but {why}: running on the CPU; pip install 'curate[gpu]' to use it")
            return [CPU_PROVIDER]
        raise CurateError(
            f"{setting} = {device!r}, but {why}: install the GPU build (pip uninstall onnxruntime; "
            f"pip install 'curate[gpu]') or set {setting} = 'cpu'"
        )
    index = int(target.partition(":")[2] or 0)
    return [(CUDA_PROVIDER, {"device_id": index}), CPU_PROVIDER]


@cache
def _say_once(message: str) -> None:
    _log.warning(message)
