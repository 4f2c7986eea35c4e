"""Datasets as (N, C, H, W) float32 tensors in [0, 1] with int64 labels.

* ``digits`` (default): scikit-learn's bundled 8×8 handwritten digits (1 797 images),
  offline; a fixed stratified 80/20 split.
* ``mnist1d``: MNIST-1D (Greydanus 2020), 4 000 train / 1 000 test sequences of
  length 40, as (N, 1, 1, 40). Generated offline by the ``mnist1d`` package's own
  generator with its standard arguments (seed 42; never its download function) and
  cached under the user's cache folder (``$XDG_CACHE_HOME/innet`` or
  ``~/.cache/innet``), keyed by a hash of those arguments. Harder than digits: the
  robust rules separate on it.
* ``mnist``, ``cifar10``: through torchvision from a local folder (``root``); with
  ``download=True`` torchvision fetches them there. Missing files or a missing
  torchvision give an error that says what to do.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

DATASETS = ("digits", "mnist1d", "mnist", "cifar10")
#: the datasets that need no files (generated or bundled), with their training-set
#: sizes (a step needs p·batch distinct training examples)
EMBEDDED = {"digits": 1437, "mnist1d": 4000}
#: models that fit each dataset's shape (MNIST-1D's 1×40 rows are too flat to pool)
MODELS_FOR = {"mnist1d": ("mlp",)}


@dataclass
class Dataset:
    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])

    def to(self, device: torch.device) -> Dataset:
        return Dataset(
            self.name,
            self.x_train.to(device),
            self.y_train.to(device),
            self.x_test.to(device),
            self.y_test.to(device),
            self.num_classes,
        )


def load_digits() -> Dataset:
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    bunch = sk_digits()
    x = (bunch.images / 16.0).astype(np.float32)[:, None]
    y = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    return Dataset(
        "digits",
        torch.from_numpy(x_tr),
        torch.from_numpy(y_tr),
        torch.from_numpy(x_te),
        torch.from_numpy(y_te),
        10,
    )


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "innet"


def load_mnist1d() -> Dataset:
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as err:
        raise DatasetError("dataset 'mnist1d' needs the mnist1d package: pip install mnist1d "
                           "(it is one of innet's dependencies)") from err
    args = get_dataset_args()
    settings = {k: v for k, v in sorted(vars(args).items()) if k != "url"}
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    cache = cache_dir() / f"mnist1d-{key}.npz"
    try:
        with np.load(cache) as z:
            arrays = {k: z[k] for k in ("x", "y", "x_test", "y_test")}
    except (OSError, KeyError, ValueError):  # absent or damaged: generate (a few seconds)
        made = make_dataset(args)
        arrays = {k: np.asarray(made[k]) for k in ("x", "y", "x_test", "y_test")}
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_name(f".{cache.name}.{os.getpid()}.npz")
            np.savez(tmp, **arrays)
            os.replace(tmp, cache)
        except OSError:
            pass  # an unwritable cache only costs the generation next time

    def rows(x):
        return torch.from_numpy(np.asarray(x, dtype=np.float32)[:, None, None, :].copy())

    return Dataset("mnist1d", rows(arrays["x"]), torch.from_numpy(arrays["y"].astype(np.int64)),
                   rows(arrays["x_test"]),
                   torch.from_numpy(arrays["y_test"].astype(np.int64)), 10)


class DatasetError(RuntimeError):
    """A dataset cannot be loaded here (the message says what to do)."""


def matching_torchvision() -> str:
    """The torchvision release built for the installed torch (2.x ↔ 0.(x+15))."""
    major, minor = (int(v) for v in torch.__version__.split("+")[0].split(".")[:2])
    return f"0.{minor + 15}" if major == 2 else "matching your torch"


def _install_hint() -> str:
    cpu = "+cpu" in torch.__version__ or not torch.backends.cuda.is_built()
    pin = f"torchvision=={matching_torchvision()}.*"
    if cpu:
        return (f"pip install '{pin}' --index-url https://download.pytorch.org/whl/cpu "
                f"(the CPU build for torch {torch.__version__}; a plain 'pip install "
                "torchvision' would replace torch with a CUDA build)")
    return f"pip install '{pin}'"


def _torchvision_split(name: str, root: str, train: bool, download: bool):
    embedded = ", ".join(EMBEDDED)
    try:
        import torchvision
    except ImportError:
        raise DatasetError(f"dataset {name!r} needs torchvision: {_install_hint()}; or use "
                           f"an embedded dataset ({embedded})") from None
    except RuntimeError as err:  # e.g. a CUDA torchvision against a CPU torch
        raise DatasetError(f"dataset {name!r}: the installed torchvision does not work with "
                           f"torch {torch.__version__} ({str(err).splitlines()[0]}); "
                           f"{_install_hint()}") from None
    cls = {"mnist": torchvision.datasets.MNIST, "cifar10": torchvision.datasets.CIFAR10}[name]
    try:
        ds = cls(root=root, train=train, download=download)
    except RuntimeError as err:
        raise DatasetError(
            f"dataset {name!r} not found under root={root!r}; put it there or pass "
            f"--download to fetch it ({err})"
        ) from None
    data = ds.data if isinstance(ds.data, np.ndarray) else ds.data.numpy()
    x = torch.from_numpy(np.asarray(data, dtype=np.float32) / 255.0)
    x = x[:, None] if x.ndim == 3 else x.permute(0, 3, 1, 2)
    y = torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64)
    return x.contiguous(), y


def load(name: str = "digits", root: str | None = None, download: bool = False) -> Dataset:
    """Load dataset ``name`` (one of :data:`DATASETS`)."""
    if name == "digits":
        return load_digits()
    if name == "mnist1d":
        return load_mnist1d()
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if root is None:
        raise DatasetError(f"dataset {name!r} needs data.root (a local folder)")
    x_tr, y_tr = _torchvision_split(name, root, True, download)
    x_te, y_te = _torchvision_split(name, root, False, download)
    return Dataset(name, x_tr, y_tr, x_te, y_te, 10)
