"""Real gradients for the quantisation studies: p workers' minibatch gradients of the
digits MLP, captured along a short SGD run (mean aggregation, CPU, seeded)."""

from __future__ import annotations

import numpy as np
import torch


def digits_gradients(p: int = 15, steps: tuple[int, ...] = (0, 50, 150), batch: int = 32,
                     seed: int = 0, lr: float = 0.1) -> list[np.ndarray]:
    """G (p × n float64) at each of ``steps`` of an honest run (the model moves between
    captures by SGD on the mean gradient)."""
    from host import data as datasets
    from host import models
    from host.worker import WorkerPool

    torch.manual_seed(seed)
    data = datasets.load("digits")
    model = models.build("mlp", data.image_shape, data.num_classes)
    pool = WorkerPool(model, data, p, batch, seed=seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    out = []
    for step in range(max(steps) + 1):
        G, _ = pool.gradients()
        if step in steps:
            out.append(G.detach().to(torch.float64).numpy().copy())
        offset = 0
        mean = G.mean(dim=0)
        for param in model.parameters():
            size = param.numel()
            param.grad = mean[offset:offset + size].view_as(param).clone()
            offset += size
        opt.step()
    return out
