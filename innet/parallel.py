"""Worker processes for runs and sweeps: spawned, with a share of the cores each, and
tied to their parent's life.

Processes are spawned (not forked), so none inherits a half-initialised OpenMP or
CUDA runtime; each gets an even share of the cores for torch and Numba (two heavy
processes on two cores otherwise oversubscribe). On Linux a child asks the kernel to
kill it when its parent dies (``PR_SET_PDEATHSIG``), so a killed ``innet run -j`` or
``innet sweep -j`` leaves no child writing into its folders.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _init_worker(threads: int, parent: int) -> None:
    _die_with_parent(parent)
    import numba
    import torch

    torch.set_num_threads(threads)
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))


def process_pool(jobs: int) -> ProcessPoolExecutor:
    """A pool of ``jobs`` spawned processes sharing the machine's cores."""
    threads = max(1, (os.cpu_count() or 1) // jobs)
    return ProcessPoolExecutor(jobs, mp_context=get_context("spawn"),
                               initializer=_init_worker, initargs=(threads, os.getpid()))
