"""Target profiles of Tofino-class switches (REFERENCE §4.4)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Target:
    name: str
    stages: int  #: match-action stages per pipe (ingress + egress counted together)
    alus_per_stage: int  #: stateful ALUs per stage
    values_per_alu: int  #: int32 words one stateful ALU updates per pass (64-bit pair → 2)
    sram_bits_per_stage: int  #: register SRAM per stage
    max_register_entries: int  #: largest register array (entries of the ALU's width)
    phv_bytes: int  #: parsed header space per pass
    max_recirculations: int = 4  #: passes beyond the first we accept as "fits"

    def __str__(self) -> str:
        return self.name


#: Tofino-1: 12 stages, 4 stateful ALUs each, 32-bit ALUs that can update a 64-bit pair
#: (2 int32 per ALU per pass), 80 SRAM blocks × 1024 × 128 bits per stage, largest
#: register ≈ 16 384 × 64-bit, 4096-bit PHV.
tofino1 = Target("tofino1", 12, 4, 2, 80 * 1024 * 128, 16_384, 512)

#: Tofino-2: 20 stages, 128-bit register operations (4 int32 per ALU output), 5120-bit
#: PHV. REFERENCE gives no ALU count per stage: we keep Tofino-1's 4.
tofino2 = Target("tofino2", 20, 4, 4, 80 * 1024 * 128, 16_384, 640)

TARGETS = {t.name: t for t in (tofino1, tofino2)}
