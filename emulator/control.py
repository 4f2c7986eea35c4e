"""Control plane: slot pools for several jobs sharing one switch's register memory.

The streaming-sum registers hold at most ``target.max_register_entries`` rows, two per
slot (the shadow sets), so a switch offers ``max_register_entries // 2`` slots in
all. A job asks for a pool; the control plane gives it the largest free run up to
what it asked for (first fit), or nothing — a job with no slots sends everything to
the PS fallback (ATP's policy when the switch is full). A job's registers are views
into the shared arrays, so jobs cannot touch each other's slots, and a released
pool is zeroed before it is handed out again.
"""

from __future__ import annotations

from dataclasses import dataclass

from emulator.switch import SumSwitch, allocate_registers
from p4_models import Target, tofino1


@dataclass(frozen=True)
class Lease:
    job: int
    base: int  #: first slot of the pool in the shared registers
    slots: int  #: slots per shadow set (0: the job got none)


class ControlPlane:
    def __init__(self, k: int = 64, target: Target = tofino1, total_slots: int | None = None):
        self.k, self.target = k, target
        self.total = target.max_register_entries // 2 if total_slots is None else total_slots
        if not 1 <= self.total <= target.max_register_entries // 2:
            raise ValueError(f"total_slots must be in 1..{target.max_register_entries // 2}")
        n = self.total
        # job pools are contiguous: slot s of the switch owns rows 2s (set 0), 2s+1 (set 1)
        # through each job's view, laid out as [its set-0 slots | its set-1 slots]
        # one register file, allocated from the program's declaration
        (self.bitmap, self.use, self.counter, self.exponent, self.overflow,
         self.values) = allocate_registers(n, k)
        self.leases: dict[int, Lease] = {}

    def free_runs(self) -> list[tuple[int, int]]:
        """(base, length) of the free slot runs, in address order."""
        taken = sorted((lease.base, lease.slots) for lease in self.leases.values())
        runs, at = [], 0
        for base, length in taken:
            if base > at:
                runs.append((at, base - at))
            at = max(at, base + length)
        if at < self.total:
            runs.append((at, self.total - at))
        return runs

    def allocate(self, job: int, p: int, slots: int) -> tuple[Lease, SumSwitch | None]:
        """A pool of up to ``slots`` slots for ``job`` (p workers), and the switch view
        that runs it (None when the job got no slots)."""
        if job in self.leases:
            raise ValueError(f"job {job} already holds a pool; release it first")
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        runs = self.free_runs()
        fit = next(((b, n) for b, n in runs if n >= slots), None)
        if fit is None:  # no run is big enough: take the largest one, if any
            fit = max(runs, key=lambda r: r[1], default=(0, 0))
        base, length = fit[0], min(fit[1], slots)
        lease = Lease(job, base, length)
        if length == 0:
            return lease, None
        self.leases[job] = lease
        rows = slice(2 * base, 2 * (base + length))
        for reg in (self.counter, self.exponent, self.overflow, self.values):
            reg[rows] = 0
        self.bitmap[base:base + length] = 0
        self.use[base:base + length] = 0
        views = (self.bitmap[base:base + length], self.use[base:base + length], self.counter[rows],
                 self.exponent[rows], self.overflow[rows], self.values[rows])
        return lease, SumSwitch(p, self.k, length, job, target=self.target, registers=views)

    def release(self, job: int) -> None:
        if self.leases.pop(job, None) is None:
            raise ValueError(f"job {job} holds no pool")

    @property
    def used(self) -> int:
        return sum(lease.slots for lease in self.leases.values())
