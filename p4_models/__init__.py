"""Switch programs written against a P4-like declaration API, and target profiles."""

from p4_models.fa_sketch import phase2_guard, sketch_store
from p4_models.program import Program, Register, RegisterAction, ResourceReport, Stage
from p4_models.switchml_sum import streaming_sum
from p4_models.targets import TARGETS, Target, tofino1, tofino2

__all__ = [
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
