"""Switch programs written against a P4-like declaration API, and target profiles."""

from p4_models.fa_sketch import phase2_guard, sketch_store
from p4_models.program import Program, Register, RegisterAction, ResourceReport, Stage
from p4_models.switchml_sum import streaming_sum
from p4_models.targets import TARGETS, Target, tofino1, tofino2

#: every switch program by name: its builder and which ``innet inspect`` options it
#: takes (k values per packet, pool slots, p workers, k′ sketch size). A new program
#: is its declaration module plus one line here.
PROGRAMS = {
    "streaming_sum": (lambda k, pool, p, k_prime: streaming_sum(k, pool), ("k", "pool")),
    "sketch_store": (lambda k, pool, p, k_prime: sketch_store(p, k_prime, k),
                     ("k", "p", "k_prime")),
    "phase2_guard": (lambda k, pool, p, k_prime: phase2_guard(p, k), ("k", "p")),
}

__all__ = [
    "PROGRAMS",
    "Program",
    "Register",
    "RegisterAction",
    "ResourceReport",
    "Stage",
    "TARGETS",
    "Target",
    "phase2_guard",
    "sketch_store",
    "streaming_sum",
    "tofino1",
    "tofino2",
]
