"""Data-space Byzantines: the worker computes an honest gradient on corrupted images
(REFERENCE §3). Images are (B, C, H, W) tensors in [0, 1].

* Lotka–Volterra: every pixel position (x, y), mapped into [0.1, 2]², flows for time
  ``t`` under ẋ = αx − βxy, ẏ = δxy − γy (α, β, γ, δ = 2/3, 4/3, −1, −1), integrated
  once per image size with scipy's LSODA; the image is resampled at the flowed
  positions (a smooth nonlinear warp).
* Arnold's cat map: (x, y) → ((2x + y) mod N, (x + y) mod N) on the N×N pixel grid,
  ``iterations`` times: a chaotic pixel permutation.
Both add Gaussian noise of standard deviation ``noise``.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from scipy.integrate import solve_ivp

LV_PARAMS = (2 / 3, 4 / 3, -1.0, -1.0)  # α, β, γ, δ


@lru_cache(maxsize=8)
def lotka_volterra_grid(height: int, width: int, t: float) -> torch.Tensor:
    """Sampling grid (1, H, W, 2) in [-1, 1] coordinates for torch's grid_sample."""
    alpha, beta, gamma, delta = LV_PARAMS
    lo, hi = 0.1, 2.0
    ys, xs = np.meshgrid(np.linspace(lo, hi, height), np.linspace(lo, hi, width), indexing="ij")
    state0 = np.concatenate([xs.ravel(), ys.ravel()])
    k = xs.size

    def rhs(_, s):
        x, y = s[:k], s[k:]
        return np.concatenate([alpha * x - beta * x * y, delta * x * y - gamma * y])

    sol = solve_ivp(rhs, (0.0, t), state0, method="LSODA", rtol=1e-8, atol=1e-10)
    if not sol.success:  # pragma: no cover - LSODA on this smooth system does not fail
        raise RuntimeError(f"Lotka-Volterra integration failed: {sol.message}")
    x, y = sol.y[:k, -1], sol.y[k:, -1]
    to_unit = lambda v: 2.0 * (v - lo) / (hi - lo) - 1.0  # noqa: E731
    grid = np.stack([to_unit(x), to_unit(y)], axis=-1).reshape(1, height, width, 2)
    return torch.from_numpy(grid).to(torch.float32)


@lru_cache(maxsize=8)
def cat_map_index(n: int, iterations: int) -> torch.Tensor:
    """Flat source index of every target pixel after ``iterations`` cat-map steps."""
    y, x = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    for _ in range(iterations):
        x, y = (2 * x + y) % n, (x + y) % n
    src = np.empty(n * n, dtype=np.int64)
    src[(y * n + x).ravel()] = np.arange(n * n)
    return torch.from_numpy(src)


class DataAttack:
    """Base class of the attacks that corrupt a Byzantine worker's images."""

    name = "data"
    kind = "data"

    def __init__(self, noise: float = 0.1):
        if noise < 0:
            raise ValueError(f"{self.name}: noise must be >= 0, got {noise}")
        self.noise = float(noise)

    def transform(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError  # pragma: no cover

    def __call__(self, images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        out = self.transform(images)
        if self.noise:
            noise = torch.randn(out.shape, generator=gen, dtype=torch.float32)
            out = out + self.noise * noise.to(out.device, out.dtype)
        return out

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({params})"


class LotkaVolterra(DataAttack):
    name = "lotka_volterra"

    def __init__(self, t: float = 0.5, noise: float = 0.1):
        super().__init__(noise)
        if t <= 0:
            raise ValueError(f"lotka_volterra: t must be > 0, got {t}")
        self.t = float(t)

    def transform(self, images):
        B, _, H, W = images.shape
        grid = lotka_volterra_grid(H, W, self.t).to(images.device, images.dtype)
        return torch.nn.functional.grid_sample(
            images, grid.expand(B, -1, -1, -1), mode="bilinear", align_corners=True
        )


class CatMap(DataAttack):
    name = "cat_map"

    def __init__(self, iterations: int = 1, noise: float = 0.1):
        super().__init__(noise)
        if iterations < 1:
            raise ValueError(f"cat_map: iterations must be >= 1, got {iterations}")
        self.iterations = int(iterations)

    def transform(self, images):
        B, C, H, W = images.shape
        if H != W:
            raise ValueError(f"cat_map needs square images, got {H}x{W}")
        src = cat_map_index(H, self.iterations).to(images.device)
        return images.reshape(B, C, H * W)[:, :, src].reshape(B, C, H, W)


class GaussianNoise(DataAttack):
    """Only the Gaussian noise."""

    name = "gaussian"

    def __init__(self, noise: float = 0.5):
        super().__init__(noise)

    def transform(self, images):
        return images
