"""Device choice: CUDA when present, CPU otherwise."""

from __future__ import annotations

import torch


def pick_device(requested: str = "auto") -> torch.device:
    """Return the torch device for ``requested`` ('auto', 'cpu', 'cuda', 'cuda:N')."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={requested!r} asked for CUDA, but torch sees no CUDA device")
    return device
