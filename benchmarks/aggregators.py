"""Time every aggregation rule on one (p, n) stack against a numpy sum of the same
matrix and against ByzFL's implementation of the same rule, measured in the same run.

    python benchmarks/aggregators.py                     # p = 16, n = 2^20, float32, CPU
    python benchmarks/aggregators.py --rules median,fa --n 4194304
    python benchmarks/aggregators.py --full              # + FA's SVD-per-step reference
    python benchmarks/aggregators.py --scaling           # time vs n and vs p, Markdown
    python benchmarks/aggregators.py --device cuda --n 11200000 --p 15

For every rule it prints the time, ``<rule>_vs_numpy_sum`` (rule time / the time of
``X.sum(axis=0)``, the two timed alternately so both see the same machine) and, where
ByzFL 0.0.11 has the rule, ``<rule>_vs_byzfl`` (ByzFL time / innet time, same input
tensor, parameters matched as listed in ``BYZFL``). The last line is JSON with those
keys, ``worst_coordinatewise_vs_numpy_sum`` (max over median, trimmed mean, MeaMed,
Phocas) and ``min_speedup_vs_byzfl`` (min over the robust rules ByzFL has: the mean
is the same ``torch.mean`` call in both and is left out of the minimum); with ``--full``
also ``fa_gram_vs_svd_lam0`` and ``fa_gram_vs_svd_lam`` (iters = 5, all taken).

ByzFL is optional (``make bench`` installs it with ``pip install --no-deps
byzfl==0.0.11``); its package ``__init__`` imports torchvision, so its aggregators
module is loaded directly from its file.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
import types

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

import references  # noqa: E402
from timing import alternating  # noqa: E402

from innet import aggregators  # noqa: E402
from innet.devices import pick_device  # noqa: E402

COORDINATEWISE = ("median", "trimmed_mean", "meamed", "phocas")

#: innet rule → (ByzFL class, its parameters, innet's matching parameters), for f
BYZFL = {
    "mean": ("Average", lambda f: {}, lambda f: {}),
    "median": ("Median", lambda f: {}, lambda f: {}),  # both: even p averages the middle two
    "trimmed_mean": ("TrMean", lambda f: {"f": f}, lambda f: {"f": f}),
    "meamed": ("Meamed", lambda f: {"f": f}, lambda f: {"f": f}),
    "krum": ("Krum", lambda f: {"f": f}, lambda f: {"f": f}),
    # ByzFL averages the p − f best rows: innet's m = p − f
    "multi_krum": ("MultiKrum", lambda f: {"f": f}, lambda f: {"f": f, "m": "p-f"}),
    # three Weiszfeld steps, ν = 0.1 (ByzFL starts at 0, innet at the coordinate median)
    "geomed": ("GeometricMedian", lambda f: {"nu": 0.1, "T": 3},
               lambda f: {"f": f, "nu": 0.1, "iters": 3, "tol": 0.0}),
    "centered_clipping": ("CenteredClipping", lambda f: {"L": 3, "tau": 1.0},
                          lambda f: {"f": f, "tau": 1.0, "iters": 3}),
}


def load_byzfl():
    """ByzFL's aggregators module, or None when ByzFL is not installed. The package
    is registered without running its ``__init__`` (which imports torchvision), so
    ``byzfl.aggregators.aggregators`` and the utilities it uses load on their own."""
    spec = importlib.util.find_spec("byzfl")
    if spec is None or not spec.submodule_search_locations:
        return None
    if "byzfl" not in sys.modules:
        package = types.ModuleType("byzfl")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["byzfl"] = package
    return importlib.import_module("byzfl.aggregators.aggregators")


def innet_rule(name: str, f: int, p: int):
    params = BYZFL[name][2](f) if name in BYZFL else {"f": f}
    params = {k: (p - f if v == "p-f" else v) for k, v in params.items()}
    return aggregators.get(name, **params)


def stack(p: int, n: int, f: int, device: torch.device) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    G = torch.randn(p, n, generator=gen)
    G[:f] = torch.rand(f, n, generator=gen)  # f uniform-random rows (REFERENCE §3)
    return G.to(device)


def numpy_sum(G: torch.Tensor):
    if G.device.type == "cuda":  # no numpy on the GPU: a torch sum plays its part
        return lambda: G.sum(dim=0)
    X = G.numpy()
    return lambda: X.sum(axis=0)


def compare(G, names, f, repeats, device, byzfl) -> dict[str, float]:
    p = G.shape[0]
    total = numpy_sum(G)
    results: dict[str, float] = {}
    for name in names:
        rule = innet_rule(name, f, p)
        fns = [total, lambda rule=rule: rule(G)]
        if byzfl is not None and name in BYZFL:
            cls, theirs, _ = BYZFL[name]
            other = getattr(byzfl, cls)(**theirs(f))
            fns.append(lambda other=other: other(G))
        t = alternating(fns, repeats, device)
        results[f"{name}_ms"] = 1e3 * t[1]
        results[f"{name}_vs_numpy_sum"] = t[1] / t[0]
        line = f"  {name:<18} {1e3 * t[1]:9.1f} ms  {t[1] / t[0]:6.2f}× numpy sum"
        if len(t) == 3:
            results[f"{name}_byzfl_ms"] = 1e3 * t[2]
            results[f"{name}_vs_byzfl"] = t[2] / t[1]
            line += f"   ByzFL {1e3 * t[2]:9.1f} ms  ({t[2] / t[1]:6.2f}× faster)"
        print(line, flush=True)
    results["numpy_sum_ms"] = 1e3 * alternating([total], repeats, device)[0]
    return results


def full_reference(G, f, lam, repeats, device) -> dict[str, float]:
    """FA's Gram path against the literal SVD-per-step IRLS (tests/references.py)."""
    results = {}
    m = aggregators.flag.default_m(G.shape[0])
    for tag, value in (("lam0", 0.0), ("lam", lam)):
        fa = aggregators.get("fa", f=f, m=m, lam=value, iters=5, tol=0.0)
        gram = alternating([lambda fa=fa: fa(G)], repeats, device)[0]
        start = time.perf_counter()
        references.fa_svd(G, m, lam=value, iters=5, tol=0.0)
        if device.type == "cuda":
            torch.cuda.synchronize()
        svd = time.perf_counter() - start
        results.update({f"fa_gram_{tag}_ms": 1e3 * gram, f"fa_svd_{tag}_ms": 1e3 * svd,
                        f"fa_gram_vs_svd_{tag}": svd / gram})
        print(f"  fa gram λ={value:<5g} {1e3 * gram:9.1f} ms   svd {1e3 * svd:10.1f} ms   "
              f"speed-up {svd / gram:8.1f}×", flush=True)
    return results


def scaling(names, f, repeats, device) -> None:
    """Markdown tables: ms per rule against n (p = 16) and against p (n = 2^18)."""
    def table(title, cases):
        print(f"\n{title}\n")
        print("| " + " | ".join(["rule"] + [label for label, _, _ in cases]) + " |")
        print("|" + "---|" * (len(cases) + 1))
        rows: dict[str, list[str]] = {"numpy sum": []}
        for _, p, n in cases:
            G = stack(p, n, min(f, (p - 3) // 4), device)
            total = numpy_sum(G)
            rows["numpy sum"].append(f"{1e3 * alternating([total], repeats, device)[0]:.2f}")
            for name in names:
                rule = innet_rule(name, min(f, (p - 3) // 4), p)
                t = alternating([lambda rule=rule, G=G: rule(G)], repeats, device)[0]
                rows.setdefault(name, []).append(f"{1e3 * t:.2f}")
            del G
        for name, cells in rows.items():
            print("| " + " | ".join([name] + cells) + " |", flush=True)

    table("time (ms) vs n, p = 16", [(f"2^{k}", 16, 1 << k) for k in range(16, 25, 2)])
    table("time (ms) vs p, n = 2^18", [(f"p={p}", p, 1 << 18) for p in (8, 16, 32, 64)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1 << 20)
    ap.add_argument("--p", type=int, default=16)
    ap.add_argument("--f", type=int, default=3)
    ap.add_argument("--rules", default=",".join(aggregators.NAMES),
                    help="comma-separated rule names (default: all)")
    ap.add_argument("--lam", type=float, default=8.0, help="λ of the λ > 0 comparison")
    ap.add_argument("--repeats", type=int, default=11,
                    help="alternating rounds; each time is their median (5 left the "
                         "ratios ±20 %% on a shared 2-core host)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--full", action="store_true",
                    help="add FA's SVD-per-step reference (minutes at the default size)")
    ap.add_argument("--scaling", action="store_true",
                    help="print time-vs-n and time-vs-p tables instead")
    args = ap.parse_args()
    names = [name.strip() for name in args.rules.split(",") if name.strip()]
    unknown = sorted(set(names) - set(aggregators.NAMES))
    if unknown:
        ap.error(f"unknown rules {unknown}; choose from {', '.join(aggregators.NAMES)}")
    device = pick_device(args.device)
    byzfl = load_byzfl()
    print(f"p={args.p} n={args.n} f={args.f} float32 on {device} "
          f"(torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"ByzFL {'found' if byzfl else 'not installed: no *_vs_byzfl'})")
    if args.scaling:
        scaling(names, args.f, args.repeats, device)
        return
    G = stack(args.p, args.n, args.f, device)
    results = compare(G, names, args.f, args.repeats, device, byzfl)
    coordinatewise = [results[f"{n}_vs_numpy_sum"] for n in COORDINATEWISE if n in names]
    if coordinatewise:
        results["worst_coordinatewise_vs_numpy_sum"] = max(coordinatewise)
    # the mean is one torch.mean call in both libraries (innet adds a finiteness test
    # of the output): its ratio is printed, but it measures no algorithm
    speedups = [v for k, v in results.items()
                if k.endswith("_vs_byzfl") and k != "mean_vs_byzfl"]
    if speedups:
        results["min_speedup_vs_byzfl"] = min(speedups)
    if args.full:
        results.update(full_reference(G, args.f, args.lam, 1, device))
    print(json.dumps({"device": str(device), "p": args.p, "n": args.n, "f": args.f,
                      **results}))


if __name__ == "__main__":
    main()
