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
  serialised on one link), the server aggregates, and sends the update back
  (p·n·4 bytes out of the same link), plus a round trip. Over lossy links its
  reliable transport (TCP-like) resends what was lost after the same timeout the
  switch path's workers use (:meth:`TimeModel.retransmission_s`).
* **compute** (the rule on the PS, the offload's sketches and control-plane solve):
  never the host's measured time, which carries the noise of whatever else the
  emulating machine does. Each rule states its cost (``Aggregator.cost``: bytes,
  operations, kernel launches) and a :class:`ComputeProfile` turns that into seconds
  (a roofline: the larger of memory and arithmetic time, plus a fixed cost per
  launch). Two runs of one scenario therefore model identical times.

Defaults follow REFERENCE §4: 100 Gb/s links, ~1 µs propagation, a few hundred ns
per pipeline pass; the timeout is SwitchML's order of magnitude (≈ 1 ms).
"""

from __future__ import annotations

from dataclasses import dataclass

from innet.aggregators.base import Cost
from p4_models.switchml_sum import ETH_IP_UDP_BYTES, HEADER_BYTES

WIRE_OVERHEAD_BYTES = 8 + 12 + 4  # preamble + inter-frame gap + FCS


@dataclass(frozen=True)
class ComputeProfile:
    """A device as the time model sees it: sustained memory bandwidth, sustained
    float32 rate and the fixed cost of one kernel launch (or call)."""

    name: str
    memory_gbps: float  #: GB/s
    gflops: float  #: GFLOP/s, float32
    launch_us: float  #: per kernel launch

    def seconds(self, cost: Cost) -> float:
        return (max(cost.bytes / (self.memory_gbps * 1e9), cost.flops / (self.gflops * 1e9))
                + 1e-6 * self.launch_us * cost.launches)


#: the device profiles a scenario can name (``network.host_profile``,
#: ``network.control_plane_profile``). GPU figures are the vendors' datasheet HBM
#: bandwidth and non-tensor float32 peak; the CPU figures are sustained, not peak.
PROFILES = {
    "a100": ComputeProfile("a100", 1555.0, 19_500.0, 5.0),  # A100 40 GB SXM
    "h100": ComputeProfile("h100", 3350.0, 67_000.0, 5.0),  # H100 SXM
    #: a two-socket server: 16 DDR5 channels, AVX-512 over 64 cores, sustained
    "cpu_server": ComputeProfile("cpu_server", 300.0, 3_000.0, 1.0),
    #: a Tofino switch's control-plane CPU (a 4-core Xeon D class part) running
    #: scalar fixed-point code: the quantized eigensolvers of the FA offload
    "switch_cpu": ComputeProfile("switch_cpu", 20.0, 10.0, 0.5),
}


@dataclass(frozen=True)
class TimeModel:
    bandwidth_gbps: float = 100.0
    latency_us: float = 1.0  #: one-way propagation + NIC, host ↔ switch
    pass_ns: float = 400.0  #: one pass through the switch pipeline
    timeout_us: float = 1000.0  #: retransmission timer of the workers
    recirculations: int = 0  #: extra passes per packet (from the program's report)
    host: ComputeProfile = PROFILES["a100"]  #: the PS and the workers
    control_plane: ComputeProfile = PROFILES["switch_cpu"]  #: the switch's CPU

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

    def header_packet_bytes(self) -> int:
        """A header-only packet (the exponent preamble's) on the wire."""
        return ETH_IP_UDP_BYTES + HEADER_BYTES + WIRE_OVERHEAD_BYTES

    def switch_step_s(self, round_log, k: int) -> float:
        """Modelled seconds of one allreduce from its per-round log rows
        (busiest up link, busiest down link, packets up, packets down, retransmit?,
        and optionally header-only?)."""
        rtt = 2e-6 * self.latency_us + 1e-9 * self.pass_ns * (1 + self.recirculations)
        total = 0.0
        for row in round_log:
            up_max, down_max, _, _, retransmit = row[:5]
            pkt = self.header_packet_bytes() if len(row) > 5 and row[5] else self.packet_bytes(k)
            total += self.serialise_s(max(up_max, down_max) * pkt) + rtt
            if retransmit:
                total += 1e-6 * self.timeout_us
        return total

    def ps_bytes(self, p: int, n: int, k: int = 64) -> int:
        """Bytes through the PS's link for one step: every worker's gradient of n
        float32 values in packets of k, and the update back out to each."""
        return 2 * p * -(-n // k) * self.packet_bytes(k)

    def ps_step_s(self, p: int, n: int, compute: Cost, k: int = 64) -> float:
        """Modelled seconds of one PS aggregation of p float32 vectors of n values,
        sent in packets of k values, with the rule's modelled compute on the host."""
        return (self.serialise_s(self.ps_bytes(p, n, k)) + 2e-6 * self.latency_us
                + self.host.seconds(compute))

    def retransmission_s(self, resent_per_round, k: int = 64) -> float:
        """Modelled seconds a reliable (TCP-like) transport adds to a PS step: each
        round of retransmissions waits the timeout, then serialises what it resends
        through the PS's link, then a round trip."""
        rtt = 2e-6 * self.latency_us
        return sum(1e-6 * self.timeout_us + self.serialise_s(count * self.packet_bytes(k)) + rtt
                   for count in resent_per_round)
