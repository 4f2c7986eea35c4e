"""FA variants (mode, output scaling, λ) on the digits run under several attacks.

    python benchmarks/fa_outputs.py

Trains the digits MLP (p = 15, batch 32, 300 steps, lr 0.1) once per variant, attack
and seed, and prints the final test accuracies (the table of docs/FA.md).
"""

from __future__ import annotations

import torch

from host import data, models
from host.ps import ParameterServer
from host.worker import WorkerPool, evaluate
from innet import aggregators, attacks

VARIANTS = {
    "paper mode, median_norm (default)": {},
    "paper mode, paper output": {"output": "paper"},
    "paper mode, reference output": {"output": "reference"},
    "reference mode": {"mode": "reference"},
    "paper mode, lam=2": {"lam": 2.0},
}
ATTACKS = (("none", 0), ("uniform", 3), ("scaled", 3), ("alie", 3))
SEEDS = (0, 1, 2)


def final_accuracy(digits, params: dict, attack_name: str, f: int, seed: int) -> float:
    torch.manual_seed(seed)
    model = models.build("mlp", digits.image_shape, 10)
    pool = WorkerPool(model, digits, 15, 32, seed=seed)
    ps = ParameterServer(model, aggregators.get("fa", f=3, **params), lr=0.1)
    attack, byz = attacks.get(attack_name), torch.arange(f)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(300):
        G, _ = pool.gradients()
        ps.step(attack(G, byz, gen) if attack else G)
    return evaluate(model, digits.x_test, digits.y_test)[0]


def main() -> None:
    digits = data.load("digits")
    print("| FA variant | " + " | ".join(a for a, _ in ATTACKS) + " |")
    for label, params in VARIANTS.items():
        cells = []
        for attack_name, f in ATTACKS:
            accs = [final_accuracy(digits, params, attack_name, f, s) for s in SEEDS]
            cells.append(" ".join(f"{a:.3f}" for a in accs))
        print(f"| {label} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
