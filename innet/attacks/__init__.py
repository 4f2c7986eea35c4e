"""Byzantine attacks by name: gradient-space (``kind == 'gradient'``) and data-space
(``kind == 'data'``)."""

from __future__ import annotations

from innet.attacks.data_space import CatMap, DataAttack, GaussianNoise, LotkaVolterra
from innet.attacks.gradient import (
    ALIE,
    IPM,
    BitFlip,
    Constant,
    Drop,
    GradientAttack,
    Scaled,
    UniformRandom,
    alie_z,
)

REGISTRY = {
    cls.name: cls
    for cls in (
        UniformRandom,
        Scaled,
        Constant,
        ALIE,
        IPM,
        BitFlip,
        Drop,
        LotkaVolterra,
        CatMap,
        GaussianNoise,
    )
}
NAMES = tuple(REGISTRY)


def get(name: str, **params):
    """Build the attack called ``name``; 'none' gives None."""
    if name == "none":
        return None
    try:
        cls = REGISTRY[name]
    except KeyError:
        choices = ", ".join(("none", *NAMES))
        raise ValueError(f"unknown attack {name!r}; choose one of {choices}") from None
    try:
        return cls(**params)
    except TypeError as err:
        raise ValueError(f"attack {name!r}: {err}") from None


__all__ = ["DataAttack", "GradientAttack", "NAMES", "REGISTRY", "alie_z", "get"]
