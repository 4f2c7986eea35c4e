"""Gradient-space Byzantine attacks (REFERENCE §3).

An attack receives the stack of the p gradients the workers really computed, the
indices of the Byzantine workers and a seeded generator, and returns a new stack in
which only the Byzantine rows differ. Omniscient attacks (ALIE, IPM) read the honest
rows, as in their papers.
"""

from __future__ import annotations

import math

import torch
from scipy.stats import norm


class GradientAttack:
    """Base class. ``kind`` tells the runner where the attack acts."""

    name = "attack"
    kind = "gradient"

    def forge(self, G: torch.Tensor, byz: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """The (len(byz), n) rows the Byzantine workers send."""
        raise NotImplementedError  # pragma: no cover

    def __call__(self, G: torch.Tensor, byz: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        if byz.numel() == 0:
            return G
        out = G.clone()
        out[byz] = self.forge(G, byz, gen).to(G.dtype)
        return out

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({params})"


def honest_rows(G: torch.Tensor, byz: torch.Tensor) -> torch.Tensor:
    mask = torch.ones(G.shape[0], dtype=torch.bool, device=G.device)
    mask[byz] = False
    return G[mask]


def _rand(shape, gen, G) -> torch.Tensor:
    """Uniform [0,1) drawn on the CPU generator (device-independent streams)."""
    return torch.rand(shape, generator=gen, dtype=torch.float32).to(G.device)


class UniformRandom(GradientAttack):
    """Every coordinate i.i.d. U[low, high) (default U[0,1): the seeds' silent-fault model)."""

    name = "uniform"

    def __init__(self, low: float = 0.0, high: float = 1.0):
        if not high > low:
            raise ValueError(f"uniform: need high > low, got low={low}, high={high}")
        self.low, self.high = float(low), float(high)

    def forge(self, G, byz, gen):
        return self.low + (self.high - self.low) * _rand((len(byz), G.shape[1]), gen, G)


class Scaled(GradientAttack):
    """−c·g: the worker's own gradient reversed and scaled (c = 10 as in the FA code;
    c = 1 is the plain sign flip that the literature also calls 'bit flip')."""

    name = "scaled"

    def __init__(self, c: float = 10.0):
        self.c = float(c)

    def forge(self, G, byz, gen):
        return -self.c * G[byz]


class Constant(GradientAttack):
    """Every coordinate equal to ``value`` (−1 in signSGD studies, −100 in DETOX/DRACO)."""

    name = "constant"

    def __init__(self, value: float = -1.0):
        self.value = float(value)

    def forge(self, G, byz, gen):
        return torch.full((len(byz), G.shape[1]), self.value, dtype=G.dtype, device=G.device)


def alie_z(p: int, f: int) -> float:
    """z = Φ⁻¹((p−f−s)/(p−f)) with s = ⌊p/2+1⌋ − f (Baruch et al. 2019); 0.21 at p=15, f=3."""
    s = math.floor(p / 2 + 1) - f
    return float(norm.ppf((p - f - s) / (p - f)))


class ALIE(GradientAttack):
    """A Little Is Enough: μ + z·σ of the honest coordinates; z defaults to :func:`alie_z`."""

    name = "alie"

    def __init__(self, z: float | None = None):
        self.z = z

    def forge(self, G, byz, gen):
        H = honest_rows(G, byz)
        z = self.z if self.z is not None else alie_z(G.shape[0], len(byz))
        sigma = H.std(dim=0, unbiased=False) if H.shape[0] > 1 else torch.zeros_like(H[0])
        return (H.mean(dim=0) + z * sigma).expand(len(byz), -1)


class IPM(GradientAttack):
    """Inner-product manipulation: −ε·mean(honest) (Xie et al. 2020), ε = 0.1."""

    name = "ipm"

    def __init__(self, eps: float = 0.1):
        self.eps = float(eps)

    def forge(self, G, byz, gen):
        return (-self.eps * honest_rows(G, byz).mean(dim=0)).expand(len(byz), -1)


class BitFlip(GradientAttack):
    """Hardware bit flips: each bit of each float32 word flips with probability ``prob``.
    May produce NaN/Inf, which the parameter server must handle (see host.ps)."""

    name = "bitflip"

    def __init__(self, prob: float = 1e-3):
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"bitflip: prob must be in [0, 1], got {prob}")
        self.prob = float(prob)

    def forge(self, G, byz, gen):
        words = G[byz].to(torch.float32).cpu().contiguous().view(torch.int32)
        flips = torch.rand((*words.shape, 32), generator=gen) < self.prob
        weights = (torch.ones(32, dtype=torch.int64) << torch.arange(32)).to(torch.int64)
        mask = (flips.to(torch.int64) * weights).sum(dim=-1)
        mask = torch.where(mask >= 2**31, mask - 2**32, mask).to(torch.int32)
        return (words ^ mask).view(torch.float32).to(G.device)


class Drop(GradientAttack):
    """Lose a fraction of the coordinates (set them to 0). This really drops: the public
    FA code's version of this attack was a no-op (REFERENCE §1.3)."""

    name = "drop"

    def __init__(self, fraction: float = 0.1):
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"drop: fraction must be in [0, 1], got {fraction}")
        self.fraction = float(fraction)

    def forge(self, G, byz, gen):
        keep = _rand((len(byz), G.shape[1]), gen, G) >= self.fraction
        return G[byz] * keep
