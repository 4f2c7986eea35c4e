"""Slow, literal references for the aggregation rules.

Written straight from the definitions in REFERENCE §1–2 with Python loops over
coordinates and pairs, numpy/torch only for the SVD; nothing here is shared with the
fast implementations. Used by the tests and by benchmarks/aggregators.py.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def mean(X: np.ndarray) -> np.ndarray:
    p = X.shape[0]
    return sum(X[i] for i in range(p)) / p


def median(X: np.ndarray) -> np.ndarray:
    p, n = X.shape
    out = np.empty(n)
    for k in range(n):
        col = sorted(X[:, k])
        out[k] = col[p // 2] if p % 2 else 0.5 * (col[p // 2 - 1] + col[p // 2])
    return out


def trimmed_mean(X: np.ndarray, b: int) -> np.ndarray:
    p, n = X.shape
    return np.array([np.mean(sorted(X[:, k])[b : p - b]) for k in range(n)])


def _mean_closest(X: np.ndarray, centre: np.ndarray, k: int) -> np.ndarray:
    """Mean of the k values closest to the centre; equal distances keep the smaller
    value (innet's tie rule: a rule of the values, not of the worker order)."""
    out = np.empty(X.shape[1])
    for j in range(X.shape[1]):
        col = sorted(X[:, j], key=lambda v, c=centre[j]: (abs(v - c), v))
        out[j] = np.mean(col[:k])
    return out


def meamed(X: np.ndarray, f: int) -> np.ndarray:
    return _mean_closest(X, median(X), X.shape[0] - f)


def phocas(X: np.ndarray, f: int) -> np.ndarray:
    return _mean_closest(X, trimmed_mean(X, f), X.shape[0] - f)


def _krum_keys(rows: list[np.ndarray], f: int) -> list[tuple[float, float]]:
    """(score, total squared distance): the score orders, the total breaks ties."""
    p = len(rows)
    keys = []
    for i in range(p):
        d = sorted(float(np.sum((rows[i] - rows[j]) ** 2)) for j in range(p) if j != i)
        keys.append((sum(d[: max(p - f - 2, 0)]), sum(d)))
    return keys


def multi_krum(X: np.ndarray, f: int, m: int | None = None) -> np.ndarray:
    p = X.shape[0]
    m = p - f - 2 if m is None else m
    keys = _krum_keys(list(X), f)
    order = sorted(range(p), key=lambda i: keys[i])
    return np.mean([X[i] for i in order[:m]], axis=0)


def bulyan(X: np.ndarray, f: int) -> np.ndarray:
    p = X.shape[0]
    theta = p - 2 * f
    remaining = list(range(p))
    chosen = []
    for _ in range(theta):
        keys = _krum_keys([X[i] for i in remaining], f)
        if len(remaining) - f - 2 >= 1:
            best = min(range(len(remaining)), key=lambda k: keys[k])
        else:
            best = min(range(len(remaining)), key=lambda k: keys[k][1])
        chosen.append(remaining.pop(best))
    S = X[chosen]
    return _mean_closest(S, median(S), theta - 2 * f)


def geomed(X: np.ndarray, nu: float = 0.1, iters: int = 100, tol: float = 1e-8) -> np.ndarray:
    centre = median(X)
    z = centre
    for _ in range(iters):
        beta = np.array([1.0 / max(nu, np.linalg.norm(z - x)) for x in X])
        z_new = sum(b * x for b, x in zip(beta, X)) / beta.sum()
        scale = max(np.linalg.norm(z_new - centre), 1e-300)
        done = np.linalg.norm(z_new - z) <= tol * scale
        z = z_new
        if done:
            break
    return z


def centered_clipping(X: np.ndarray, tau: float, iters: int, v0: np.ndarray) -> np.ndarray:
    v = v0.copy()
    for _ in range(iters):
        v = v + sum((x - v) * min(1.0, tau / np.linalg.norm(x - v)) for x in X) / len(X)
    return v


def signsgd(X: np.ndarray) -> np.ndarray:
    return np.sign(sum(np.sign(x) for x in X))


# -- Flag Aggregator: one SVD of the (weighted) n-dimensional columns per IRLS step ----------
def _fa_objective(Y, U, lam, pairs):
    p = U.shape[1]
    obj = sum(math.sqrt(abs(1.0 - float(torch.sum((Y.T @ U[:, i]) ** 2)))) for i in range(p))
    for d in pairs.values():
        obj += lam / (p - 1) * math.sqrt(abs(1.0 - float(torch.sum((Y.T @ d) ** 2))))
    return obj


def fa_svd(
    G: torch.Tensor,
    m: int,
    lam: float = 0.0,
    iters: int = 5,
    tol: float = 1e-10,
    eps: float = 1e-7,
    output: str = "median_norm",
):
    """FA as REFERENCE §1.2 states it: every IRLS step is a thin SVD of the n×(p + p(p−1))
    matrix of weighted unit gradients (and weighted unit differences when λ > 0).

    Starts from the unweighted top-m subspace of U (the paper mode of innet's FA).
    Returns (aggregate, Y)."""
    p = G.shape[0]
    norms = torch.linalg.vector_norm(G, dim=1)
    U = (G / norms[:, None]).T  # n × p
    pairs = {}
    if lam > 0:
        for i in range(p):
            for j in range(p):
                if i != j:
                    diff = U[:, i] - U[:, j]
                    pairs[(i, j)] = diff / torch.linalg.vector_norm(diff)

    def top_m(A):
        try:
            return torch.linalg.svd(A, full_matrices=False).U[:, :m]
        except torch.linalg.LinAlgError:
            # cuSOLVER's SVD drivers reject very tall matrices (11.2M × 15 in the
            # ResNet-18 benchmark: their workspace size overflows). A = QR, then the
            # SVD of the small R, is what LAPACK's gesvd does for such shapes anyway.
            Q, R = torch.linalg.qr(A)
            return Q @ torch.linalg.svd(R).U[:, :m]

    Y = top_m(U)
    objective = _fa_objective(Y, U, lam, pairs)
    for _ in range(iters):
        cols = []
        for i in range(p):
            r = abs(1.0 - float(torch.sum((Y.T @ U[:, i]) ** 2)))
            cols.append((r + eps) ** -0.25 * U[:, i])
        for d in pairs.values():
            r = abs(1.0 - float(torch.sum((Y.T @ d) ** 2)))
            cols.append(math.sqrt(lam / (p - 1)) * (r + eps) ** -0.25 * d)
        Y_new = top_m(torch.stack(cols, dim=1))
        obj_new = _fa_objective(Y_new, U, lam, pairs)
        if obj_new > objective:
            break
        decrease = objective - obj_new
        Y, objective = Y_new, obj_new
        if decrease <= tol:
            break

    if output == "paper":
        agg = Y @ (Y.T @ G.sum(dim=0)) / p
    elif output == "reference":
        agg = Y @ (Y.T @ U.sum(dim=1)) / m
    else:
        agg = float(np.median(norms.cpu().numpy())) * (Y @ (Y.T @ U.sum(dim=1))) / p
    return agg, Y
