"""The CPU kernels of the aggregation rules (sorting network, fused Gram matrix,
fused centered clipping) against the torch formulas they replace and the slow
references: bit for bit for order statistics, within float rounding for means."""

import os
import subprocess
import sys

import numpy as np
import pytest
import references as ref
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from innet import aggregators
from innet.aggregators import NonFiniteGradientError, coordinate
from innet.aggregators import sorting_network as network
from innet.aggregators.clipping import _cpu_clipping
from innet.aggregators.gram import BLOCK, gram


def torch_sorted(G):
    return torch.sort(G, dim=0).values


@pytest.mark.parametrize("p", range(1, 17))
def test_network_sorts_every_zero_one_input(p):
    """0-1 principle: a comparator network that sorts all 2^p 0-1 inputs sorts all."""
    pairs = network.batcher_pairs(p)
    assert (pairs[:, 0] < pairs[:, 1]).all() and (pairs < p).all()
    bits = np.arange(1 << p)[:, None] >> np.arange(p) & 1
    for i, j in pairs:
        lo, hi = np.minimum(bits[:, i], bits[:, j]), np.maximum(bits[:, i], bits[:, j])
        bits[:, i], bits[:, j] = lo, hi
    assert (np.diff(bits, axis=1) >= 0).all()


def ties(rng, p, n, dtype):
    """Small integers: many equal values and equal distances to every centre."""
    return rng.integers(-3, 4, size=(p, n)).astype(dtype)


def stacks(min_p: int):
    """(p, n) arrays, p in min_p..70, float32 or float64, normal or full of ties."""
    def build(seed, p, n, dtype, tied):
        rng = np.random.default_rng(seed)
        return ties(rng, p, n, dtype) if tied else rng.normal(size=(p, n)).astype(dtype)
    return st.builds(build, st.integers(0, 2**32 - 1), st.integers(min_p, 70),
                     st.integers(1, 1300), st.sampled_from([np.float32, np.float64]),
                     st.booleans())


@settings(max_examples=60, deadline=None)
@given(X=stacks(min_p=1))
def test_median_is_bit_identical_to_the_sort(X):
    dtype = X.dtype
    fast = network.median(X)
    S = torch_sorted(torch.from_numpy(X))
    expected = coordinate._median_of_sorted(S).numpy()
    assert fast.dtype == dtype and np.array_equal(fast, expected)


@settings(max_examples=60, deadline=None)
@given(X=stacks(min_p=3))
def test_trimmed_window_rules_match_the_sorted_formulas(X):
    """Same selection as the sort-based (CUDA) path; means differ by rounding only."""
    p, dtype = X.shape[0], X.dtype
    T = torch.from_numpy(X)
    S = torch_sorted(T)
    b = (p - 1) // 4
    k = p - b
    tol = dict(rtol=1e-6, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    trimmed = coordinate._trimmed_of_sorted(S, b)
    np.testing.assert_allclose(network.trimmed_mean(X, b), trimmed.numpy(), **tol)
    meamed = coordinate._window_mean_of_sorted(S, coordinate._median_of_sorted(S), k)
    np.testing.assert_allclose(network.mean_around_median(X, k), meamed.numpy(), **tol)
    phocas = coordinate._window_mean_of_sorted(S, trimmed, k)
    np.testing.assert_allclose(network.mean_around_trimmed_mean(X, b, k), phocas.numpy(),
                               **tol)


@pytest.mark.parametrize("p", [4, 5, 11, 16])
def test_tie_keeps_the_smaller_value_like_the_reference(p):
    """Integer data: distances tie everywhere; the kernel, the torch path and the
    literal reference all keep the smaller value, whatever the worker order."""
    rng = np.random.default_rng(p)
    X = rng.integers(-3, 4, size=(p, 400)).astype(np.float64)
    k = p - 1
    expected = ref._mean_closest(X, ref.median(X), k)
    np.testing.assert_allclose(network.mean_around_median(X, k), expected, rtol=1e-12)
    S = torch_sorted(torch.from_numpy(X))
    torch_path = coordinate._window_mean_of_sorted(S, coordinate._median_of_sorted(S), k)
    np.testing.assert_allclose(torch_path.numpy(), expected, rtol=1e-12)
    perm = rng.permutation(p)
    assert np.array_equal(network.mean_around_median(X[perm], k),
                          network.mean_around_median(X, k))


@pytest.mark.parametrize("p,dtype", [(2, np.float32), (5, np.float64), (16, np.float32),
                                     (17, np.float32)])
def test_unrolled_network_is_the_rows_network_bit_for_bit(p, dtype, monkeypatch):
    """The straight-line network (each column's values kept in registers) gives every
    rule the very bits of the rows' network: short last blocks, ties, a row subset,
    and non-finite rows named as before."""
    rng = np.random.default_rng(p)
    n = 3 * network.BLOCK + 37
    b, k = (p - 1) // 4, p - (p - 1) // 4
    rows = rng.permutation(p)[: max(2, p - 3)]

    def every_rule(X):
        return [network.median(X), network.trimmed_mean(X, b),
                network.mean_around_median(X, k), network.mean_around_trimmed_mean(X, b, k),
                network.median(X, rows), network.mean_around_median(X, 2, rows)]

    for X in (rng.normal(size=(p, n)).astype(dtype), ties(rng, p, n, dtype)):
        monkeypatch.setattr(network, "UNROLLED_MIN_N", 1 << 62)
        rows_network = every_rule(X)
        monkeypatch.setattr(network, "UNROLLED_MIN_N", 0)
        for fast, slow in zip(every_rule(X), rows_network):
            assert fast.dtype == dtype and np.array_equal(fast, slow)
    assert np.array_equal(network.median(X), np.median(X, axis=0).astype(dtype))
    X[p - 1, n - 1] = np.nan
    with pytest.raises(NonFiniteGradientError) as err:
        network.median(X)
    assert err.value.rows == [p - 1]


def test_unrolled_network_source_is_batchers_network():
    """The generated code runs exactly :func:`batcher_pairs`'s comparators, in order,
    and the module is not rewritten when it has not changed (Numba's cache of it
    is keyed to the file)."""
    import re
    source = network._unrolled_source(11)
    pairs = [tuple(map(int, m)) for m in re.findall(r"lt = r(\d+) < r(\d+)", source)]
    assert pairs == [tuple(pair) for pair in network.batcher_pairs(11)]
    path = network._generated_dir() / "batcher_p3.py"
    network.unrolled_network(3)
    stamp = path.stat().st_mtime_ns
    network.unrolled_network.cache_clear()
    network.unrolled_network(3)
    assert path.stat().st_mtime_ns == stamp
    with pytest.raises(ValueError):
        network.unrolled_network(network.UNROLLED_MAX_P + 1)


def test_column_fallback_beyond_the_network_matches():
    rng = np.random.default_rng(0)
    p = network.NETWORK_MAX_P + 9
    X = rng.normal(size=(p, 700)).astype(np.float32)
    assert np.array_equal(network.median(X), np.median(X, axis=0).astype(np.float32))
    np.testing.assert_allclose(network.trimmed_mean(X, 10),
                               np.sort(X, axis=0)[10:-10].mean(axis=0), rtol=1e-5, atol=1e-6)


def test_bulyan_phase_reads_only_the_selected_rows():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(15, 2000)).astype(np.float32)
    rows = np.array([14, 2, 7, 9, 0, 3, 11])
    np.testing.assert_array_equal(network.mean_around_median(X, 3, rows),
                                  network.mean_around_median(X[rows], 3))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", [0, network.BLOCK - 1, network.BLOCK, 3 * network.BLOCK + 5])
def test_kernel_names_nonfinite_rows_at_any_block_position(dtype, bad, where):
    X = np.random.default_rng(0).normal(size=(9, 3 * network.BLOCK + 6)).astype(dtype)
    X[2, where] = bad
    X[8, -1] = bad
    for run in (network.median, lambda X: network.trimmed_mean(X, 2),
                lambda X: network.mean_around_median(X, 6),
                lambda X: network.mean_around_trimmed_mean(X, 2, 6),
                lambda X: _cpu_clipping(X, np.zeros(X.shape[1], X.dtype), 1.0, 2)):
        with pytest.raises(NonFiniteGradientError) as err:
            run(X)
        assert err.value.rows == [2, 8]


def test_finite_extremes_are_not_flagged():
    X = np.random.default_rng(0).normal(size=(7, 50)).astype(np.float32)
    X[1] = np.finfo(np.float32).max
    X[2] = np.finfo(np.float32).tiny / 4  # subnormal
    assert np.isfinite(network.median(X)).all()


def test_gram_float32_blocks_agree_with_float64():
    gen = torch.Generator().manual_seed(0)
    G = torch.randn(16, 3 * BLOCK + 77, generator=gen)
    G[:3] = torch.rand(3, G.shape[1], generator=gen) + 5.0  # a large common offset
    K = gram(G)
    exact = G.double() @ G.double().T
    norms = torch.sqrt(torch.diagonal(exact))
    assert ((K - exact).abs() / (norms[:, None] * norms[None, :])).max() <= 1e-6
    assert torch.equal(K, K.T)


@pytest.mark.parametrize("p,n", [(16, 3 * BLOCK + 77), (5, 2 * BLOCK), (7, 100), (32, BLOCK + 1)])
def test_gram_batched_blocks_are_the_block_loop_bit_for_bit(p, n):
    """The whole blocks go through one batched GEMM: each block's float32 product and
    the float64 sum in block order are the per-block loop's, so K is the same to the
    bit; a non-contiguous G is made contiguous first (BLAS on its strided blocks erred
    by 2.5e-6 of ‖g_i‖‖g_j‖, past the stated 1e-6), so it gives the same bits too."""
    G = torch.randn(p, n, generator=torch.Generator().manual_seed(p + n))
    K = torch.zeros((p, p), dtype=torch.float64)
    for start in range(0, n, BLOCK):
        block = G[:, start : start + BLOCK]
        K += block @ block.T
    K = 0.5 * (K + K.T)
    assert torch.equal(gram(G), K)
    wide = torch.zeros(p, 2 * n)
    wide[:, ::2] = G  # a strided view of the same values
    assert torch.equal(gram(wide[:, ::2]), K)


def test_gram_recomputes_rows_float32_cannot_hold():
    gen = torch.Generator().manual_seed(1)
    G = torch.randn(8, 2 * BLOCK, generator=gen)
    G[1] *= 1e30  # squares overflow float32
    G[2] *= 1e-30  # squares underflow float32
    G[3] = 0.0
    K = gram(G)
    exact = G.double() @ G.double().T
    # rows 1 and 2 (and their columns) recomputed in float64: exact to rounding
    np.testing.assert_allclose(K[1:3].numpy(), exact[1:3].numpy(), rtol=1e-12, atol=0)
    np.testing.assert_allclose(K[:, 1:3].numpy(), exact[:, 1:3].numpy(), rtol=1e-12, atol=0)
    assert (K[3] == 0).all() and (K[:, 3] == 0).all()
    plain = torch.tensor([0, 4, 5, 6, 7])
    norms = torch.sqrt(torch.diagonal(exact))[plain]
    error = (K - exact)[plain][:, plain].abs() / (norms[:, None] * norms[None, :])
    assert error.max() <= 1e-6


def test_gram_centred_blocks_equal_the_centred_matrix():
    gen = torch.Generator().manual_seed(2)
    G = torch.randn(10, BLOCK + 3, generator=gen) + 1e3
    centre = G.median(dim=0).values
    X = (G - centre).double()
    np.testing.assert_allclose(gram(G, centre).numpy(), (X @ X.T).numpy(), rtol=1e-5,
                               atol=1e-3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gram_names_nonfinite_rows(dtype):
    G = torch.randn(6, 100, dtype=dtype)
    G[4, 7] = float("nan")
    with pytest.raises(NonFiniteGradientError, match=r"\[4\]"):
        gram(G)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_clipping_matches_the_step_as_written(dtype):
    gen = torch.Generator().manual_seed(3)
    G = torch.randn(12, 3000, generator=gen, dtype=dtype)
    G[:2] *= 50
    v = 0.1 * torch.randn(3000, generator=gen, dtype=dtype)
    expected = v.clone()
    for _ in range(3):
        diff = G - expected
        norms = torch.linalg.vector_norm(diff, dim=1, dtype=torch.float64)
        scale = torch.clamp(0.7 / norms, max=1.0)
        expected = expected + (scale.to(dtype)[:, None] * diff).mean(dim=0)
    fast = _cpu_clipping(G.numpy(), v.numpy(), 0.7, 3)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    np.testing.assert_allclose(fast, expected.numpy(), rtol=tol, atol=tol)


@pytest.mark.parametrize("name", ["median", "trimmed_mean", "meamed", "phocas", "bulyan",
                                  "multi_krum", "fa", "geomed", "centered_clipping"])
def test_cpu_rules_equal_their_torch_path_on_float32(name, monkeypatch):
    """The rules with a CPU kernel, against the same rule forced onto the torch
    (CUDA) path: order statistics equal, means within float32 rounding."""
    gen = torch.Generator().manual_seed(4)
    G = torch.randn(15, 5000, generator=gen)
    G[:3] = torch.rand(3, 5000, generator=gen)
    fast = aggregators.get(name, f=3)(G)
    monkeypatch.setattr(coordinate, "_on_cpu", lambda G: False)
    monkeypatch.setattr(aggregators.Aggregator, "fuses_finite_check", lambda self, G: False)
    slow = aggregators.get(name, f=3)(G)
    if name == "median":
        assert torch.equal(fast, slow)
    else:
        torch.testing.assert_close(fast, slow, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("name", sorted(aggregators.NAMES))
def test_half_precision_still_rejects_nonfinite_rows(name):
    """No fused check for float16: the plain scan runs and names the row."""
    G = torch.randn(11, 40).to(torch.float16)
    G[5, 3] = float("nan")
    with pytest.raises(NonFiniteGradientError, match=r"\[5\]"):
        aggregators.get(name, f=2)(G)


def test_aggregators_benchmark_prints_the_ratios(tmp_path):
    """The benchmark's quick mode at a tiny size: every rule's ratio to the numpy sum
    and the summary keys are in its final JSON line."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "aggregators.py"
    run = subprocess.run([sys.executable, str(script), "--n", "4096", "--p", "11", "--f", "2",
                          "--repeats", "1"], capture_output=True, text=True, timeout=300,
                         cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    figures = json.loads(run.stdout.strip().splitlines()[-1])
    for name in aggregators.NAMES:
        assert figures[f"{name}_vs_numpy_sum"] > 0
    assert figures["worst_coordinatewise_vs_numpy_sum"] == max(
        figures[f"{n}_vs_numpy_sum"] for n in ("median", "trimmed_mean", "meamed", "phocas"))
    assert list(tmp_path.iterdir()) == []  # writes nothing


# -- the kernel cache ----------------------------------------------------------------
_STAGE = '''import numba


@numba.njit(cache=True, inline="always")
def stage(x):
    return x + {step}
'''
_KERNEL = '''import numba

from pk.stage import stage


@numba.njit(cache=True)
def kernel(x):
    return stage(x)
'''
_RUN = '''import sys
sys.path.insert(0, sys.argv[1])
if sys.argv[2] == "keyed":
    from innet.kernel_cache import install
    assert install(sys.argv[1], ("pk",))
import pk.kernel
print(pk.kernel.kernel(1))
'''


def _cached_kernel_answers(tmp_path, mode: str) -> list[int]:
    """A cached kernel inlining a stage from another file: run it in a fresh process,
    change the stage's file only, run it again."""
    root = tmp_path / mode
    (root / "pk").mkdir(parents=True)
    (root / "pk" / "__init__.py").write_text("")
    (root / "pk" / "kernel.py").write_text(_KERNEL)
    stage = root / "pk" / "stage.py"
    answers = []
    for step in (1, 10):
        stage.write_text(_STAGE.format(step=step))
        os.utime(stage, ns=(step * 10**18, step * 10**18))  # a later mtime, whatever the clock
        run = subprocess.run([sys.executable, "-c", _RUN, str(root), mode], capture_output=True,
                             text=True, timeout=120, cwd=os.path.dirname(os.path.dirname(__file__)),
                             env={**os.environ, "NUMBA_CACHE_DIR": ""})
        assert run.returncode == 0, run.stderr
        answers.append(int(run.stdout.split()[-1]))
    return answers


def test_cached_kernels_recompile_when_a_kernel_source_they_inline_changes(tmp_path):
    """Numba alone keys a cached kernel on its own file, so it keeps the old stage (the
    hazard: tests passing against code that no longer exists); keyed on every kernel
    source of the package (innet.kernel_cache), it recompiles."""
    assert _cached_kernel_answers(tmp_path, "plain") == [2, 2]  # stale, as Numba does
    assert _cached_kernel_answers(tmp_path, "keyed") == [2, 11]
