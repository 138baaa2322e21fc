"""Where and in what arithmetic a network runs: the one device choice and the one AMP/channels-last rule.

Training (train/trainer.py), inference (predictor.py), DDP (distributed.py), the recipes and compare's feature cache
all ask here, so that ``--device auto`` and ``--amp auto`` mean the same thing everywhere.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from .errors import GapvisionError



def choose_device(name: str | torch.device | None = "auto") -> torch.device:
    """``auto`` (or None): CUDA when present (under torchrun the GPU that :func:`distributed.setup` selected), else
    the CPU; ``cpu``, ``cuda``, ``cuda:N`` as given, with a one-line error when CUDA is missing."""
    if isinstance(name, torch.device):
        name = str(name)
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise GapvisionError(f"--device {name}: not a device; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise GapvisionError(f"--device {name}: CUDA is not available on this machine; use --device cpu or auto")
    return dev


def uses_cuda(name: str | torch.device | None = "auto") -> bool:
    """Whether ``--device name`` resolves to CUDA on this machine (no error when it does not)."""
    text = "auto" if name is None else str(name)
    return not text.startswith("cpu") and torch.cuda.is_available()


@dataclass(frozen=True)
class Precision:
    """Autocast (and its dtype) and the channels-last memory format for one device."""

    amp: bool = False
    dtype: torch.dtype = torch.bfloat16
    channels_last: bool = False
    device_type: str = "cpu"

    def autocast(self) -> contextlib.AbstractContextManager:
        """The autocast context of this precision (a no-op without AMP)."""
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def place(self, x: torch.Tensor, device: torch.device) -> torch.Tensor:
        """A batch on ``device`` in this memory format."""
        x = x.to(device, non_blocking=True)
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x


def resolve_precision(device: torch.device, amp: str = "auto", channels_last: str = "auto") -> Precision:
    """``--amp`` / ``--channels-last`` (auto|on|off; auto = on for CUDA) on ``device``: bf16 autocast unless the GPU
    lacks bf16 (then fp16)."""
    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if (not cuda or torch.cuda.is_bf16_supported()) else torch.float16
    return Precision(amp=amp == "on" or (amp == "auto" and cuda), dtype=dtype,
                     channels_last=channels_last == "on" or (channels_last == "auto" and cuda),
                     device_type=device.type)
