"""Every aggregator against its slow, literal reference (tests/references.py)."""

import numpy as np
import pytest
import references as ref
import torch

from innet import aggregators

P, N, F = 11, 37, 2


@pytest.fixture(params=[0, 1, 2])
def X(request) -> np.ndarray:
    rng = np.random.default_rng(request.param)
    X = rng.normal(size=(P, N))
    X[:F] += rng.normal(5.0, 3.0, size=(F, N))  # a couple of outlying rows
    return X


CASES = {
    "mean": (lambda X: ref.mean(X), {}),
    "median": (lambda X: ref.median(X), {}),
    "trimmed_mean": (lambda X: ref.trimmed_mean(X, F), {"f": F}),
    "meamed": (lambda X: ref.meamed(X, F), {"f": F}),
    "phocas": (lambda X: ref.phocas(X, F), {"f": F}),
    "krum": (lambda X: ref.multi_krum(X, F, 1), {"f": F}),
    "multi_krum": (lambda X: ref.multi_krum(X, F), {"f": F}),
    "bulyan": (lambda X: ref.bulyan(X, F), {"f": F}),
    "geomed": (lambda X: ref.geomed(X, iters=200, tol=1e-14), {"iters": 200, "tol": 1e-14}),
    "signsgd": (lambda X: ref.signsgd(X), {}),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_reference(name, X):
    reference, params = CASES[name]
    out = aggregators.get(name, **params)(torch.from_numpy(X)).numpy()
    np.testing.assert_allclose(out, reference(X), rtol=1e-10, atol=1e-10)


def test_median_even_p_averages_the_two_middle_values():
    X = torch.tensor([[1.0], [2.0], [10.0], [4.0]])
    assert aggregators.get("median")(X).item() == 3.0


def test_centered_clipping_matches_reference_and_keeps_state(X):
    rule = aggregators.get("centered_clipping", f=F, tau=0.5, iters=3)
    first = rule(torch.from_numpy(X)).numpy()
    v1 = ref.centered_clipping(X, 0.5, 3, np.zeros(N))
    np.testing.assert_allclose(first, v1, rtol=1e-10, atol=1e-12)
    second = rule(torch.from_numpy(X)).numpy()
    np.testing.assert_allclose(second, ref.centered_clipping(X, 0.5, 3, v1), rtol=1e-10)
    rule.reset()
    np.testing.assert_allclose(rule(torch.from_numpy(X)).numpy(), v1, rtol=1e-10)


@pytest.mark.parametrize("lam", [0.0, 2.0])
@pytest.mark.parametrize("output", ["median_norm", "paper", "reference"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fa_gram_path_matches_svd_per_iteration(lam, output, seed):
    """REFERENCE §1.4: the Gram path equals the SVD-per-step IRLS to 1e-8 (float64)."""
    gen = torch.Generator().manual_seed(seed)
    p, n, m = 9, 300, 5
    G = torch.randn(p, n, generator=gen, dtype=torch.float64) + 0.5
    G[:2] = torch.rand(2, n, generator=gen, dtype=torch.float64) * 3  # uniform Byzantines
    expected, Y = ref.fa_svd(G, m, lam=lam, iters=5, output=output)
    fa = aggregators.get("fa", m=m, lam=lam, iters=5, output=output)
    result = fa.solve(G)
    rel = torch.linalg.vector_norm(result.aggregate - expected) / torch.linalg.vector_norm(expected)
    assert rel <= 1e-8
    # the subspace itself: Y = U·C spans the reference Y
    U = (G / torch.linalg.vector_norm(G, dim=1, keepdim=True)).T
    Yg = U @ result.C
    assert torch.allclose(Yg.T @ Yg, torch.eye(m, dtype=torch.float64), atol=1e-8)
    assert torch.linalg.matrix_norm(Yg @ Yg.T - Y @ Y.T) <= 1e-8
    assert torch.allclose(result.c @ G, result.aggregate)


def test_fa_reweighting_acts_and_downweights_outliers():
    gen = torch.Generator().manual_seed(5)
    p, n = 15, 2000
    base = torch.randn(n, generator=gen, dtype=torch.float64)
    G = base + 0.3 * torch.randn(p, n, generator=gen, dtype=torch.float64)
    G[:3] = 10 * torch.rand(3, n, generator=gen, dtype=torch.float64)  # uniform Byzantines
    res = aggregators.get("fa").solve(G)
    assert res.iterations >= 2
    norms = torch.linalg.vector_norm(G, dim=1)
    contribution = (res.c.abs() * norms)
    assert contribution[3:].sum() / contribution.sum() > 0.75
    def cos(a):
        return torch.nn.functional.cosine_similarity(a, base, dim=0)
    assert cos(res.aggregate) > 0.95
    assert cos(G.mean(dim=0)) < 0.8


def test_fa_reference_mode_is_one_step_from_random_start():
    gen = torch.Generator().manual_seed(0)
    G = torch.randn(15, 5000, generator=gen, dtype=torch.float64)
    fa = aggregators.get("fa", mode="reference", m=8)
    res = fa.solve(G)
    assert res.iterations == 1
    # in high dimension a random start captures almost nothing: all weights ≈ (1+ε)^(-1/4)
    assert torch.allclose(res.weights, torch.ones(15, dtype=torch.float64), atol=0.01)
    # output (1/m)·Y Yᵀ U 1 has norm ≤ p/m
    assert torch.linalg.vector_norm(res.aggregate) <= 15 / 8 + 1e-12
    # seeded: deterministic
    assert torch.equal(fa(G), aggregators.get("fa", mode="reference", m=8)(G))
