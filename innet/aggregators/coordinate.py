"""Coordinate-wise rules: median, trimmed mean, MeaMed, Phocas (REFERENCE §2).

All of them sort or rank the p values of every coordinate at once (a sort along
dim 0 of the (p, n) stack); nothing loops over coordinates.
"""

from __future__ import annotations

import torch

from innet.aggregators.base import Aggregator


def coordinate_median(G: torch.Tensor) -> torch.Tensor:
    """Per-coordinate median; for even p the average of the two middle values."""
    p = G.shape[0]
    S = torch.sort(G, dim=0).values
    lo, hi = (p - 1) // 2, p // 2
    if lo == hi:
        return S[lo].clone()
    return 0.5 * (S[lo] + S[hi])


def trimmed_mean(G: torch.Tensor, b: int) -> torch.Tensor:
    """Per coordinate, drop the b largest and b smallest values and average the rest."""
    p = G.shape[0]
    S = torch.sort(G, dim=0).values
    return S[b : p - b].mean(dim=0)


def mean_of_closest(G: torch.Tensor, centre: torch.Tensor, k: int) -> torch.Tensor:
    """Per coordinate, the mean of the k values closest to ``centre`` (shape (n,))."""
    distance = (G - centre).abs()
    idx = torch.topk(distance, k, dim=0, largest=False, sorted=False).indices
    return torch.gather(G, 0, idx).mean(dim=0)


class Median(Aggregator):
    """Coordinate-wise median (Yin et al. 2018). Even p: mean of the two middle values."""

    name = "median"

    def aggregate(self, G: torch.Tensor) -> torch.Tensor:
        return coordinate_median(G)


class TrimmedMean(Aggregator):
    """Coordinate-wise trimmed mean with b = f (Yin et al. 2018); needs p > 2f."""

    name = "trimmed_mean"
    requirement = ("p >= 2f+1", lambda p, f: p >= 2 * f + 1)

    def aggregate(self, G: torch.Tensor) -> torch.Tensor:
        return trimmed_mean(G, self.f)


class MeaMed(Aggregator):
    """Mean-around-median (Xie et al. 2018): per coordinate, mean of the p−f values
    closest to the coordinate median. Needs p > f."""

    name = "meamed"
    requirement = ("p >= f+1", lambda p, f: p >= f + 1)

    def aggregate(self, G: torch.Tensor) -> torch.Tensor:
        return mean_of_closest(G, coordinate_median(G), G.shape[0] - self.f)


class Phocas(Aggregator):
    """Phocas (Xie et al. 2018): per coordinate, mean of the p−f values closest to the
    trimmed mean (b = f). Needs p > 2f."""

    name = "phocas"
    requirement = ("p >= 2f+1", lambda p, f: p >= 2 * f + 1)

    def aggregate(self, G: torch.Tensor) -> torch.Tensor:
        return mean_of_closest(G, trimmed_mean(G, self.f), G.shape[0] - self.f)
