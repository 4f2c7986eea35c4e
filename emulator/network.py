"""Links that lose, duplicate and reorder packets, seeded per link.

A link maps the positions of a batch of packets to the positions that arrive, in
arrival order (positions may repeat: duplicates). Everything is vectorised with
numpy; the Gilbert–Elliott chain runs in a small Numba loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np


@numba.njit(cache=True)
def _gilbert_elliott(u_state, u_loss, p_gb, p_bg, loss_good, loss_bad, start_bad):
    n = u_state.shape[0]
    lost = np.zeros(n, dtype=np.bool_)
    bad = start_bad
    for i in range(n):
        lost[i] = u_loss[i] < (loss_bad if bad else loss_good)
        if bad:
            bad = not (u_state[i] < p_bg)
        else:
            bad = u_state[i] < p_gb
    return lost, bad


@dataclass
class LinkModel:
    """Per-packet behaviour of one direction of one link.

    ``loss``: Bernoulli loss probability. ``burst``: optional Gilbert–Elliott
    (p_good→bad, p_bad→good, loss in good, loss in bad) replacing ``loss``.
    ``duplicate``: probability a packet arrives twice. ``reorder``: maximum displacement
    (in packets) of the bounded reordering. ``down_between``: (start, stop) batch
    numbers during which every packet is lost (a failed port).
    """

    loss: float = 0.0
    burst: tuple[float, float, float, float] | None = None
    duplicate: float = 0.0
    reorder: int = 0
    down_between: tuple[int, int] | None = None

    def __post_init__(self):
        for name in ("loss", "duplicate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"link.{name} must be in [0, 1], got {value}")
        if self.reorder < 0:
            raise ValueError(f"link.reorder must be >= 0, got {self.reorder}")
        if self.burst is not None and (len(self.burst) != 4
                                       or not all(0.0 <= x <= 1.0 for x in self.burst)):
            raise ValueError(f"link.burst must be 4 probabilities, got {self.burst}")

    @property
    def lossless(self) -> bool:
        return (self.loss == 0 and self.burst is None and self.duplicate == 0
                and self.reorder == 0 and self.down_between is None)


class Link:
    """A seeded instance of a :class:`LinkModel`."""

    def __init__(self, model: LinkModel, seed: int):
        self.model = model
        self.rng = np.random.default_rng(seed)
        self.bad_state = False
        self.batches = 0
        self.sent = self.lost = self.duplicated = 0

    def transmit(self, n: int) -> np.ndarray:
        """Positions (into a batch of n packets) that arrive, in arrival order."""
        m, batch = self.model, self.batches
        self.batches += 1
        self.sent += n
        if m.lossless or n == 0:
            return np.arange(n)
        if m.down_between is not None and m.down_between[0] <= batch < m.down_between[1]:
            self.lost += n
            return np.arange(0)
        if m.burst is not None:
            lost, self.bad_state = _gilbert_elliott(
                self.rng.random(n), self.rng.random(n), *m.burst, self.bad_state)
        else:
            lost = self.rng.random(n) < m.loss if m.loss > 0 else np.zeros(n, bool)
        keep = np.flatnonzero(~lost)
        self.lost += n - len(keep)
        if m.duplicate > 0:
            dup = keep[self.rng.random(len(keep)) < m.duplicate]
            self.duplicated += len(dup)
            keep = np.concatenate([keep, dup])
            keep.sort(kind="stable")
        if m.reorder > 0:  # bounded reordering: jitter every position by < reorder slots
            key = np.arange(len(keep)) + self.rng.uniform(0, m.reorder, len(keep))
            keep = keep[np.argsort(key, kind="stable")]
        return keep
