"""p workers computing real per-worker gradients on disjoint minibatches.

Every step draws p·B distinct training examples from a seeded stream of epoch
permutations and gives worker i the i-th block of B. The p gradients are computed
in one batched call, ``vmap(grad(loss))`` over the worker axis (torch.func), for
models without batch-norm; models with batch-norm (ResNet-18) run one forward and
backward per worker instead, because batch statistics are per worker and the
running buffers update in place.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from host.data import Dataset


def has_batch_norm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def flatten_grads(grads: dict[str, torch.Tensor], names: list[str], p: int) -> torch.Tensor:
    return torch.cat([grads[k].reshape(p, -1) for k in names], dim=1)


class EpochSampler:
    """Disjoint index blocks from a seeded stream of permutations of range(N)."""

    def __init__(self, size: int, seed: int):
        self.size = size
        self.gen = torch.Generator().manual_seed(seed)
        self.order = torch.randperm(size, generator=self.gen)
        self.pos = 0

    def take(self, count: int) -> torch.Tensor:
        if count > self.size:
            raise ValueError(f"a step needs {count} examples but the training set has {self.size}")
        if self.pos + count > self.size:
            self.order = torch.randperm(self.size, generator=self.gen)
            self.pos = 0
        idx = self.order[self.pos : self.pos + count]
        self.pos += count
        return idx


class WorkerPool:
    """The p workers of a synchronous job sharing one model replica.

    ``data_attack`` (a :class:`innet.attacks.DataAttack`) corrupts the images of the
    workers listed in ``byzantine`` before they compute their (otherwise honest)
    gradient.
    """

    def __init__(
        self,
        model: nn.Module,
        data: Dataset,
        p: int,
        batch: int,
        seed: int = 0,
        byzantine: list[int] | None = None,
        data_attack=None,
    ):
        if p < 1 or batch < 1:
            raise ValueError(f"workers: need p >= 1 and batch >= 1, got p={p}, batch={batch}")
        # The data follows the model: a pool built with CPU data around a CUDA model
        # (or the other way round) would fail inside vmap at the first step.
        device = next(model.parameters()).device
        self.model, self.data, self.p, self.batch = model, data.to(device), p, batch
        self.sampler = EpochSampler(len(data.y_train), seed)
        self.attack_gen = torch.Generator().manual_seed(seed + 1)
        self.byzantine = list(byzantine or [])
        self.data_attack = data_attack
        self.names = [k for k, _ in model.named_parameters()]
        self.batched = not has_batch_norm(model)

    def minibatches(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (p, B, C, H, W) and labels (p, B) of this step."""
        idx = self.sampler.take(self.p * self.batch).to(self.data.x_train.device)
        x = self.data.x_train[idx].reshape(self.p, self.batch, *self.data.image_shape)
        y = self.data.y_train[idx].reshape(self.p, self.batch)
        if self.data_attack is not None and self.byzantine:
            x = x.clone()
            for i in self.byzantine:
                x[i] = self.data_attack(x[i], self.attack_gen)
        return x, y

    def gradient_of(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Worker i's row of this step's G and its loss, computed alone (a worker
        process owning its shard): the same minibatches (and data-attack draws) as
        :meth:`gradients`, so its sampling stays in step with every other worker's."""
        x, y = self.minibatches()
        self.model.train()
        if self.batched:
            G, losses = self._vmapped(x[i:i + 1], y[i:i + 1], 1)
        else:
            G, losses = self._looped(x[i:i + 1], y[i:i + 1])
        return G[0], losses[0]

    def gradients(self) -> tuple[torch.Tensor, torch.Tensor]:
        """G (p, n) float32 and the per-worker training losses (p,)."""
        x, y = self.minibatches()
        self.model.train()
        if self.batched:
            return self._vmapped(x, y)
        return self._looped(x, y)

    def _vmapped(self, x, y, p=None):
        params = {k: v.detach() for k, v in self.model.named_parameters()}
        buffers = {k: v.detach() for k, v in self.model.named_buffers()}

        def loss(params, xb, yb):
            logits = functional_call(self.model, (params, buffers), (xb,))
            return nn.functional.cross_entropy(logits, yb)

        grads, losses = vmap(grad_and_value(loss), in_dims=(None, 0, 0))(params, x, y)
        return flatten_grads(grads, self.names, p or self.p), losses.detach()

    def _looped(self, x, y):
        rows, losses = [], []
        params = [v for _, v in self.model.named_parameters()]
        for i in range(x.shape[0]):  # one backward per worker: batch-norm statistics are per worker
            loss = nn.functional.cross_entropy(self.model(x[i]), y[i])
            grads = torch.autograd.grad(loss, params)
            rows.append(torch.cat([g.reshape(-1) for g in grads]))
            losses.append(loss.detach())
        return torch.stack(rows), torch.stack(losses)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 2048):
    """(accuracy, mean cross-entropy) of ``model`` on (x, y)."""
    model.eval()
    correct, total_loss = 0, 0.0
    for start in range(0, len(y), batch):
        logits = model(x[start : start + batch])
        target = y[start : start + batch]
        total_loss += float(nn.functional.cross_entropy(logits, target, reduction="sum"))
        correct += int((logits.argmax(dim=1) == target).sum())
    return correct / len(y), total_loss / len(y)
