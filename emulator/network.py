"""Links that lose, duplicate, reorder and delay packets, seeded per link.

A link maps the positions of a batch of packets to the positions that arrive, in
arrival order (positions may repeat: duplicates). A delayed packet arrives in a later
batch: :func:`hold_into` takes it out of this batch's arrivals and names the batch of
this link it is due in (1 … ``max_delay`` batches later); the caller keeps the packet
and delivers it first when that batch is sent. So packets arrive late across rounds,
windows and steps — the late copies and late duplicates a switch must not count.
The per-packet fate is drawn in a Numba kernel (:func:`transmit_into`) from a small
counter-based generator (SplitMix64) whose state lives in the link's state vector,
so the same kernel serves the Python :class:`Link` and the compiled allreduce rounds
in ``host.switch_allreduce`` with identical streams.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

# parameter vector of one link (float64)
P_LOSS, P_BURST, P_GB, P_BG, P_LOSS_GOOD, P_LOSS_BAD, P_DUP, P_REORDER, P_DOWN_FROM, \
    P_DOWN_TO, P_LOSSLESS, P_DELAY, P_MAX_DELAY = range(13)
N_PARAMS = 13
# state vector of one link (int64): generator, Gilbert–Elliott state, counters
S_RNG, S_BAD, S_BATCHES, S_SENT, S_LOST, S_DUPLICATED = range(6)
N_STATE = 6

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_TO_UNIT = 1.0 / 9007199254740992.0  # 2^-53
MAX_DELAY = 64  #: batches a packet can be held back (the callers' hold buffers are sized by it)


@numba.njit(cache=True, inline="always")
def uniform(state):
    """Next U[0, 1) of the SplitMix64 stream kept in state[S_RNG] (wrapping uint64)."""
    x = np.uint64(state[S_RNG]) + _GOLDEN
    state[S_RNG] = np.int64(x)
    z = (x ^ (x >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    z = z ^ (z >> np.uint64(31))
    return np.float64(z >> np.uint64(11)) * _TO_UNIT


@numba.njit(cache=True)
def transmit_into(params, state, n, out, keys):
    """Fate of a batch of n packets on one link: writes the arriving positions, in
    arrival order, to out[:count] and returns count. out and keys need 2n entries."""
    batch = state[S_BATCHES]
    state[S_BATCHES] += 1
    state[S_SENT] += n
    if params[P_LOSSLESS] != 0.0:
        for i in range(n):
            out[i] = i
        return n
    if params[P_DOWN_FROM] <= batch < params[P_DOWN_TO]:  # failed port
        state[S_LOST] += n
        return 0
    count = 0
    bad = state[S_BAD] != 0
    burst = params[P_BURST] != 0.0
    q = params[P_LOSS]
    simple = not burst and params[P_DUP] == 0.0
    log_keep = np.log1p(-q) if simple and 0.0 < q < 1.0 else 0.0
    if simple and log_keep == 0.0 and q < 0.5:  # loss too rare to ever draw: lossless
        for i in range(n):
            out[i] = i
        count = n
    elif simple and log_keep < 0.0:
        # Bernoulli loss without duplication: jump from loss to loss with geometric
        # gaps (one draw per lost packet instead of one per packet)
        i = 0
        while i < n:
            gap = np.log(1.0 - uniform(state)) / log_keep  # >= 0, maybe huge or inf
            stop = i + int(gap) if gap < n - i else n
            for j in range(i, stop):
                out[count] = j
                count += 1
            if stop >= n:
                break
            state[S_LOST] += 1  # packet `stop` is lost
            i = stop + 1
    else:
        for i in range(n):
            if burst:  # Gilbert–Elliott: loss by state, then the state moves
                lost = uniform(state) < (params[P_LOSS_BAD] if bad else params[P_LOSS_GOOD])
                u = uniform(state)
                bad = (u >= params[P_BG]) if bad else (u < params[P_GB])
            else:
                lost = q > 0.0 and uniform(state) < q
            if lost:
                state[S_LOST] += 1
                continue
            out[count] = i
            count += 1
            if params[P_DUP] > 0.0 and uniform(state) < params[P_DUP]:
                out[count] = i
                count += 1
                state[S_DUPLICATED] += 1
    state[S_BAD] = 1 if bad else 0
    reorder = params[P_REORDER]
    if reorder > 0.0 and count > 1:  # bounded reordering: jitter each position by < reorder
        for j in range(count):
            keys[j] = j + reorder * uniform(state)
        order = np.argsort(keys[:count], kind="mergesort")
        tmp = out[:count].copy()
        for j in range(count):
            out[j] = tmp[order[j]]
    return count


@numba.njit(cache=True)
def hold_into(params, state, out, count, late, due):
    """Delay across batches: each of the ``count`` arrivals out[:count] (of the batch
    :func:`transmit_into` just drew) is held back with probability ``delay``. The held
    positions go to late[:n_late] with the batch number they arrive in, due[:n_late]
    (this batch + 1 … ``max_delay``); out keeps the rest, in order. Returns
    (arrivals now, n_late). Draws from the link's stream only when ``delay`` > 0."""
    q = params[P_DELAY]
    if q <= 0.0 or count == 0:
        return count, 0
    batch = state[S_BATCHES] - 1  # the batch transmit_into just drew
    span = params[P_MAX_DELAY]
    now = 0
    n_late = 0
    for j in range(count):
        if uniform(state) < q:
            late[n_late] = out[j]
            due[n_late] = batch + 1 + min(int(uniform(state) * span), int(span) - 1)
            n_late += 1
        else:
            out[now] = out[j]
            now += 1
    return now, n_late


def seed_state(seed: int) -> np.ndarray:
    state = np.zeros(N_STATE, dtype=np.int64)
    # spread small consecutive seeds over the generator's period
    mixed = ((seed & 0xFFFFFFFFFFFFFFFF) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    state[S_RNG] = mixed - (1 << 64) if mixed >= 1 << 63 else mixed
    return state


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
    delay: float = 0.0
    max_delay: int = 0

    def __post_init__(self):
        for name in ("loss", "duplicate", "delay"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"link.{name} must be in [0, 1], got {value}")
        if self.reorder < 0:
            raise ValueError(f"link.reorder must be >= 0, got {self.reorder}")
        if not isinstance(self.max_delay, int) or not 0 <= self.max_delay <= MAX_DELAY:
            raise ValueError(f"link.max_delay must be an integer in 0..{MAX_DELAY} batches, "
                             f"got {self.max_delay!r}")
        if self.delay > 0 and self.max_delay < 1:
            raise ValueError("link.max_delay must be >= 1 when link.delay > 0")
        if self.burst is not None and (len(self.burst) != 4
                                       or not all(0.0 <= x <= 1.0 for x in self.burst)):
            raise ValueError(f"link.burst must be 4 probabilities, got {self.burst}")
        if self.down_between is not None and (len(self.down_between) != 2
                                              or self.down_between[0] > self.down_between[1]):
            raise ValueError(f"link.down_between must be (start, stop), got {self.down_between}")

    @property
    def lossless(self) -> bool:
        return (self.loss == 0 and self.burst is None and self.duplicate == 0
                and self.reorder == 0 and self.down_between is None and self.delay == 0)

    def params(self) -> np.ndarray:
        v = np.zeros(N_PARAMS, dtype=np.float64)
        v[P_LOSS], v[P_DUP], v[P_REORDER] = self.loss, self.duplicate, self.reorder
        if self.burst is not None:
            v[P_BURST] = 1.0
            v[P_GB], v[P_BG], v[P_LOSS_GOOD], v[P_LOSS_BAD] = self.burst
        v[P_DOWN_FROM], v[P_DOWN_TO] = self.down_between or (-1, -1)
        v[P_LOSSLESS] = float(self.lossless)
        v[P_DELAY], v[P_MAX_DELAY] = self.delay, self.max_delay
        return v


class Link:
    """A seeded instance of a :class:`LinkModel` (its state is a small int64 vector)."""

    def __init__(self, model: LinkModel, seed: int):
        self.model = model
        self.params = model.params()
        self.state = seed_state(seed)

    sent = property(lambda self: int(self.state[S_SENT]))
    lost = property(lambda self: int(self.state[S_LOST]))
    duplicated = property(lambda self: int(self.state[S_DUPLICATED]))
    batches = property(lambda self: int(self.state[S_BATCHES]))

    def transmit(self, n: int) -> np.ndarray:
        """Positions (into a batch of n packets) that arrive, in arrival order. A link
        that delays packets needs :meth:`transmit_late`."""
        if self.model.delay > 0:
            raise ValueError("this link delays packets across batches: use transmit_late")
        out = np.empty(2 * n, dtype=np.int64)
        keys = np.empty(2 * n, dtype=np.float64)
        count = transmit_into(self.params, self.state, n, out, keys)
        return out[:count].copy()

    def transmit_late(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(positions arriving now, positions held back, the batch each held one is
        due in) for a batch of n packets; the caller keeps the held packets and
        delivers them first when :attr:`batches` reaches their due batch."""
        out = np.empty(2 * n, dtype=np.int64)
        keys = np.empty(2 * n, dtype=np.float64)
        late = np.empty(2 * n, dtype=np.int64)
        due = np.empty(2 * n, dtype=np.int64)
        count = transmit_into(self.params, self.state, n, out, keys)
        now, n_late = hold_into(self.params, self.state, out, count, late, due)
        return out[:now].copy(), late[:n_late].copy(), due[:n_late].copy()


def stack_links(links: list[Link]) -> tuple[np.ndarray, np.ndarray]:
    """The parameter and state vectors of links stacked for the compiled rounds, once:
    each link's own vectors become views of its rows, so what the kernel draws and
    what the links' methods (or a crash) change are one state, with no copy per
    window."""
    params = np.stack([link.params for link in links])
    state = np.stack([link.state for link in links])
    for i, link in enumerate(links):
        link.params, link.state = params[i], state[i]
    return params, state

