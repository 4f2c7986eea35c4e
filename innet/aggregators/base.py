"""The contract every aggregation rule follows.

A rule is an object built with its hyper-parameters and called on the stack of
worker vectors ``G`` of shape (p, n) (CPU or CUDA, float32 or float64); it returns
the aggregate of shape (n,) with the same dtype and device.

Non-finite input is an error: a rule raises :class:`NonFiniteGradientError` naming
the offending worker rows. The parameter server decides what to do with such a
worker (it treats it as Byzantine and replaces its row, see ``host.ps``), so the
maths here never silently propagates NaN.

The check costs a pass over G, as much as a numpy sum. A rule whose own pass finds
non-finite rows for free (a CPU kernel reading the exponent bits, a Gram matrix whose
diagonal is NaN/Inf exactly for those rows) sets ``finite_check_fused`` and raises
the same error from there, on the devices where that holds
(:meth:`Aggregator.fuses_finite_check`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


class NonFiniteGradientError(ValueError):
    """Raised when some worker rows hold NaN or Inf."""

    def __init__(self, rows: list[int]):
        self.rows = rows
        super().__init__(f"non-finite values (NaN/Inf) in worker rows {rows}")


class PreconditionError(ValueError):
    """Raised when a rule's requirement on (p, f) does not hold."""


def nonfinite_rows(G: torch.Tensor) -> list[int]:
    """Indices of rows of ``G`` that contain NaN or Inf.

    A NaN or Inf element always makes its row sum non-finite, so finite row sums (one
    cheap reduction) prove the stack clean; only otherwise is every element checked
    (a finite row can overflow its sum, which the element check then clears)."""
    if torch.isfinite(G.sum(dim=1)).all():
        return []
    bad = ~torch.isfinite(G).all(dim=1)
    return torch.nonzero(bad).flatten().tolist()


@dataclass(frozen=True)
class Cost:
    """What one call of a rule on a (p, n) float32 stack costs, in units that do not
    depend on the host running the emulation: bytes moved through memory, floating
    point operations, and kernel launches (each a fixed overhead on a GPU). A device
    profile (``emulator.timing.ComputeProfile``) turns it into seconds, so a run's
    modelled time is a function of its settings alone."""

    bytes: float = 0.0
    flops: float = 0.0
    launches: int = 0

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.bytes + other.bytes, self.flops + other.flops,
                    self.launches + other.launches)


VALUE_BYTES = 4  # the workers' gradients are float32


def passes(p: int, n: int, count: float = 1.0, flops_per_value: float = 1.0,
           launches: int = 1) -> Cost:
    """``count`` reads of the (p, n) stack with ``flops_per_value`` operations per value."""
    return Cost(count * p * n * VALUE_BYTES, count * flops_per_value * p * n, launches)


def gram_cost(p: int, n: int) -> Cost:
    """The p×p Gram matrix of the stack: one blocked GEMM pass, 2·p²·n operations."""
    return Cost(p * n * VALUE_BYTES, 2.0 * p * p * n, 1)


class Aggregator:
    """Base class: input checks, then :meth:`aggregate`."""

    name = "aggregator"
    #: the rule's own CPU pass raises NonFiniteGradientError: check() skips its scan there
    finite_check_fused = False
    #: smallest p for a given f, as (formula text, function); None when any p >= 1 works
    requirement: tuple[str, object] | None = None

    def __init__(self, f: int = 0):
        if not isinstance(f, int) or f < 0:
            raise ValueError(f"{self.name}: f must be a non-negative integer, got {f!r}")
        self.f = f

    def fuses_finite_check(self, G: torch.Tensor) -> bool:
        """Whether :meth:`aggregate` detects non-finite rows of G itself (the fused
        checks exist for float32/float64 on the CPU)."""
        return (self.finite_check_fused and G.device.type == "cpu"
                and G.dtype in (torch.float32, torch.float64))

    def check(self, G: torch.Tensor) -> None:
        if G.ndim != 2:
            raise ValueError(f"{self.name}: expected a (p, n) tensor, got shape {tuple(G.shape)}")
        if not G.is_floating_point():
            raise ValueError(f"{self.name}: expected a floating tensor, got {G.dtype}")
        p = G.shape[0]
        if p < 1:
            raise ValueError(f"{self.name}: needs at least one worker row")
        if self.requirement is not None:
            text, ok = self.requirement
            if not ok(p, self.f):
                raise PreconditionError(
                    f"{self.name} needs {text} (got p={p}, f={self.f})"
                )
        if not self.fuses_finite_check(G):
            bad = nonfinite_rows(G)
            if bad:
                raise NonFiniteGradientError(bad)

    def __call__(self, G: torch.Tensor) -> torch.Tensor:
        self.check(G)
        return self.aggregate(G)

    def aggregate(self, G: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def state(self) -> dict:
        """What the rule carries from one call to the next (for checkpoints); most
        rules are stateless."""
        return {}

    def load_state(self, state: dict) -> None:
        if state:
            raise ValueError(f"{self.name}: unexpected saved state {sorted(state)}")

    def cost(self, p: int, n: int) -> Cost:
        """The modelled cost of one call on a (p, n) stack (see :class:`Cost`); the
        default is one pass with one operation per value. Rules override it with the
        passes, operations and launches of their implementation."""
        return passes(p, n)

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({params})"
