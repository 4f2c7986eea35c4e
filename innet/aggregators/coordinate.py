"""Coordinate-wise rules: median, trimmed mean, MeaMed, Phocas (REFERENCE §2).

Each needs the p values of every coordinate in order. On the CPU a sorting network
runs over blocks of coordinates in one pass (``sorting_network``, which also checks
finiteness); on CUDA a sort along dim 0 of the (p, n) stack is fast and is used as is.
Both follow the same conventions, so a rule's output does not depend on the device
beyond the rounding of its means:

* even p: the median is the mean of the two middle values;
* the k values closest to a centre form a window of the sorted column; on equal
  distances the smaller value is kept (a rule of the values, not of the worker order);
* means accumulate in float64 and are rounded once to G's dtype.
"""

from __future__ import annotations

import torch

from innet.aggregators import sorting_network as network
from innet.aggregators.base import Aggregator, Cost


def _on_cpu(G: torch.Tensor) -> bool:
    return G.device.type == "cpu" and G.dtype in (torch.float32, torch.float64)


def _numpy(G: torch.Tensor):
    return G.detach().contiguous().numpy()


def _sorted(G: torch.Tensor) -> torch.Tensor:
    return torch.sort(G, dim=0).values


def _median_of_sorted(S: torch.Tensor) -> torch.Tensor:
    p = S.shape[0]
    lo, hi = (p - 1) // 2, p // 2
    return S[lo].clone() if lo == hi else 0.5 * (S[lo] + S[hi])


def _trimmed_of_sorted(S: torch.Tensor, b: int) -> torch.Tensor:
    p = S.shape[0]
    return (S[b : p - b].sum(dim=0, dtype=torch.float64) / (p - 2 * b)).to(S.dtype)


def _window_mean_of_sorted(S: torch.Tensor, centre: torch.Tensor, k: int) -> torch.Tensor:
    """Mean of the k sorted values closest to ``centre``: the window S[s : s + k] with
    s = #{i < p − k : centre − S[i] > S[i+k] − centre} (ties keep the smaller values)."""
    p = S.shape[0]
    start = ((centre - S[: p - k]) > (S[k:] - centre)).sum(dim=0)
    rows = start + torch.arange(k, device=S.device)[:, None]
    window = torch.gather(S, 0, rows)
    return (window.sum(dim=0, dtype=torch.float64) / k).to(S.dtype)


def coordinate_median(G: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
    """Per-coordinate median of G (or of G[rows]); for an even count the average of
    the two middle values."""
    if _on_cpu(G):
        picked = None if rows is None else rows.numpy()
        return torch.from_numpy(network.median(_numpy(G), picked))
    return _median_of_sorted(_sorted(G if rows is None else G[rows]))


def trimmed_mean(G: torch.Tensor, b: int) -> torch.Tensor:
    """Per coordinate, drop the b largest and b smallest values and average the rest."""
    if _on_cpu(G):
        return torch.from_numpy(network.trimmed_mean(_numpy(G), b))
    return _trimmed_of_sorted(_sorted(G), b)


def mean_around_median(G: torch.Tensor, k: int, rows: torch.Tensor | None = None
                       ) -> torch.Tensor:
    """Per coordinate, the mean of the k values of G (or of G[rows]) closest to their
    median."""
    if _on_cpu(G):
        picked = None if rows is None else rows.numpy()
        return torch.from_numpy(network.mean_around_median(_numpy(G), k, picked))
    S = _sorted(G if rows is None else G[rows])
    return _window_mean_of_sorted(S, _median_of_sorted(S), k)


def mean_around_trimmed_mean(G: torch.Tensor, b: int, k: int) -> torch.Tensor:
    """Per coordinate, the mean of the k values closest to the b-trimmed mean."""
    if _on_cpu(G):
        return torch.from_numpy(network.mean_around_trimmed_mean(_numpy(G), b, k))
    S = _sorted(G)
    return _window_mean_of_sorted(S, _trimmed_of_sorted(S, b), k)


class _CoordinateRule(Aggregator):
    finite_check_fused = True  # the CPU kernel reads every value's exponent bits
    #: operations per coordinate after the sort, as a function of (p, f): the
    #: window search and the mean of the kept values
    post_ops = staticmethod(lambda p, f: 1.0)

    def cost(self, p: int, n: int) -> Cost:
        sort = network.sort_cost(p, n)
        return Cost(sort.bytes, sort.flops + self.post_ops(p, self.f) * n, sort.launches)


class Median(_CoordinateRule):
    """Coordinate-wise median (Yin et al. 2018). Even p: mean of the two middle values."""

    name = "median"

    def aggregate(self, G: torch.Tensor) -> torch.Tensor:
        return coordinate_median(G)


class TrimmedMean(_CoordinateRule):
    """Coordinate-wise trimmed mean with b = f (Yin et al. 2018); needs p > 2f."""

    name = "trimmed_mean"
    requirement = ("p >= 2f+1", lambda p, f: p >= 2 * f + 1)
    post_ops = staticmethod(lambda p, f: p - 2.0 * f)

    def aggregate(self, G: torch.Tensor) -> torch.Tensor:
        return trimmed_mean(G, self.f)


class MeaMed(_CoordinateRule):
    """Mean-around-median (Xie et al. 2018): per coordinate, mean of the p−f values
    closest to the coordinate median. Needs p > f."""

    name = "meamed"
    requirement = ("p >= f+1", lambda p, f: p >= f + 1)
    post_ops = staticmethod(lambda p, f: 2.0 * f + 2.0 * (p - f))  # slide, then sum

    def aggregate(self, G: torch.Tensor) -> torch.Tensor:
        return mean_around_median(G, G.shape[0] - self.f)


class Phocas(_CoordinateRule):
    """Phocas (Xie et al. 2018): per coordinate, mean of the p−f values closest to the
    trimmed mean (b = f). Needs p > 2f."""

    name = "phocas"
    requirement = ("p >= 2f+1", lambda p, f: p >= 2 * f + 1)
    post_ops = staticmethod(lambda p, f: (p - 2.0 * f) + 2.0 * f + 2.0 * (p - f))

    def aggregate(self, G: torch.Tensor) -> torch.Tensor:
        return mean_around_trimmed_mean(G, self.f, G.shape[0] - self.f)
