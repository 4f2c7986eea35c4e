"""Programmable-switch emulator: registers, slot pools, the Numba-compiled pipeline,
and lossy links."""
