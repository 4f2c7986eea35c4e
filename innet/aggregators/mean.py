"""Plain averaging and signSGD majority vote."""

from __future__ import annotations

import torch

from innet.aggregators.base import Aggregator, Cost, NonFiniteGradientError, nonfinite_rows, passes


class Mean(Aggregator):
    """Arithmetic mean (1/p)·Σ g_i. Not robust: one Byzantine row moves it anywhere."""

    name = "mean"
    #: a NaN/Inf anywhere makes its coordinate of the mean, and so the sum of the (n,)
    #: output, non-finite: that one number is checked, and G scanned only when needed
    finite_check_fused = True

    def aggregate(self, G: torch.Tensor) -> torch.Tensor:
        out = G.mean(dim=0)
        if self.fuses_finite_check(G) and not bool(torch.isfinite(out.sum())):
            bad = nonfinite_rows(G)
            if bad:
                raise NonFiniteGradientError(bad)
        return out

    def cost(self, p: int, n: int) -> Cost:
        return passes(p, n)


class SignSGD(Aggregator):
    """signSGD with majority vote: sign(Σ_i sign(g_i)) (Bernstein et al. 2019; REFERENCE §2).

    Ties give 0. The output is a ±1 vector, so the learning rate must be scaled to it.
    """

    name = "signsgd"

    def aggregate(self, G: torch.Tensor) -> torch.Tensor:
        return torch.sign(torch.sign(G).sum(dim=0))

    def cost(self, p: int, n: int) -> Cost:
        return passes(p, n, flops_per_value=2.0)
