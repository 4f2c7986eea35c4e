"""Pre-aggregators (NNM, bucketing, static and adaptive clipping) against slow
references, their properties, pipelines, and scenario validation."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from innet import aggregators, config
from innet.aggregators.pre import ARC, NNM, Bucketing, Clipping, Pipeline

stacks = st.builds(
    lambda seed, p, n: torch.from_numpy(np.random.default_rng(seed).normal(size=(p, n))),
    st.integers(0, 2**32 - 1), st.integers(5, 16), st.integers(2, 30))


def slow_nnm(G, f):
    G = G.numpy()
    p = len(G)
    out = []
    for i in range(p):
        d = [(float(((G[i] - G[j]) ** 2).sum()), j) for j in range(p)]
        near = [j for _, j in sorted(d)[: p - f]]
        out.append(G[near].mean(axis=0))
    return np.array(out)


def slow_arc(G, f):
    G = G.numpy().copy()
    p = len(G)
    k = int(2 * f / p * (p - f))
    if k == 0:
        return G
    order = sorted(range(p), key=lambda i: np.linalg.norm(G[i]))
    threshold = np.linalg.norm(G[order[p - k - 1]])
    for i in order[p - k:]:
        G[i] *= threshold / np.linalg.norm(G[i])
    return G


@settings(max_examples=60, deadline=None)
@given(G=stacks, f=st.integers(0, 4))
def test_nnm_matches_the_loop_and_is_permutation_equivariant(G, f):
    np.testing.assert_allclose(NNM(f)(G).numpy(), slow_nnm(G, f), rtol=1e-12, atol=1e-12)
    perm = torch.randperm(G.shape[0], generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(NNM(f)(G[perm]), NNM(f)(G)[perm])


@settings(max_examples=60, deadline=None)
@given(G=stacks, f=st.integers(0, 4))
def test_arc_matches_the_loop(G, f):
    np.testing.assert_allclose(ARC(f)(G).numpy(), slow_arc(G, f), rtol=1e-12, atol=1e-12)


def test_nnm_without_byzantines_is_the_mean_and_pulls_outliers_in():
    G = torch.randn(9, 20, dtype=torch.float64)
    torch.testing.assert_close(NNM(0)(G), G.mean(dim=0).expand(9, -1))
    G[0] = 1e3
    mixed = NNM(2)(G)
    # the honest rows' neighbourhoods exclude the far row: it does not reach them
    assert mixed[1:].abs().max() < 10
    torch.testing.assert_close(aggregators.get("nnm+mean", f=0)(G), G.mean(dim=0))


def test_bucketing_averages_buckets_of_a_permutation():
    G = torch.randn(7, 5, dtype=torch.float64)
    b = Bucketing(s=1, seed=3)
    out = b(G)
    assert sorted(map(tuple, out.tolist())) == sorted(map(tuple, G.tolist()))
    b2 = Bucketing(s=2, seed=3)
    out2 = b2(G)
    assert out2.shape == (4, 5) and b2.rows_out(7) == 4
    G6 = G[:6]
    torch.testing.assert_close(Bucketing(s=3, seed=0)(G6).mean(dim=0), G6.mean(dim=0))
    # a saved state replays the same permutations
    state = b2.state()
    first = b2(G)
    b2.load_state(state)
    torch.testing.assert_close(b2(G), first)
    with pytest.raises(ValueError, match="positive integer"):
        Bucketing(s=0)


def test_static_clipping_bounds_every_row():
    G = torch.randn(6, 50, dtype=torch.float64) * torch.tensor([0.1, 1, 5, 10, 0.5, 3])[:, None]
    out = Clipping(c=2.0)(G)
    norms = torch.linalg.vector_norm(out, dim=1)
    assert (norms <= 2.0 + 1e-12).all()
    small = torch.linalg.vector_norm(G, dim=1) <= 2.0
    torch.testing.assert_close(out[small], G[small])


def test_pipelines_build_validate_and_cost():
    rule = aggregators.get("arc+nnm+fa", f=3)
    assert isinstance(rule, Pipeline) and rule.name == "arc+nnm+fa"
    G = torch.randn(15, 64)
    assert rule(G).shape == (64,)
    cost = rule.cost(15, 1000)
    assert cost.flops == (ARC(3).cost(15, 1000) + NNM(3).cost(15, 1000)
                          + aggregators.get("fa", f=3).cost(15, 1000)).flops
    assert aggregators.get("bucketing+median", f=1, bucketing={"s": 3}).stages[0].s == 3
    with pytest.raises(ValueError, match="pre-aggregator"):
        aggregators.get("nnx+fa")
    with pytest.raises(ValueError, match="last part"):
        aggregators.check_name("fa+nnm")
    bad = G.clone()
    bad[4, 2] = float("nan")
    with pytest.raises(aggregators.NonFiniteGradientError) as err:
        rule(bad)
    assert err.value.rows == [4]


def test_scenarios_take_pipelines_and_check_the_reduced_rows():
    ok = config.from_dict({"paths": [{"rule": "nnm+fa"}, {"rule": "bucketing+median",
                                                          "params": {"bucketing": {"s": 2}}}]})
    assert [p.name for p in ok.paths] == ["nnm+fa", "bucketing+median"]
    with pytest.raises(config.ScenarioError, match=r"paths\[0\].rule.*after bucketing"):
        config.from_dict({"workers": {"p": 15, "f": 3},
                          "paths": [{"rule": "bucketing+multi_krum"}]})
    with pytest.raises(config.ScenarioError, match=r"paths\[0\].rule: 'nnm\+foo'"):
        config.from_dict({"paths": [{"rule": "nnm+foo"}]})
    with pytest.raises(config.ScenarioError, match="allowed keys.*nnm"):
        config.from_dict({"paths": [{"rule": "nnm+fa", "params": {"nmm": {}}}]})
    with pytest.raises(config.ScenarioError, match="switch"):
        config.from_dict({"paths": [{"rule": "nnm+mean", "via": "switch"}]})


def test_against_byzfl_where_installed():
    import importlib
    import importlib.util
    import sys
    import types

    spec = importlib.util.find_spec("byzfl")
    if spec is None:
        pytest.skip("ByzFL (make bench installs it) is not installed")
    if "byzfl" not in sys.modules:  # skip its __init__, which imports torchvision
        package = types.ModuleType("byzfl")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["byzfl"] = package
    byzfl = importlib.import_module("byzfl.aggregators.preaggregators")
    G = torch.randn(15, 40)
    torch.testing.assert_close(NNM(3)(G), byzfl.NNM(f=3)(G.clone()), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ARC(3)(G), byzfl.ARC(f=3)(G.clone()), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(Clipping(1.5)(G), byzfl.Clipping(c=1.5)(G.clone()), rtol=1e-5,
                               atol=1e-6)
