"""Device choice: CUDA when present, CPU otherwise."""

from __future__ import annotations

import torch

DEVICE_FORMS = ("auto", "cpu", "cuda", "cuda:N")


def valid_device_name(requested: str) -> bool:
    """Is ``requested`` one of :data:`DEVICE_FORMS` (whether or not it exists here)?"""
    return requested in ("auto", "cpu", "cuda") or (
        requested.startswith("cuda:") and requested[5:].isdigit())


def pick_device(requested: str = "auto") -> torch.device:
    """Return the torch device for ``requested`` ('auto', 'cpu', 'cuda', 'cuda:N')."""
    if not valid_device_name(requested):
        raise ValueError(f"device: {requested!r} is not one of {', '.join(DEVICE_FORMS)}")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device: {requested!r} asks for CUDA, but torch sees no CUDA "
                             "device here; use auto or cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device: {requested!r}: only {torch.cuda.device_count()} CUDA "
                             "devices here")
    return device
