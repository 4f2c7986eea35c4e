"""Centered clipping (Karimireddy et al. 2021; REFERENCE §2)."""

from __future__ import annotations

import torch

from innet.aggregators.base import Aggregator


class CenteredClipping(Aggregator):
    """v ← v + (1/p) Σ (g_i − v)·min(1, τ/‖g_i − v‖), ``iters`` times, from the previous
    output (zero at the first call). The rule is stateful: :meth:`reset` forgets v."""

    name = "centered_clipping"

    def __init__(self, f: int = 0, tau: float = 1.0, iters: int = 3):
        super().__init__(f)
        if tau <= 0:
            raise ValueError(f"{self.name}: tau must be > 0, got {tau!r}")
        if iters < 1:
            raise ValueError(f"{self.name}: iters must be >= 1, got {iters!r}")
        self.tau, self.iters = float(tau), int(iters)
        self._v: torch.Tensor | None = None

    def reset(self) -> None:
        self._v = None

    def aggregate(self, G: torch.Tensor) -> torch.Tensor:
        v = self._v
        if v is None or v.shape != G.shape[1:] or v.device != G.device or v.dtype != G.dtype:
            v = torch.zeros(G.shape[1], dtype=G.dtype, device=G.device)
        for _ in range(self.iters):
            diff = G - v
            norms = torch.linalg.vector_norm(diff, dim=1, dtype=torch.float64)
            scale = torch.clamp(self.tau / torch.clamp(norms, min=1e-300), max=1.0)
            v = v + (scale.to(G.dtype)[:, None] * diff).mean(dim=0)
        self._v = v.detach().clone()
        return v
