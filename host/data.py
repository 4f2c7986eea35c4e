"""Datasets as (N, C, H, W) float32 tensors in [0, 1] with int64 labels.

* ``digits`` (default): scikit-learn's bundled 8×8 handwritten digits (1 797 images),
  offline; a fixed stratified 80/20 split.
* ``mnist``, ``cifar10``: through torchvision from a local folder (``root``); with
  ``download=True`` torchvision fetches them there. Missing files or a missing
  torchvision give an error that says what to do.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

DATASETS = ("digits", "mnist", "cifar10")


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


def _torchvision_split(name: str, root: str, train: bool, download: bool):
    try:
        import torchvision
    except ImportError as err:
        raise RuntimeError(
            f"dataset {name!r} needs torchvision: pip install 'innet[vision]' "
            "(or use dataset='digits', which is bundled)"
        ) from err
    cls = {"mnist": torchvision.datasets.MNIST, "cifar10": torchvision.datasets.CIFAR10}[name]
    try:
        ds = cls(root=root, train=train, download=download)
    except RuntimeError as err:
        raise RuntimeError(
            f"dataset {name!r} not found under root={root!r}; put it there or pass "
            f"--download to fetch it ({err})"
        ) from err
    data = ds.data if isinstance(ds.data, np.ndarray) else ds.data.numpy()
    x = torch.from_numpy(np.asarray(data, dtype=np.float32) / 255.0)
    x = x[:, None] if x.ndim == 3 else x.permute(0, 3, 1, 2)
    y = torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64)
    return x.contiguous(), y


def load(name: str = "digits", root: str | None = None, download: bool = False) -> Dataset:
    """Load dataset ``name`` (one of :data:`DATASETS`)."""
    if name == "digits":
        return load_digits()
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if root is None:
        raise ValueError(f"dataset {name!r} needs data.root (a local folder)")
    x_tr, y_tr = _torchvision_split(name, root, True, download)
    x_te, y_te = _torchvision_split(name, root, False, download)
    return Dataset(name, x_tr, y_tr, x_te, y_te, 10)
