"""Pre-aggregation: maps from the p worker rows to new rows, composed before a rule.

A pipeline is named by joining names with ``+``, the rule last: ``"nnm+fa"``,
``"bucketing+median"``, ``"arc+nnm+multi_krum"``. Each stage sees the previous
stage's rows; the rule sees the last stage's. As in ByzFL:

* ``nnm`` — nearest-neighbour mixing (Allouah et al., 2023): every row becomes the
  mean of its p − f nearest rows (itself included) in Euclidean distance. The mixed
  rows are closer together, so a Byzantine row that sits inside the honest cloud's
  reach is averaged with honest rows and one that sits outside is averaged with
  other outliers. Distances come from one Gram pass; the mixing is one p×p GEMM.
* ``bucketing`` — (Karimireddy et al., 2022): a random permutation, then the means
  of consecutive buckets of ``s`` rows (⌈p/s⌉ rows out; the last bucket may be
  smaller). At most f buckets hold a Byzantine row, so the rule keeps its f.
* ``clipping`` — static clipping of every row to norm ``c``.
* ``arc`` — adaptive robust clipping (Allouah et al., 2024): the ⌊2(f/p)(p − f)⌋
  largest rows are clipped to the norm of the largest row left unclipped.

Parameters of a stage go in the path's params under the stage's name
(``params = { bucketing = { s = 3 }, lam = 0.0 }``); every stage takes the scenario's
f unless it is given one.
"""

from __future__ import annotations

import math

import torch

from innet.aggregators.base import VALUE_BYTES, Aggregator, Cost, gram_cost, passes
from innet.aggregators.gram import gram, squared_distances


class PreAggregator:
    """A map from (p, n) rows to (rows_out(p), n) rows."""

    name = "pre"

    def __call__(self, G: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def rows_out(self, p: int) -> int:
        return p

    def cost(self, p: int, n: int) -> Cost:
        return passes(p, n)

    def state(self) -> dict:
        return {}

    def load_state(self, state: dict) -> None:
        pass

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({params})"


def _check_f(name: str, f) -> int:
    if not isinstance(f, int) or isinstance(f, bool) or f < 0:
        raise ValueError(f"{name}: f must be a non-negative integer, got {f!r}")
    return f


class NNM(PreAggregator):
    name = "nnm"

    def __init__(self, f: int = 0):
        self.f = _check_f(self.name, f)

    def mixing(self, G: torch.Tensor) -> torch.Tensor:
        """The p×p row-stochastic matrix M with M G = the mixed rows (float64)."""
        p = G.shape[0]
        if self.f >= p:
            raise ValueError(f"nnm: needs f < p, got f={self.f}, p={p}")
        D = squared_distances(gram(G))
        k = p - self.f
        # stable on ties: equal distances keep the lower row index (itself first, at 0)
        order = torch.argsort(D, dim=1, stable=True)[:, :k]
        M = torch.zeros((p, p), dtype=torch.float64, device=G.device)
        M.scatter_(1, order, 1.0 / k)
        return M

    def __call__(self, G: torch.Tensor) -> torch.Tensor:
        return self.mixing(G).to(G.dtype) @ G

    def cost(self, p: int, n: int) -> Cost:
        return (gram_cost(p, n) + Cost(0.0, 2.0 * p * p * max(p.bit_length(), 1), 1)
                + Cost(2.0 * p * n * VALUE_BYTES, 2.0 * p * p * n, 1))


class Bucketing(PreAggregator):
    name = "bucketing"

    def __init__(self, s: int = 2, f: int = 0, seed: int = 0):
        if not isinstance(s, int) or isinstance(s, bool) or s < 1:
            raise ValueError(f"bucketing: s must be a positive integer, got {s!r}")
        self.s, self.f, self.seed = s, _check_f(self.name, f), seed
        self._gen = torch.Generator().manual_seed(seed)

    def rows_out(self, p: int) -> int:
        return math.ceil(p / self.s)

    def __call__(self, G: torch.Tensor) -> torch.Tensor:
        p = G.shape[0]
        perm = torch.randperm(p, generator=self._gen).to(G.device)
        X = G[perm]
        full = p // self.s
        out = [X[: full * self.s].reshape(full, self.s, -1).mean(dim=1)]
        if full * self.s < p:
            out.append(X[full * self.s:].mean(dim=0, keepdim=True))
        return torch.cat(out)

    def cost(self, p: int, n: int) -> Cost:
        return Cost((p + self.rows_out(p)) * n * VALUE_BYTES, p * n, 2)

    def state(self) -> dict:
        return {"generator": self._gen.get_state()}

    def load_state(self, state: dict) -> None:
        self._gen.set_state(state["generator"])


def _clip(G: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    norms = torch.linalg.vector_norm(G, dim=1, dtype=torch.float64)
    scale = torch.where(norms > threshold, threshold / norms.clamp_min(1e-300),
                        torch.ones_like(norms))
    return G * scale.to(G.dtype)[:, None]


class Clipping(PreAggregator):
    name = "clipping"

    def __init__(self, c: float = 2.0, f: int = 0):
        if not isinstance(c, int | float) or isinstance(c, bool) or not c >= 0:
            raise ValueError(f"clipping: c must be a non-negative number, got {c!r}")
        self.c, self.f = float(c), _check_f(self.name, f)

    def __call__(self, G: torch.Tensor) -> torch.Tensor:
        return _clip(G, torch.tensor(self.c, dtype=torch.float64, device=G.device))

    def cost(self, p: int, n: int) -> Cost:
        return passes(p, n, 2.0, 2.0, 2)


class ARC(PreAggregator):
    name = "arc"

    def __init__(self, f: int = 0):
        self.f = _check_f(self.name, f)

    def clipped(self, p: int) -> int:
        """How many of the largest rows are clipped: ⌊2(f/p)(p − f)⌋."""
        return int(2 * self.f / p * (p - self.f))

    def __call__(self, G: torch.Tensor) -> torch.Tensor:
        p = G.shape[0]
        k = self.clipped(p)
        if k == 0:
            return G
        if k >= p:
            raise ValueError(f"arc: would clip all {p} rows (f={self.f})")
        norms = torch.linalg.vector_norm(G, dim=1, dtype=torch.float64)
        threshold = torch.sort(norms).values[p - k - 1]
        return _clip(G, threshold)

    def cost(self, p: int, n: int) -> Cost:
        return passes(p, n, 2.0, 2.0, 2)


PRE_REGISTRY: dict[str, type[PreAggregator]] = {
    cls.name: cls for cls in (NNM, Bucketing, Clipping, ARC)}
PRE_NAMES = tuple(PRE_REGISTRY)


def build(name: str, params: dict, rules: dict[str, type[Aggregator]]) -> Pipeline:
    """The pipeline called ``name`` ("nnm+fa"): stage parameters are taken from
    ``params[stage name]`` (a table), ``f`` and ``seed`` are shared, the rest is the
    rule's."""
    *stage_names, rule_name = name.split("+")
    if not stage_names or rule_name not in rules:
        raise ValueError(f"aggregator {name!r}: the last part must be a rule "
                         f"({', '.join(rules)})")
    params = dict(params)
    f, seed = params.get("f", 0), params.pop("seed", 0)
    stages = []
    for stage in stage_names:
        if stage not in PRE_REGISTRY:
            raise ValueError(f"aggregator {name!r}: unknown pre-aggregator {stage!r}; choose "
                             f"from {', '.join(PRE_NAMES)}")
        own = params.pop(stage, {})
        if not isinstance(own, dict):
            raise ValueError(f"aggregator {name!r}: params.{stage} must be a table")
        cls = PRE_REGISTRY[stage]
        kwargs = {"f": f, **({"seed": seed} if cls is Bucketing else {}), **own}
        try:
            stages.append(cls(**kwargs))
        except TypeError as err:
            raise ValueError(f"pre-aggregator {stage!r}: {err}") from None
    rule = rules[rule_name](**params)
    return Pipeline(stages, rule)


class Pipeline(Aggregator):
    """Pre-aggregators, then a rule: ``Pipeline([NNM(3)], FlagAggregator(f=3))``."""

    finite_check_fused = False  # one scan of the raw rows, naming them

    def __init__(self, stages: list[PreAggregator], rule: Aggregator):
        super().__init__(rule.f)
        self.stages, self.rule = list(stages), rule
        self.name = "+".join([s.name for s in stages] + [rule.name])
        inner = rule.requirement
        if inner is not None:
            text, ok = inner
            self.requirement = (f"{text} after {'+'.join(s.name for s in stages)} "
                                "reduces the rows", lambda p, f: ok(self.rows_out(p), f))

    def rows_out(self, p: int) -> int:
        for stage in self.stages:
            p = stage.rows_out(p)
        return p

    def aggregate(self, G: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            G = stage(G)
        return self.rule.aggregate(G)

    def cost(self, p: int, n: int) -> Cost:
        total = Cost()
        for stage in self.stages:
            total = total + stage.cost(p, n)
            p = stage.rows_out(p)
        return total + self.rule.cost(p, n)

    def state(self) -> dict:
        return {"stages": [s.state() for s in self.stages], "rule": self.rule.state()}

    def load_state(self, state: dict) -> None:
        for stage, saved in zip(self.stages, state["stages"]):
            stage.load_state(saved)
        self.rule.load_state(state["rule"])

    def reset(self) -> None:
        if hasattr(self.rule, "reset"):
            self.rule.reset()
