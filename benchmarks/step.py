"""One training step's parts on the PS device: the p workers' gradients against each
aggregation rule, so the share of the step a robust rule costs is measured.

    python benchmarks/step.py                                    # digits MLP, CPU/auto
    python benchmarks/step.py --model resnet18 --images 3x32x32 --device cuda

``--images CxHxW`` trains on random images of that shape (a CIFAR-size model without
the data set; the timing does not depend on the pixels), otherwise on digits. Every
figure is the median over ``--repeats`` steps after one warm-up. The last line is
JSON with ``gradients_ms``, ``<rule>_ms`` and ``<rule>_share`` (rule time over
gradient time).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from timing import timed  # noqa: E402

from host import data as datasets  # noqa: E402
from host import models  # noqa: E402
from host.worker import WorkerPool  # noqa: E402
from innet import aggregators  # noqa: E402
from innet.devices import pick_device  # noqa: E402


def dataset(images: str | None) -> datasets.Dataset:
    if images is None:
        return datasets.load("digits")
    try:
        shape = tuple(int(x) for x in images.lower().split("x"))
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError
    except ValueError:
        raise SystemExit(f"--images: expected CxHxW such as 3x32x32, got {images!r}") from None
    gen = torch.Generator().manual_seed(0)
    return datasets.Dataset(
        f"random-{images}", torch.rand(4096, *shape, generator=gen),
        torch.randint(0, 10, (4096,), generator=gen), torch.rand(64, *shape, generator=gen),
        torch.randint(0, 10, (64,), generator=gen), 10,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mlp", choices=models.MODELS)
    ap.add_argument("--images", default=None, help="CxHxW random images instead of digits")
    ap.add_argument("--p", type=int, default=15)
    ap.add_argument("--f", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--rules", default="mean,median,multi_krum,bulyan,fa")
    args = ap.parse_args()
    device = pick_device(args.device)
    data = dataset(args.images)
    torch.manual_seed(0)
    model = models.build(args.model, data.image_shape, data.num_classes).to(device)
    pool = WorkerPool(model, data, args.p, args.batch, seed=0)

    G, _ = pool.gradients()
    grad_s = timed(pool.gradients, args.repeats, device)
    print(f"{args.model} on {data.name}, p={args.p} B={args.batch}, n={G.shape[1]:,} "
          f"parameters, {device} (torch {torch.__version__})")
    print(f"  gradients of the {args.p} workers  {1e3 * grad_s:9.2f} ms")
    results = {"model": args.model, "device": str(device), "p": args.p, "n": G.shape[1],
               "gradients_ms": 1e3 * grad_s}
    for name in args.rules.split(","):
        rule = aggregators.get(name, f=args.f)
        secs = timed(lambda rule=rule: rule(G), args.repeats, device)
        results[f"{name}_ms"] = 1e3 * secs
        results[f"{name}_share"] = secs / grad_s
        print(f"  {name:<30}{1e3 * secs:9.2f} ms  ({100 * secs / grad_s:5.1f} % of the gradients)")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
