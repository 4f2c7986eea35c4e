"""The scenario schema: a plain dataclass tree, one class per TOML table.

Field comments starting ``#:`` are the reference documentation of each key
(docs/USAGE.md); defaults here are the defaults of a scenario file that omits a key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Workers:
    p: int = 15  #: number of workers
    f: int = 3  #: how many of them are Byzantine (the first f)
    attack: str = "uniform"  #: an innet.attacks name, or "none"
    attack_params: dict[str, Any] = field(default_factory=dict)


@dataclass
class Data:
    dataset: str = "digits"
    model: str = "mlp"
    batch: int = 32  #: per worker
    root: str = ""  #: local folder for mnist/cifar10
    download: bool = False


@dataclass
class Training:
    steps: int = 300
    lr: float = 0.1
    momentum: float = 0.0
    weight_decay: float = 0.0
    milestones: list[int] = field(default_factory=list)  #: steps where lr is multiplied by gamma
    gamma: float = 0.2
    eval_every: int = 50  #: steps between test evaluations (and at the last step)
    nonfinite: str = "zero"  #: PS policy for NaN/Inf rows: "zero" or "error"
    #: steps between checkpoints (0: none); a killed run resumes from the last one
    checkpoint_every: int = 0


@dataclass
class LinkOverride:
    """One worker's link, overriding the network-wide loss settings (unset = inherit)."""

    worker: int = -1  #: worker id
    up_loss: float | None = None  #: Bernoulli loss, worker → switch
    down_loss: float | None = None  #: Bernoulli loss, switch → worker
    up_burst: list[float] | None = None  #: Gilbert–Elliott (p_gb, p_bg, l_g, l_b), up
    down_burst: list[float] | None = None  #: Gilbert–Elliott, down


@dataclass
class Network:
    """Links between workers and the switch (used by ``via = "switch"`` paths)."""

    up_loss: float = 0.0  #: Bernoulli loss, worker → switch
    down_loss: float = 0.0  #: Bernoulli loss, switch → worker (multicast/unicast results)
    duplicate: float = 0.0  #: probability a packet arrives twice (both directions)
    reorder: int = 0  #: maximum reordering displacement in packets (both directions)
    #: probability a packet is held back and arrives 1 … max_delay rounds later, in a
    #: later window or step (both directions; needs max_delay >= 1)
    delay: float = 0.0
    max_delay: int = 0  #: rounds a delayed packet is late by, at most
    burst: list[float] = field(default_factory=list)  #: Gilbert–Elliott (p_gb, p_bg, l_g, l_b)
    lossy_workers: list[int] = field(default_factory=list)  #: links with loss; empty = all
    k: int = 64  #: int32 values per packet
    pool_size: int = 512  #: switch slots per shadow set for the job
    max_retries: int = 20  #: timeouts before a chunk goes to the PS fallback
    failed_port: list[int] = field(default_factory=list)  #: [worker, from_round, to_round]
    links: list[LinkOverride] = field(default_factory=list)  #: per-link loss settings
    #: True: lost packets are retransmitted (switch paths; PS paths use a reliable
    #: transport). False: what is lost stays lost on every path — the receiver (PS or
    #: switch) fills the lost packets' values with zeros (the seeds' loss experiment).
    recovery: bool = True
    crash: list[int] = field(default_factory=list)  #: [worker, step]: it dies mid-step
    # the time model (emulator.timing): what a step would take on a real rack
    bandwidth_gbps: float = 100.0  #: every host ↔ switch link
    latency_us: float = 1.0  #: one way, host ↔ switch
    pass_ns: float = 400.0  #: one switch pipeline pass
    timeout_us: float = 1000.0  #: the workers' retransmission timer
    #: device profile of the PS and the workers (emulator.timing.PROFILES): the
    #: rules' modelled compute time
    host_profile: str = "a100"
    #: device profile of the switch's control plane (the FA offload's solve)
    control_plane_profile: str = "switch_cpu"


@dataclass
class AggregationPath:
    """One aggregation path: where the aggregation runs and with which rule."""

    rule: str = "mean"
    via: str = "ps"  #: "ps" (parameter server, float) or "switch" (in-network integer sum)
    label: str = ""  #: name in the outputs; defaults to "<rule>" (or "<via>:<rule>")
    params: dict[str, Any] = field(default_factory=dict)  #: rule hyper-parameters

    @property
    def name(self) -> str:
        return self.label or (self.rule if self.via == "ps" else f"{self.via}:{self.rule}")


@dataclass
class Expectation:
    """A claim the report checks on final test accuracies, e.g.
    ``check = "'fa' >= 'multi_krum' - 0.01"`` (a quoted name is that path's final
    accuracy), optionally only at sweep points where ``where`` holds
    (``where = "workers.f >= 1"``)."""

    check: str = ""
    where: str = ""


@dataclass
class Report:
    """What the report says next to its figures."""

    claim: str = ""  #: the seeds' claim this scenario reproduces (REFERENCE §1.5)
    x: str = ""  #: sweep key on the x axis of "final accuracy vs …" (default: the first)
    expect: list[Expectation] = field(default_factory=list)  #: checked and reported


@dataclass
class Scenario:
    name: str = "default"
    seed: int = 0
    #: run every path once per seed (mean ± sd in the summary); empty: just ``seed``
    seeds: list[int] = field(default_factory=list)
    device: str = "auto"
    out: str = ""  #: output folder; defaults to runs/<name>
    workers: Workers = field(default_factory=Workers)
    data: Data = field(default_factory=Data)
    training: Training = field(default_factory=Training)
    network: Network = field(default_factory=Network)
    paths: list[AggregationPath] = field(
        default_factory=lambda: [
            AggregationPath(rule=r) for r in ("mean", "median", "multi_krum", "bulyan", "fa")
        ]
    )
    #: a grid: dotted scenario key → list of values (``innet sweep``; ``innet run`` too)
    sweep: dict[str, Any] = field(default_factory=dict)
    report: Report = field(default_factory=Report)


VIAS = ("ps", "switch", "offload")
SWITCH_RULES = ("mean",)
#: parameters of an ``offload`` path that are not FA's (host.fa_offload.OffloadedFA)
OFFLOAD_PARAMS = {"k_prime": 4096, "W": 24, "b": 16, "solver": "bfp", "defences": True,
                  "phase2_attack": "none", "quarantine": 10, "secret_buckets": 64,
                  "secret_tol": None}
PHASE2_ATTACKS = ("none", "scaled", "replace", "null_space")


def split_offload_params(params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the offload's own parameters with defaults filled in, FA's parameters)."""
    fa = {k: v for k, v in params.items() if k not in OFFLOAD_PARAMS}
    return {**OFFLOAD_PARAMS, **{k: params[k] for k in params if k in OFFLOAD_PARAMS}}, fa
