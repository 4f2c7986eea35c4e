"""Gram matrix and pairwise distances of worker rows (REFERENCE §1.4, §2).

Every rule that needs distances or inner products between the p worker vectors
works on the p×p Gram matrix K = G Gᵀ: one pass over G instead of p² passes.

float32 input: each block of :data:`BLOCK` = 2¹⁴ columns is one float32 GEMM (BLAS
at full speed), and the p×p block products are summed in float64. A dot product of
b terms in float32 has error at most γ_b·Σ_k|g_ik g_jk| ≤ γ_b·‖g_i‖‖g_j‖ with
γ_b ≈ b·2⁻²⁴ (Higham, Thm 3.1); BLAS's FMA accumulation behaves like √b·2⁻²⁴ ≈ 8e-6
at worst and measures ≈ 1e-7 here (``tests/test_kernels.py`` holds it under 1e-6 of
‖g_i‖‖g_j‖ against float64). So a cosine K_ij/√(K_ii K_jj) is good to ≈ 1e-7 and a
squared distance to ≈ 4e-7·max‖g‖²: FA's subspace moves by that over its eigengap,
and Krum can only swap two workers whose scores agree to that relative precision.

Rows for which float32 is not enough are recomputed in float64 (exact to rounding):
a row whose squares overflow float32 (|g| ≳ 1e19, e.g. a bit-flip attack) or
underflow it (‖g‖² < 2⁻⁸⁰ and not an all-zero row). A row whose diagonal is still
NaN/Inf after that holds NaN/Inf itself: :class:`NonFiniteGradientError` names it, so
the rules built on the Gram matrix need no separate finiteness pass.

K is symmetrised, so d(i, j) and d(j, i) are the same float and rules that rank
distances do not depend on the order in which BLAS visited the pair.
"""

from __future__ import annotations

import torch

from innet.aggregators.base import NonFiniteGradientError

#: columns per float32 GEMM block
BLOCK = 1 << 14
#: columns per float64 block of the exact recomputation
CHUNK64 = 1 << 18
#: a diagonal below this (2⁻⁸⁰) may have lost digits to float32 underflow
TINY = 2.0**-80


def _rows_float64(G: torch.Tensor, rows: torch.Tensor, centre: torch.Tensor | None
                  ) -> torch.Tensor:
    """(g_i − c)·(g_j − c) for i in rows and every j, accumulated in float64."""
    out = torch.zeros((rows.numel(), G.shape[0]), dtype=torch.float64, device=G.device)
    for start in range(0, G.shape[1], CHUNK64):
        block = G[:, start : start + CHUNK64].to(torch.float64)
        if centre is not None:
            block = block - centre[start : start + CHUNK64].to(torch.float64)
        out.addmm_(block[rows], block.T)
    return out


def gram(G: torch.Tensor, centre: torch.Tensor | None = None) -> torch.Tensor:
    """K = X Xᵀ in float64, X = G (or G − centre, formed block by block, never as a
    whole). Raises :class:`NonFiniteGradientError` for rows holding NaN/Inf."""
    p, n = G.shape
    if G.dtype == torch.float64:
        X = G if centre is None else G - centre
        K = X @ X.T
    else:
        # (a strided G is copied: BLAS on strided blocks summed in float32 with errors
        # past the bound above, 2.5e-6 measured)
        G = G.contiguous()
        K = torch.zeros((p, p), dtype=torch.float64, device=G.device)
        done = 0  # columns summed by the batched GEMM
        whole = n // BLOCK
        if centre is None and whole and G.device.type == "cpu":
            # the whole blocks as one batched GEMM over a strided view (no copy): one
            # call instead of one per block, 8.0 -> 5.4 ms at p = 16, n = 2²⁰; the same
            # GEMM per block and the same float64 sum in block order, so the same bits
            # (tests/test_kernels.py)
            blocks = G[:, : whole * BLOCK].view(p, whole, BLOCK).transpose(0, 1)
            per_block = torch.bmm(blocks, blocks.transpose(1, 2))
            for b in range(whole):
                K += per_block[b]
            done = whole * BLOCK
        for start in range(done, n, BLOCK):
            block = G[:, start : start + BLOCK]
            if centre is not None:
                block = block - centre[start : start + BLOCK]
            K += block @ block.T
        diag = torch.diagonal(K)
        suspect = ~torch.isfinite(diag) | (diag < TINY)
        overflow_pair = ~torch.isfinite(K) & torch.isfinite(diag)[:, None]
        suspect |= overflow_pair.any(dim=1)
        if bool(suspect.any()):
            rows = torch.nonzero(suspect).flatten()
            X_rows = G[rows] if centre is None else G[rows] - centre
            # an all-zero row is exact already; recompute the others in float64
            rows = rows[torch.count_nonzero(X_rows, dim=1) > 0]
            if rows.numel():
                exact = _rows_float64(G, rows, centre)
                K[rows] = exact
                K[:, rows] = exact.T
    bad = torch.nonzero(~torch.isfinite(torch.diagonal(K))).flatten()
    if bad.numel():
        raise NonFiniteGradientError(bad.tolist())
    return 0.5 * (K + K.T)


def squared_distances(K: torch.Tensor) -> torch.Tensor:
    """‖g_i − g_j‖² from the Gram matrix, clamped at 0 against rounding."""
    diag = torch.diagonal(K)
    D = diag[:, None] + diag[None, :] - 2.0 * K
    D.clamp_(min=0.0)
    D.fill_diagonal_(0.0)
    return D
