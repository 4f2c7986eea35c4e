"""Plain averaging and signSGD majority vote."""

from __future__ import annotations

import torch

from innet.aggregators.base import Aggregator


class Mean(Aggregator):
    """Arithmetic mean (1/p)·Σ g_i. Not robust: one Byzantine row moves it anywhere."""

    name = "mean"

    def aggregate(self, G: torch.Tensor) -> torch.Tensor:
        return G.mean(dim=0)


class SignSGD(Aggregator):
    """signSGD with majority vote: sign(Σ_i sign(g_i)) (Bernstein et al. 2019; REFERENCE §2).

    Ties give 0. The output is a ±1 vector, so the learning rate must be scaled to it.
    """

    name = "signsgd"

    def aggregate(self, G: torch.Tensor) -> torch.Tensor:
        return torch.sign(torch.sign(G).sum(dim=0))
