"""Where and in which precision the trainer computes: device resolution and mixed precision.

The rule is the one torch users expect (torch.amp): parameters and optimizer state stay in float32 ("master
weights"), the forward runs under ``torch.autocast`` in the compute dtype, and log-softmax and the importance ratio
are taken in float32 (``softgate.logprobs`` upcasts per chunk, ``softgate.losses`` takes the log-ratio in float32).
Pure low-precision parameters are an explicit opt-out (``optim.master_weights: false``): AdamW's update of a bf16
parameter at lr 1e-6 mostly rounds back to the same value.

    device = resolve_device("auto")                       # cuda if available, else mps, else cpu
    with autocast(device, "bfloat16"):                    # bf16 autocast also runs on CPU
        logits = model(input_ids).logits
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N", "mps")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def check_device_name(name: str) -> None:
    """Raise ValueError for a spelling that is not one of ``DEVICE_CHOICES`` (no hardware is queried)."""
    if not isinstance(name, str) or not _DEVICE.match(name):
        raise ValueError(f"unknown device {name!r}; choose one of {', '.join(DEVICE_CHOICES)}")


def resolve_device(name: str = "auto") -> torch.device:
    """The torch device for a config value: ``auto`` picks cuda, then mps, then cpu.

    An explicit accelerator that this machine does not have is an error naming what is available, never a silent
    fall-back to the CPU.
    """
    check_device_name(name)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"model.device={name!r}: CUDA is not available on this machine "
                             f"(available: {', '.join(available_devices())})")
        index = device.index if device.index is not None else torch.cuda.current_device()
        if index >= torch.cuda.device_count():
            raise ValueError(f"model.device={name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        return torch.device("cuda", index)
    if device.type == "mps" and not _mps_available():
        raise ValueError(f"model.device='mps': MPS is not available (available: {', '.join(available_devices())})")
    return device


def available_devices() -> list[str]:
    found = ["cpu"]
    if torch.cuda.is_available():
        found += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if _mps_available():
        found.append("mps")
    return found


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def torch_dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; choose one of {', '.join(DTYPES)}") from None


def check_compute_dtype(device: torch.device, dtype: str) -> None:
    """float16 autocast needs an accelerator (CPU autocast supports bfloat16 only); bfloat16 on a CUDA device
    without bf16 support is refused rather than emulated slowly."""
    if dtype == "float16" and device.type == "cpu":
        raise ValueError("model.compute_dtype='float16' needs a GPU; on CPU use bfloat16 or float32")
    if dtype == "bfloat16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"model.compute_dtype='bfloat16': {torch.cuda.get_device_name(device)} has no bfloat16 "
                         "support; use float16 or float32")


@contextlib.contextmanager
def autocast(device: torch.device, dtype: str) -> Iterator[None]:
    """``torch.autocast`` in ``dtype`` on ``device``; a no-op for float32 (no autocast region at all, so float32
    runs are bit-identical to code that never heard of autocast)."""
    if dtype == "float32":
        yield
        return
    with torch.autocast(device_type=device.type, dtype=torch_dtype(dtype)):
        yield


def needs_grad_scaler(device: torch.device, dtype: str, master_weights: bool) -> bool:
    """float16 gradients underflow without loss scaling (bfloat16 has float32's range and needs none)."""
    return dtype == "float16" and master_weights and device.type == "cuda"
