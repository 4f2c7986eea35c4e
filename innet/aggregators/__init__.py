"""Robust aggregation rules, interchangeable by name.

>>> from innet import aggregators
>>> rule = aggregators.get("multi_krum", f=3)
>>> aggregate = rule(G)          # G: (p, n) tensor -> (n,)
"""

from __future__ import annotations

from innet.aggregators import pre
from innet.aggregators.base import (
    Aggregator,
    NonFiniteGradientError,
    PreconditionError,
    nonfinite_rows,
)
from innet.aggregators.clipping import CenteredClipping
from innet.aggregators.coordinate import MeaMed, Median, Phocas, TrimmedMean
from innet.aggregators.flag import FAResult, FlagAggregator
from innet.aggregators.geomed import GeoMed
from innet.aggregators.krum import Bulyan, Krum, MultiKrum
from innet.aggregators.mean import Mean, SignSGD

REGISTRY: dict[str, type[Aggregator]] = {
    cls.name: cls
    for cls in (
        Mean,
        Median,
        TrimmedMean,
        MeaMed,
        Phocas,
        Krum,
        MultiKrum,
        Bulyan,
        GeoMed,
        CenteredClipping,
        SignSGD,
        FlagAggregator,
    )
}

NAMES = tuple(REGISTRY)


def get(name: str, **params) -> Aggregator:
    """Build the rule called ``name`` with its hyper-parameters (e.g. ``f=3``); a name
    with ``+`` is a pipeline of pre-aggregators and a rule (``"nnm+fa"``,
    :mod:`innet.aggregators.pre`)."""
    if "+" not in name and name not in REGISTRY:
        raise ValueError(f"unknown aggregator {name!r}; choose one of {', '.join(NAMES)}")
    allowed = parameters(name)
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(f"aggregator {name!r}: unknown parameter {unknown[0]!r}; allowed: "
                         f"{', '.join(allowed)}")
    try:
        return pre.build(name, params, REGISTRY) if "+" in name else REGISTRY[name](**params)
    except TypeError as err:
        raise ValueError(f"aggregator {name!r}: {err}") from None


def check_name(name: str) -> None:
    """Raise ValueError unless ``name`` is a rule or a pipeline ending in one."""
    *stages, rule = name.split("+")
    if rule not in REGISTRY:
        raise ValueError(f"{name!r} is not one of {', '.join(NAMES)}"
                         + (" (the last part of a pipeline is the rule)" if stages else ""))
    for stage in stages:
        if stage not in pre.PRE_REGISTRY:
            raise ValueError(f"{name!r}: {stage!r} is not a pre-aggregator "
                             f"({', '.join(pre.PRE_NAMES)})")


def parameters(name: str) -> list[str]:
    """The hyper-parameters rule ``name`` takes (what a scenario may set); for a
    pipeline also its stages' names (each a table of that stage's parameters) and
    ``seed`` (bucketing's permutations)."""
    import inspect

    if "+" in name:
        check_name(name)
        *stages, rule = name.split("+")
        return [*parameters(rule), *stages, *(["seed"] if "bucketing" in stages else [])]
    sig = inspect.signature(REGISTRY[name].__init__)
    return [p for p in sig.parameters if p != "self"
            and sig.parameters[p].kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                           inspect.Parameter.KEYWORD_ONLY)]


__all__ = [
    "Aggregator",
    "NonFiniteGradientError",
    "PreconditionError",
    "FAResult",
    "FlagAggregator",
    "NAMES",
    "REGISTRY",
    "get",
    "nonfinite_rows",
    "parameters",
]
