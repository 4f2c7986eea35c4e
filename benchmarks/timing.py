"""The timers the benchmark scripts share."""

from __future__ import annotations

import statistics
import time

import torch


def alternating(fns, repeats: int, device: torch.device) -> list[float]:
    """Median wall time in seconds of each function over ``repeats`` rounds after one
    warm-up each; every round runs every function once, so a ratio of two of them
    compares the same moments of a shared machine (CUDA work is synchronised on both
    sides of each run)."""
    for fn in fns:
        fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, acc in zip(fns, times):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            acc.append(time.perf_counter() - start)
    return [statistics.median(acc) for acc in times]


def timed(fn, repeats: int, device: torch.device) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs after one warm-up, seconds."""
    return alternating([fn], repeats, device)[0]
