"""Krum, Multi-Krum and Bulyan (Blanchard et al. 2017; El Mhamdi et al. 2018; REFERENCE §2).

Distances come from the p×p Gram matrix (one pass over G, which also finds non-finite
rows), the neighbour sums from a sort of each row of the distance matrix; there is no
loop over pairs. The outputs read G once more: Multi-Krum's mean of the selected rows
is one GEMV with weights 1/m, Bulyan's coordinate phase one sorting-network pass over
the selected rows, neither copies them.
"""

from __future__ import annotations

import torch

from innet.aggregators import sorting_network as network
from innet.aggregators.base import Aggregator, Cost, PreconditionError, gram_cost, passes
from innet.aggregators.coordinate import mean_around_median
from innet.aggregators.gram import gram, squared_distances


def krum_scores(D: torch.Tensor, f: int) -> torch.Tensor:
    """score(i) = Σ of the p−f−2 smallest squared distances from i to the others."""
    p = D.shape[0]
    neighbours = p - f - 2
    if neighbours < 1:
        raise PreconditionError(f"krum needs p >= f+3 among the candidates (got p={p}, f={f})")
    # the diagonal is 0 and sorts first: skip it
    return torch.sort(D, dim=1).values[:, 1 : 1 + neighbours].sum(dim=1)


def krum_order(D: torch.Tensor, f: int) -> torch.Tensor:
    """Rows by increasing Krum score. Ties (a mutual-nearest pair has equal scores when
    one neighbour counts) are broken by the total distance to all rows, so the choice
    does not depend on the order of the workers."""
    by_total = torch.argsort(D.sum(dim=1), stable=True)
    return by_total[torch.argsort(krum_scores(D, f)[by_total], stable=True)]


def multi_krum_select(D: torch.Tensor, f: int, m: int) -> torch.Tensor:
    """Indices of the m rows with the lowest Krum scores."""
    return krum_order(D, f)[:m]


class MultiKrum(Aggregator):
    """Multi-Krum: average the m rows with the lowest Krum score.

    m defaults to p−f−2 (as the FA experiments use); m = 1 is Krum. Needs p ≥ 2f+3.
    ``squared=False, neighbours='p-f-1'`` is not offered: the paper's definition is used.
    """

    name = "multi_krum"
    finite_check_fused = True  # gram() raises for non-finite rows
    requirement = ("p >= 2f+3", lambda p, f: p >= 2 * f + 3)

    def __init__(self, f: int = 0, m: int | None = None):
        super().__init__(f)
        if m is not None and (not isinstance(m, int) or m < 1):
            raise ValueError(f"{self.name}: m must be a positive integer, got {m!r}")
        self.m = m

    def selection(self, G: torch.Tensor) -> torch.Tensor:
        p = G.shape[0]
        m = self.m if self.m is not None else p - self.f - 2
        if m > p:
            raise PreconditionError(f"{self.name}: m={m} exceeds p={p}")
        return multi_krum_select(squared_distances(gram(G)), self.f, m)

    def aggregate(self, G: torch.Tensor) -> torch.Tensor:
        chosen = self.selection(G)
        weights = torch.zeros(G.shape[0], dtype=G.dtype, device=G.device)
        weights[chosen] = 1.0 / chosen.numel()
        return weights @ G

    def cost(self, p: int, n: int) -> Cost:
        # the Gram pass, the p×p scores (a sort of each row of distances), one GEMV
        return (gram_cost(p, n) + Cost(0.0, 4.0 * p * p * max(p.bit_length(), 1), 2)
                + passes(p, n, flops_per_value=2.0))


class Krum(MultiKrum):
    """Krum: the single row with the lowest score. Needs p ≥ 2f+3."""

    name = "krum"

    def __init__(self, f: int = 0):
        super().__init__(f, m=1)


class Bulyan(Aggregator):
    """Bulyan: pick θ = p−2f rows by repeated Krum (each pick removed and the scores
    recomputed on the rest), then per coordinate average the β = θ−2f selected values
    closest to the coordinate median of the selection. Needs p ≥ 4f+3."""

    name = "bulyan"
    finite_check_fused = True  # gram() raises for non-finite rows
    requirement = ("p >= 4f+3", lambda p, f: p >= 4 * f + 3)

    def selection(self, G: torch.Tensor) -> torch.Tensor:
        p = G.shape[0]
        theta = p - 2 * self.f
        D = squared_distances(gram(G))
        remaining = torch.arange(p, device=G.device)
        chosen = []
        for _ in range(theta):  # θ ≤ p small Krum rounds on a p×p matrix
            sub = D[remaining][:, remaining]
            if remaining.numel() - self.f - 2 >= 1:
                best = int(krum_order(sub, self.f)[0])
            else:  # fewer than f+3 left: no neighbours to score, take the most central
                best = int(torch.argmin(sub.sum(dim=1)))
            chosen.append(remaining[best])
            remaining = torch.cat([remaining[:best], remaining[best + 1 :]])
        return torch.stack(chosen)

    def aggregate(self, G: torch.Tensor) -> torch.Tensor:
        chosen = self.selection(G)
        beta = chosen.numel() - 2 * self.f
        return mean_around_median(G, beta, rows=chosen)

    def cost(self, p: int, n: int) -> Cost:
        # the Gram pass, θ Krum rounds on the p×p distances (one launch each), then
        # the coordinate phase over the θ selected rows
        theta = p - 2 * self.f
        sort = network.sort_cost(theta, n)
        rounds = Cost(0.0, theta * 4.0 * p * p * max(p.bit_length(), 1), theta)
        return (gram_cost(p, n) + rounds
                + Cost(sort.bytes, sort.flops + 2.0 * (theta - self.f) * n, 1))
