"""Geometric median by smoothed Weiszfeld iterations (Pillutla et al. 2022; REFERENCE §2)."""

from __future__ import annotations

import torch

from innet.aggregators import sorting_network as network
from innet.aggregators.base import Aggregator, Cost, gram_cost, passes
from innet.aggregators.coordinate import coordinate_median
from innet.aggregators.gram import gram


class GeoMed(Aggregator):
    """Smoothed Weiszfeld: z ← Σβ_i g_i / Σβ_i with β_i = 1/max(ν, ‖z − g_i‖).

    Starts from the coordinate-wise median ḡ and stops after ``iters`` steps or when z
    moves by less than ``tol``·‖z − ḡ‖. Works in centred coordinates x_i = g_i − ḡ:
    translation-equivariant by construction, and since ḡ lies in the honest range,
    neither a large common offset nor a huge Byzantine row cancels the honest digits.
    Distances come from one Gram matrix of the x_i (‖z−x_i‖² = ‖x_i‖² − 2x_iᵀz + ‖z‖²)
    and z = X·c stays a weighted sum of the rows, so an iteration costs O(p²) after
    the single O(np²) GEMM. The centred rows are formed block by block inside that
    GEMM, never as a whole, and since the weights sum to one the output
    ḡ + X·c = G·c + (1 − Σc)·ḡ is one GEMV over G: three passes in all (median, Gram,
    output).
    """

    name = "geomed"
    finite_check_fused = True  # the median kernel (CPU) raises for non-finite rows

    def __init__(self, f: int = 0, nu: float = 0.1, iters: int = 100, tol: float = 1e-8):
        super().__init__(f)
        if nu <= 0:
            raise ValueError(f"{self.name}: nu must be > 0, got {nu!r}")
        if iters < 1:
            raise ValueError(f"{self.name}: iters must be >= 1, got {iters!r}")
        self.nu, self.iters, self.tol = float(nu), int(iters), float(tol)

    def coefficients(self, K: torch.Tensor) -> torch.Tensor:
        """Weights c (summing to 1) of the geometric median Σ c_i x_i of the rows x_i
        whose Gram matrix is K (float64)."""
        p = K.shape[0]
        sq = torch.diagonal(K)
        c = torch.zeros(p, dtype=torch.float64, device=K.device)  # z = 0: the median
        for _ in range(self.iters):
            Kc = K @ c
            dist = torch.sqrt(torch.clamp(sq - 2.0 * Kc + c @ Kc, min=0.0))
            beta = 1.0 / torch.clamp(dist, min=self.nu)
            c_new = beta / beta.sum()
            step = c_new - c
            moved = torch.sqrt(torch.clamp(step @ K @ step, min=0.0))
            size = torch.sqrt(torch.clamp(c_new @ K @ c_new, min=0.0))
            c = c_new
            if moved <= self.tol * max(float(size), 1e-300):
                break
        return c

    def aggregate(self, G: torch.Tensor) -> torch.Tensor:
        centre = coordinate_median(G)
        c = self.coefficients(gram(G, centre))
        return c.to(G.dtype) @ G + (1.0 - c.sum()).to(G.dtype) * centre

    def cost(self, p: int, n: int) -> Cost:
        # median pass, centred Gram pass, ``iters`` p×p iterations (the cap: the
        # model does not depend on when the data lets it stop), one GEMV
        per_iter = Cost(0.0, 8.0 * p * p, 4)
        iterations = Cost(0.0, per_iter.flops * self.iters, per_iter.launches * self.iters)
        return (network.sort_cost(p, n) + gram_cost(p, n) + iterations
                + passes(p, n, flops_per_value=2.0))
