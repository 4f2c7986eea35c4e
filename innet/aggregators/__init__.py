"""Robust aggregation rules, interchangeable by name.

>>> from innet import aggregators
>>> rule = aggregators.get("multi_krum", f=3)
>>> aggregate = rule(G)          # G: (p, n) tensor -> (n,)
"""

from __future__ import annotations

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
    """Build the rule called ``name`` with its hyper-parameters (e.g. ``f=3``)."""
    try:
        cls = REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown aggregator {name!r}; choose one of {', '.join(NAMES)}") from None
    allowed = parameters(name)
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(f"aggregator {name!r}: unknown parameter {unknown[0]!r}; allowed: "
                         f"{', '.join(allowed)}")
    try:
        return cls(**params)
    except TypeError as err:
        raise ValueError(f"aggregator {name!r}: {err}") from None


def parameters(name: str) -> list[str]:
    """The hyper-parameters rule ``name`` takes (what a scenario may set)."""
    import inspect

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
