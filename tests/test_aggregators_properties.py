"""Hypothesis properties of the aggregation rules and their error contract."""

import re

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from innet import aggregators
from innet.aggregators import NonFiniteGradientError, PreconditionError

F = 2
#: hyper-parameters of each rule in the property tests, for every rule the registry
#: has: a new rule without an entry fails test_every_registered_rule_has_properties
#: rather than silently skip the properties
SPECIAL = {"mean": {}, "median": {}, "signsgd": {}, "centered_clipping": {"f": F, "tau": 1.0}}
PARAMS = {name: SPECIAL.get(name, {"f": F}) for name in aggregators.NAMES}
#: which properties a rule is exempt from, and why (checked against the registry too)
EXEMPT = {
    "translation": {"centered_clipping": "clips around its previous output",
                    "signsgd": "a sign vote", "fa": "a subspace of the raw rows"},
    "scale": {"centered_clipping": "τ is an absolute radius", "signsgd": "a sign vote",
              "geomed": "ν is an absolute smoothing floor"},
}
TRANSLATION = [n for n in aggregators.NAMES if n not in EXEMPT["translation"]]
SCALE = [n for n in aggregators.NAMES if n not in EXEMPT["scale"]]
ROBUST = [name for name in PARAMS if name != "mean"]


def test_every_registered_rule_has_properties():
    """The lists above come from the registry; what is exempt is named with a reason."""
    assert set(PARAMS) == set(aggregators.NAMES)
    for prop, exempt in EXEMPT.items():
        assert set(exempt) <= set(aggregators.NAMES), prop
    for name in aggregators.NAMES:
        make(name)  # every entry builds

stacks = st.builds(
    lambda seed, p, n: torch.from_numpy(np.random.default_rng(seed).normal(size=(p, n))),
    st.integers(0, 2**32 - 1),
    st.integers(11, 16),
    st.integers(3, 40),
)


def make(name):
    return aggregators.get(name, **PARAMS[name])


@pytest.mark.parametrize("name", sorted(PARAMS))
@given(G=stacks, perm_seed=st.integers(0, 1000))
def test_permutation_invariance(name, G, perm_seed):
    perm = torch.from_numpy(np.random.default_rng(perm_seed).permutation(G.shape[0]))
    torch.testing.assert_close(make(name)(G), make(name)(G[perm]), rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("name", TRANSLATION)
@given(G=stacks, shift=st.floats(-100, 100))
def test_translation_equivariance(name, G, shift):
    t = torch.linspace(-1, 1, G.shape[1], dtype=G.dtype) * shift
    torch.testing.assert_close(make(name)(G + t), make(name)(G) + t, rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("name", SCALE)
@given(G=stacks, a=st.floats(1e-3, 1e3))
def test_scale_equivariance(name, G, a):
    torch.testing.assert_close(make(name)(a * G), a * make(name)(G), rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("name", sorted(PARAMS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@given(G=stacks)
def test_finite_output_shape_dtype(name, dtype, G):
    out = make(name)(G.to(dtype))
    assert out.shape == (G.shape[1],) and out.dtype == dtype
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ROBUST)
@given(G=stacks, signs=st.lists(st.sampled_from([-1.0, 1.0]), min_size=F, max_size=F))
def test_robust_rules_bounded_under_huge_byzantine_rows(name, G, signs):
    """f rows set to ±1e30: the output stays within the honest range (up to a factor)."""
    G = G.clone()
    for i, s in enumerate(signs):
        G[i] = s * 1e30
    out = make(name)(G)
    honest = G[F:].abs().max()
    bound = {"signsgd": 1.0, "centered_clipping": 1.0 + honest}.get(name, 2.0 * honest)
    assert torch.isfinite(out).all()
    assert out.abs().max() <= bound * (1 + 1e-9), (name, float(out.abs().max()))


def test_mean_and_paper_scaled_fa_are_not_bounded():
    """What the bounded property excludes, shown: the mean and FA's paper output
    (1/p)·Y Yᵀ G 1 follow a huge Byzantine row."""
    G = torch.randn(11, 20, dtype=torch.float64)
    G[0] = 1e30
    assert make("mean")(G).abs().max() > 1e28
    assert aggregators.get("fa", output="paper")(G).abs().max() > 1e20


@pytest.mark.parametrize("name", sorted(PARAMS))
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nonfinite_input_is_a_clear_error_naming_rows(name, bad):
    G = torch.randn(11, 10)
    G[3, 4] = bad
    G[7, 0] = bad
    with pytest.raises(NonFiniteGradientError, match=r"\[3, 7\]"):
        make(name)(G)


@pytest.mark.parametrize(
    "name,p,f,text",
    [
        ("krum", 6, 2, "p >= 2f+3"),
        ("multi_krum", 8, 3, "p >= 2f+3"),
        ("bulyan", 14, 3, "p >= 4f+3"),
        ("trimmed_mean", 4, 2, "p >= 2f+1"),
        ("phocas", 4, 2, "p >= 2f+1"),
    ],
)
def test_preconditions_name_the_violated_condition(name, p, f, text):
    with pytest.raises(PreconditionError, match=re.escape(text)):
        aggregators.get(name, f=f)(torch.randn(p, 5))


def test_registry_rejects_unknown_names_and_parameters():
    with pytest.raises(ValueError, match="unknown aggregator 'nope'"):
        aggregators.get("nope")
    with pytest.raises(ValueError, match="multi_krum"):
        aggregators.get("multi_krum", bogus=1)
    with pytest.raises(ValueError, match="mode"):
        aggregators.get("fa", mode="fast")


def test_bad_shape_is_rejected():
    with pytest.raises(ValueError, match=r"\(p, n\)"):
        make("mean")(torch.randn(5))


def test_finite_rows_whose_sum_overflows_are_not_flagged():
    G = torch.randn(11, 10)
    G[2] = 3e38  # every element finite, the float32 row sum overflows to inf
    assert aggregators.nonfinite_rows(G) == []
    assert torch.isfinite(make("median")(G)).all()
