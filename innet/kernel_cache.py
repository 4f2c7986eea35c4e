"""Numba's on-disk cache, made to notice every kernel source a kernel depends on.

Numba keys a cached kernel on its own file only: a kernel in ``emulator/switch.py``
that inlines a stage function from ``p4_models/switchml_sum.py``, or calls a kernel
from ``innet/quant``, keeps running the old code after those files change, until
its own file changes too — tests then pass against code that no longer exists. Here
every cached kernel of the project is keyed on its file *and* on the sources of all
the project's modules that use Numba (path, mtime, size), so editing any of them
recompiles what depends on it. Kernels outside the project are left to Numba's own
locators.

:func:`install` runs on ``import innet`` (every kernel module imports ``innet``
before its first ``@njit``, and Numba picks a function's cache locator when it is
decorated).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

#: the repository root and the packages whose Numba kernels call one another
ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("innet", "emulator", "p4_models", "host")

_stamps: dict[tuple[str, tuple[str, ...]], tuple] = {}


def kernel_sources_stamp(root: Path = ROOT, packages: tuple[str, ...] = PACKAGES) -> tuple:
    """(path, mtime_ns, size) of every module under ``packages`` that imports numba,
    computed once per process."""
    key = (str(root), packages)
    if key not in _stamps:
        rows = []
        for package in packages:
            for path in sorted((root / package).rglob("*.py")):
                text = path.read_text(encoding="utf-8", errors="replace")
                if "numba" in text:
                    st = path.stat()
                    rows.append((str(path.relative_to(root)), st.st_mtime_ns, st.st_size))
        _stamps[key] = tuple(rows)
    return _stamps[key]


class _KeyedOnKernelSources:
    """Mixin for Numba cache locators: only for the project's files, and their stamp
    includes :func:`kernel_sources_stamp`."""

    root: Path = ROOT
    packages: tuple[str, ...] = PACKAGES

    @classmethod
    def from_function(cls, py_func, py_file):
        path = Path(os.path.abspath(py_file))
        if not any(path.is_relative_to(cls.root / p) for p in cls.packages):
            return None
        return super().from_function(py_func, py_file)

    def get_source_stamp(self):
        return super().get_source_stamp(), kernel_sources_stamp(self.root, self.packages)


def locator_classes(root: Path = ROOT, packages: tuple[str, ...] = PACKAGES) -> list[type]:
    """Numba's file-backed locators (user cache dir, ``__pycache__``, user-wide), each
    keyed on the kernel sources under ``root``/``packages`` as well."""
    from numba.core import caching

    attrs = {"root": Path(root).resolve(), "packages": tuple(packages)}
    return [type(f"KernelSources{base.__name__}", (_KeyedOnKernelSources, base), attrs)
            for base in (caching.UserProvidedCacheLocator, caching.InTreeCacheLocator,
                         caching.UserWideCacheLocator)]


def install(root: Path = ROOT, packages: tuple[str, ...] = PACKAGES) -> bool:
    """Put the keyed locators ahead of Numba's own (once per root). Returns whether
    they are in place; on a Numba without these (private) hooks it warns and leaves
    Numba's per-file caching as it is."""
    try:
        from numba.core import caching

        classes = caching.CacheImpl._locator_classes
        mine = locator_classes(root, packages)
    except (ImportError, AttributeError) as exc:  # a Numba that moved its cache hooks
        warnings.warn(f"innet: Numba caches stay keyed per file ({exc})", stacklevel=2)
        return False
    resolved = Path(root).resolve()
    if not any(getattr(c, "root", None) == resolved for c in classes):
        classes[:0] = mine
    return True
