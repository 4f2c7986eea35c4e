"""Gram matrix and pairwise distances of worker rows (REFERENCE §1.4, §2).

Every rule that needs distances or inner products between the p worker vectors
works on the p×p Gram matrix K = G Gᵀ: one GEMM over n instead of p² passes.
The GEMM is accumulated in float64 over column chunks so that float32 input keeps
full precision without a float64 copy of all of G.
"""

from __future__ import annotations

import torch

#: columns per float64 chunk; 2^18 × p × 8 bytes stays small on CPU and GPU
CHUNK = 1 << 18


def gram64(G: torch.Tensor, chunk: int = CHUNK) -> torch.Tensor:
    """K = G Gᵀ in float64, accumulated over column chunks.

    BLAS does not promise a bit-symmetric product; K is symmetrised so that d(i, j)
    and d(j, i) are the same float and rules that rank distances do not depend on
    the order of the workers."""
    p, n = G.shape
    if G.dtype == torch.float64:
        K = G @ G.T
    else:
        K = torch.zeros((p, p), dtype=torch.float64, device=G.device)
        for start in range(0, n, chunk):
            block = G[:, start : start + chunk].to(torch.float64)
            K.addmm_(block, block.T)
    return 0.5 * (K + K.T)


def squared_distances(K: torch.Tensor) -> torch.Tensor:
    """‖g_i − g_j‖² from the Gram matrix, clamped at 0 against rounding."""
    diag = torch.diagonal(K)
    D = diag[:, None] + diag[None, :] - 2.0 * K
    D.clamp_(min=0.0)
    D.fill_diagonal_(0.0)
    return D
