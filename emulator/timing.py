"""A time model for one aggregation step: what the step would take on a real network.

Emulation runs at host speed; the model turns what the emulator counted into the
time a rack would need, so paths can be compared on time-to-accuracy:

* **switch path** (per round of the allreduce, from ``AllreduceStats.round_log``):
  the busiest up link serialises its packets, the switch adds one pipeline pass per
  (re)circulation, the busiest down link serialises the results, plus a round trip
  of propagation; a retransmission round first waits for the timeout. Up and down
  streams overlap (a slot's result leaves as soon as its last packet is in), so a
  round costs max(up, down) serialisation, not the sum.
* **PS path**: p full gradients converge on the server's link (incast: p·n·4 bytes
  serialised on one link), the server aggregates (measured compute time), and
  sends the update back (p·n·4 bytes out of the same link), plus a round trip.

Defaults follow REFERENCE §4: 100 Gb/s links, ~1 µs propagation, a few hundred ns
per pipeline pass; the timeout is SwitchML's order of magnitude (≈ 1 ms).
"""

from __future__ import annotations

from dataclasses import dataclass

from p4_models.switchml_sum import ETH_IP_UDP_BYTES, HEADER_BYTES

WIRE_OVERHEAD_BYTES = 8 + 12 + 4  # preamble + inter-frame gap + FCS


@dataclass(frozen=True)
class TimeModel:
    bandwidth_gbps: float = 100.0
    latency_us: float = 1.0  #: one-way propagation + NIC, host ↔ switch
    pass_ns: float = 400.0  #: one pass through the switch pipeline
    timeout_us: float = 1000.0  #: retransmission timer of the workers
    recirculations: int = 0  #: extra passes per packet (from the program's report)

    def __post_init__(self):
        for name in ("bandwidth_gbps", "latency_us", "pass_ns", "timeout_us"):
            if not getattr(self, name) > 0:
                raise ValueError(f"time model: {name} must be > 0, got {getattr(self, name)}")
        if self.recirculations < 0:
            raise ValueError("time model: recirculations must be >= 0")

    def serialise_s(self, n_bytes: float) -> float:
        return 8.0 * n_bytes / (self.bandwidth_gbps * 1e9)

    def packet_bytes(self, k: int) -> int:
        return ETH_IP_UDP_BYTES + HEADER_BYTES + 4 * k + WIRE_OVERHEAD_BYTES

    def switch_step_s(self, round_log, k: int) -> float:
        """Modelled seconds of one allreduce from its per-round log rows
        (busiest up link, busiest down link, packets up, packets down, retransmit?)."""
        pkt = self.packet_bytes(k)
        rtt = 2e-6 * self.latency_us + 1e-9 * self.pass_ns * (1 + self.recirculations)
        total = 0.0
        for up_max, down_max, _, _, retransmit in round_log:
            total += self.serialise_s(max(up_max, down_max) * pkt) + rtt
            if retransmit:
                total += 1e-6 * self.timeout_us
        return total

    def ps_bytes(self, p: int, n: int, k: int = 64) -> int:
        """Bytes through the PS's link for one step: every worker's gradient of n
        float32 values in packets of k, and the update back out to each."""
        return 2 * p * -(-n // k) * self.packet_bytes(k)

    def ps_step_s(self, p: int, n: int, compute_s: float, k: int = 64) -> float:
        """Modelled seconds of one PS aggregation of p float32 vectors of n values,
        sent in packets of k values, with the measured aggregation compute time."""
        return self.serialise_s(self.ps_bytes(p, n, k)) + 2e-6 * self.latency_us + compute_s
