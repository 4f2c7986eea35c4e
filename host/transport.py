"""Sending gradients once, with no recovery: what is lost stays lost.

The seeds' packet-loss experiment (REFERENCE §1.5, §3 "drop") loses a fraction of the
gradient packets of f workers and lets the aggregator cope. Here each worker's
gradient is cut into packets of k values, exactly as the wire format does; each
packet crosses the worker's up link (the emulator's :class:`emulator.network.Link`,
so Bernoulli, Gilbert–Elliott bursts and failed ports behave as on the switch path);
the receiver — parameter server or switch — fills the values of a lost packet with
zeros, which is what a receiver without retransmission can do. (The FA reference
code meant to do this but its masked_fill was not in place; REFERENCE §1.3.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from emulator.network import Link, LinkModel


@dataclass
class DeliveryStats:
    packets: int = 0  #: gradient packets sent (all workers)
    lost: int = 0  #: packets that never arrived (their values were zero-filled)
    values_lost: int = 0  #: gradient values inside the lost packets


class UnreliableUplink:
    """p workers' up links without retransmission. ``send(G)`` returns the gradients
    as received (lost packets zero-filled) and what was lost."""

    def __init__(self, models: list[LinkModel], k: int, seed: int = 0):
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.k = k
        self.links = [Link(m, seed * 1_000_003 + 7_000 + i) for i, m in enumerate(models)]
        self.lossy = [i for i, m in enumerate(models) if not m.lossless]

    def send(self, G: torch.Tensor) -> tuple[torch.Tensor, DeliveryStats]:
        p, n = G.shape
        if p != len(self.links):
            raise ValueError(f"expected {len(self.links)} rows, got {p}")
        packets = -(-n // self.k)
        stats = DeliveryStats(packets=p * packets)
        if not self.lossy:
            return G, stats
        out = G.clone()
        for i in self.lossy:  # one vectorised draw per worker, not per packet
            arrived = np.zeros(packets, dtype=bool)
            # a packet the link delays arrives after the receiver has used the step's
            # values: without retransmission it is as good as lost
            arrived[self.links[i].transmit_late(packets)[0]] = True
            lost = np.flatnonzero(~arrived)
            if lost.size == 0:
                continue
            cols = (lost[:, None] * self.k + np.arange(self.k)).reshape(-1)
            cols = torch.from_numpy(cols[cols < n]).to(out.device)
            out[i, cols] = 0.0
            stats.lost += int(lost.size)
            stats.values_lost += int(cols.numel())
        return out, stats


class ReliableTransport:
    """The PS path's transport over lossy links when recovery is on: TCP-like, every
    lost packet is sent again after the retransmission timeout until it arrives.
    The gradients arrive intact (the PS computes on G as sent); what this adds is
    the cost: ``step(n)`` draws, per round, which of each worker's outstanding packets
    its up link loses, then the same for the update going back down, and returns the
    packets resent in each retransmission round (the time model charges each round
    a timeout, the serialisation of what it resends and a round trip).

    Links are seeded apart from the switch path's, and a failed port (``down_between``)
    counts in rounds of this transport. ``max_rounds`` bounds a step; a link still
    losing everything after that many rounds raises rather than hang a run."""

    def __init__(self, up: list[LinkModel], down: list[LinkModel], k: int, seed: int = 0,
                 max_rounds: int = 100_000):
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.k, self.max_rounds = k, max_rounds
        self.up = [Link(m, seed * 1_000_003 + 9_000 + i) for i, m in enumerate(up)]
        self.down = [Link(m, seed * 1_000_003 + 11_000 + i) for i, m in enumerate(down)]
        self.lossless = all(m.lossless for m in (*up, *down))

    def step(self, n: int) -> list[int]:
        """Packets resent in each retransmission round of one step (empty: none lost)."""
        if self.lossless:
            return []
        packets = -(-n // self.k)
        return self._deliver(self.up, packets) + self._deliver(self.down, packets)

    def _deliver(self, links: list[Link], packets: int) -> list[int]:
        outstanding = np.full(len(links), packets, dtype=np.int64)
        resent = []
        for rounds in range(self.max_rounds + 1):
            for i, link in enumerate(links):
                if outstanding[i]:  # duplicates and reordering cost TCP nothing here;
                    # a delayed packet is resent at the timeout like a lost one
                    arrived = np.unique(link.transmit_late(int(outstanding[i]))[0])
                    outstanding[i] -= arrived.size
            if not outstanding.any():
                return resent
            if rounds == self.max_rounds:
                break
            resent.append(int(outstanding.sum()))
        raise RuntimeError(f"reliable transport: packets still lost after {self.max_rounds} "
                           "retransmission rounds (a link that never recovers?)")
