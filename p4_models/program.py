"""A small P4-like API: stages own registers; register actions are limited to what a
stateful ALU can do; a program declares its per-packet decision table.

The emulator executes programs through their compiled kernels (Numba), and this
module answers "does it fit?": :meth:`Program.report` counts stages, stateful ALUs,
SRAM, parsed bytes and the recirculations a packet needs on a :class:`Target`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from p4_models.targets import Target

#: what a stateful ALU can do (REFERENCE §4.4): no multiply, divide, float or loop
#: (shifts by a per-packet amount come from a table lookup, as on Tofino)
ALU_OPS = frozenset(
    {"read", "write", "add", "sub", "sat_add", "sat_sub", "min", "max", "and", "or", "xor",
     "andnot", "compare", "shl", "shr"}
)


@dataclass(frozen=True)
class Register:
    name: str
    width: int  #: bits per entry
    depth: int  #: entries
    lanes: int = 1  #: entries updated in parallel by separate ALUs (one per lane group)
    signed: bool = False  #: two's complement entries (the emulator's numpy dtype follows)

    @property
    def dtype(self):
        """The numpy dtype an emulator holds one entry in: exactly ``width`` bits."""
        import numpy as np

        return np.dtype(f"{'i' if self.signed else 'u'}{self.width // 8}")

    def __post_init__(self):
        if self.width not in (8, 16, 32, 64):
            raise ValueError(f"register {self.name}: width {self.width} is not 8/16/32/64")
        if self.depth < 1 or self.lanes < 1:
            raise ValueError(f"register {self.name}: depth and lanes must be >= 1")

    @property
    def bits(self) -> int:
        return self.width * self.depth * self.lanes


@dataclass(frozen=True)
class RegisterAction:
    name: str
    register: str
    ops: tuple[str, ...]

    def __post_init__(self):
        bad = [op for op in self.ops if op not in ALU_OPS]
        if bad:
            raise ValueError(
                f"register action {self.name}: {bad} not possible in a stateful ALU "
                f"(allowed: {', '.join(sorted(ALU_OPS))})"
            )


@dataclass(frozen=True)
class Stage:
    """A named control, like SwitchML's WorkersCounter, owning its registers."""

    name: str
    registers: tuple[Register, ...]
    actions: tuple[RegisterAction, ...] = ()

    def alus(self, target: Target) -> int:
        """Stateful ALUs used: one per register lane group of ``values_per_alu`` lanes
        for wide value registers; one per scalar register."""
        return sum(math.ceil(r.lanes / (target.values_per_alu if r.lanes > 1 else 1))
                   for r in self.registers)


@dataclass
class ResourceReport:
    program: str
    target: str
    stages_needed: int
    alus_needed: int
    alus_available: int
    sram_bits: int
    sram_bits_available: int
    largest_register: int
    parsed_bytes: int
    phv_bytes: int
    recirculations: int
    reasons: list[str] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        return not self.reasons

    def __str__(self) -> str:
        rows = [
            f"program {self.program} on {self.target}: {'FITS' if self.fits else 'DOES NOT FIT'}",
            f"  stateful ALUs   {self.alus_needed} needed, {self.alus_available} per pass",
            f"  stages (ALUs)   {self.stages_needed} of the pipe's stages per pass",
            f"  register SRAM   {self.sram_bits / 8 / 1024:.1f} KiB of "
            f"{self.sram_bits_available / 8 / 1024:.1f} KiB",
            f"  largest reg.    {self.largest_register} entries",
            f"  parsed bytes    {self.parsed_bytes} (PHV {self.phv_bytes} per pass)",
            f"  recirculations  {self.recirculations} per packet",
        ]
        rows += [f"  reason: {r}" for r in self.reasons]
        return "\n".join(rows)


@dataclass
class Program:
    name: str
    stages: tuple[Stage, ...]
    parsed_bytes: int  #: headers the parser must extract (Ethernet..payload)
    #: the per-packet decision, a const-entries table: key tuple → action name
    decision_table: dict[tuple, str]
    decision_keys: tuple[str, ...]

    def registers(self) -> list[Register]:
        return [r for s in self.stages for r in s.registers]

    def report(self, target: Target) -> ResourceReport:
        alus = sum(s.alus(target) for s in self.stages)
        per_pass = target.stages * target.alus_per_stage
        passes_alu = math.ceil(alus / per_pass)
        passes_phv = math.ceil(self.parsed_bytes / target.phv_bytes)
        passes = max(passes_alu, passes_phv)
        sram = sum(r.bits for r in self.registers())
        sram_avail = target.sram_bits_per_stage * target.stages
        largest = max(r.depth for r in self.registers())
        reasons = []
        if passes - 1 > target.max_recirculations:
            reasons.append(
                f"needs {passes - 1} recirculations (> {target.max_recirculations}): "
                f"{alus} ALUs vs {per_pass} per pass, {self.parsed_bytes} B vs "
                f"{target.phv_bytes} B PHV"
            )
        if sram > sram_avail:
            reasons.append(f"register SRAM {sram} bits exceeds {sram_avail}")
        if largest > target.max_register_entries:
            reasons.append(
                f"register depth {largest} exceeds {target.max_register_entries} entries"
            )
        return ResourceReport(
            self.name, target.name, min(target.stages, math.ceil(alus / target.alus_per_stage)),
            alus, per_pass, sram, sram_avail, largest, self.parsed_bytes, target.phv_bytes,
            passes - 1, reasons,
        )

    def fits(self, target: Target) -> bool:
        return self.report(target).fits
