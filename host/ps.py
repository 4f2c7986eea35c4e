"""The parameter server: applies an aggregation rule on the workers' gradients and
steps the model with SGD (momentum, weight decay, step schedule).

Runs on CUDA when the model lives there. A worker row with NaN/Inf (a bit-flip
attack can produce one) is treated as Byzantine: with ``nonfinite='zero'`` (default)
its row is replaced by zeros, which every rule handles as an ordinary suspicious
vector, and the event is counted; ``nonfinite='error'`` lets the rule raise.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from innet.aggregators import Aggregator, NonFiniteGradientError, nonfinite_rows

NONFINITE_POLICIES = ("zero", "error")


class ParameterServer:
    def __init__(
        self,
        model: nn.Module,
        rule: Aggregator,
        lr: float,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        milestones: list[int] | None = None,
        gamma: float = 0.2,
        nonfinite: str = "zero",
    ):
        if nonfinite not in NONFINITE_POLICIES:
            raise ValueError(f"nonfinite must be one of {NONFINITE_POLICIES}, got {nonfinite!r}")
        self.model, self.rule, self.nonfinite = model, rule, nonfinite
        self.params = list(model.parameters())
        self.optimizer = torch.optim.SGD(
            self.params, lr=lr, momentum=momentum, weight_decay=weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(
            self.optimizer, milestones=list(milestones or []), gamma=gamma
        )
        self.nonfinite_rows = 0
        self.aggregate_seconds = 0.0

    def aggregate(self, G: torch.Tensor) -> torch.Tensor:
        """The rule's output on G, after the non-finite policy; timed.

        The rule finds non-finite rows itself (in its own pass where it can, see
        ``Aggregator.finite_check_fused``); under ``nonfinite='zero'`` those rows are
        zeroed and the rule runs again, so a clean step reads G no extra time."""
        if G.is_cuda:
            torch.cuda.synchronize(G.device)
        start = time.perf_counter()
        try:
            out = self.rule(G)
        except NonFiniteGradientError as err:
            out = self.rule(self._apply_policy(G, err.rows))
        if G.is_cuda:
            torch.cuda.synchronize(G.device)
        self.aggregate_seconds += time.perf_counter() - start
        return out

    def screen(self, G: torch.Tensor) -> torch.Tensor:
        """G after the non-finite policy, for the paths whose rows leave the workers as
        integers (the switch sum, the FA offload): a NaN/Inf must be caught before
        quantisation, where it would turn into a huge or arbitrary integer."""
        bad = nonfinite_rows(G)
        return self._apply_policy(G, bad) if bad else G

    def _apply_policy(self, G: torch.Tensor, rows: list[int]) -> torch.Tensor:
        """Zero the non-finite rows and count them, or raise (``nonfinite='error'``)."""
        if self.nonfinite != "zero":
            raise NonFiniteGradientError(rows)
        G = G.clone()
        G[rows] = 0.0
        self.nonfinite_rows += len(rows)
        return G

    def apply(self, update: torch.Tensor) -> None:
        """Use the (n,) aggregate as the gradient of the model and take one SGD step."""
        offset = 0
        for param in self.params:
            k = param.numel()
            param.grad = update[offset : offset + k].view_as(param).to(param.dtype).clone()
            offset += k
        if offset != update.numel():
            raise ValueError(f"aggregate has {update.numel()} entries, the model {offset}")
        self.optimizer.step()
        self.scheduler.step()

    def step(self, G: torch.Tensor) -> torch.Tensor:
        update = self.aggregate(G)
        self.apply(update)
        return update
