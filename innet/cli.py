"""The ``innet`` command line (also ``python -m innet``)."""

from __future__ import annotations

import argparse
import sys

from innet import config


def _add_run(sub) -> None:
    p = sub.add_parser(
        "run",
        help="train with one or more aggregation paths and write metrics, summary and a table",
        description="Run a scenario (TOML file and/or flags; flags override the file).",
    )
    p.add_argument("scenario", nargs="?", help="TOML scenario file (default: built-in defaults)")
    p.add_argument("--out", help="output folder (default: runs/<name>)")
    p.add_argument("--name", help="scenario name")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    p.add_argument("-p", "--workers", type=int, dest="p", help="number of workers")
    p.add_argument("-f", "--byzantine", type=int, dest="f", help="number of Byzantine workers")
    p.add_argument("--attack", help="attack name, or none")
    p.add_argument("--dataset", help="digits, mnist, cifar10")
    p.add_argument("--root", help="local folder holding mnist/cifar10")
    p.add_argument("--download", action="store_true", help="let torchvision fetch the dataset")
    p.add_argument("--model", help="mlp, cnn, resnet18")
    p.add_argument("--batch", type=int, help="minibatch per worker")
    p.add_argument("--steps", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--momentum", type=float)
    p.add_argument("--weight-decay", type=float, dest="weight_decay")
    p.add_argument(
        "--agg",
        action="append",
        metavar="RULE",
        help="aggregation rule (repeat for several paths), e.g. --agg mean --agg fa",
    )
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _scenario_from_args(args) -> config.Scenario:
    import tomllib

    data = {}
    if args.scenario:
        try:
            with open(args.scenario, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise config.ScenarioError(f"scenario file {args.scenario!r} does not exist") from None
    flat = {
        ("name",): args.name,
        ("seed",): args.seed,
        ("device",): args.device,
        ("workers", "p"): args.p,
        ("workers", "f"): args.f,
        ("workers", "attack"): args.attack,
        ("data", "dataset"): args.dataset,
        ("data", "root"): args.root,
        ("data", "download"): True if args.download else None,
        ("data", "model"): args.model,
        ("data", "batch"): args.batch,
        ("training", "steps"): args.steps,
        ("training", "lr"): args.lr,
        ("training", "momentum"): args.momentum,
        ("training", "weight_decay"): args.weight_decay,
    }
    for keys, value in flat.items():
        if value is None:
            continue
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    if args.agg:
        data["paths"] = [{"rule": rule} for rule in args.agg]
    return config.from_dict(data)


def cmd_run(args) -> int:
    from innet import experiment

    scenario = _scenario_from_args(args)
    out = experiment.output_dir(scenario, args.out)
    summary = experiment.run(scenario, str(out), progress=not args.no_progress)
    print()
    print(experiment.format_table(summary))
    print(f"\noutputs in {out}/ (metrics.jsonl, summary.json, config.toml)")
    return 0


def _add_pcap(sub) -> None:
    p = sub.add_parser(
        "pcap",
        help="write the packets of a few in-network aggregation steps to a pcap file",
        description="Train a scenario's model for a few steps through the switch (wire-format "
        "engine, the scenario's [network] links) and write what reached the switch and the "
        "RESULT packets it sent to a pcap (Ethernet/IPv4/UDP 0xBEE0+job; Wireshark shows "
        "the UDP payload; the layer is innet.protocol.InnetAgg).",
    )
    p.add_argument("scenario", nargs="?", help="TOML scenario file (default: built-in defaults)")
    p.add_argument("--out", default="innet.pcap", help="pcap file to write (default innet.pcap)")
    p.add_argument("--steps", type=int, default=1, help="aggregation steps to capture")
    p.add_argument("--max-packets", type=int, default=5000, dest="max_packets",
                   help="stop capturing after this many packets (default 5000)")


def cmd_pcap(args) -> int:
    from innet import experiment
    from innet.protocol import flag
    from innet.protocol.pcap import write_pcap

    scenario = config.load(args.scenario) if args.scenario else config.from_dict({})
    if args.steps < 1 or args.max_packets < 1:
        raise config.ScenarioError("--steps and --max-packets must be >= 1")
    packets, stats = experiment.capture_packets(scenario, args.steps, args.max_packets)
    write_pcap(args.out, packets)
    results = int(((packets["flags"] & flag("RESULT")) != 0).sum())
    print(f"wrote {len(packets)} packets ({len(packets) - results} to the switch, {results} "
          f"results) of {args.steps} step(s) to {args.out}")
    for i, st in enumerate(stats):
        print(f"  step {i}: {st.packets_up} sent up, {st.retransmissions} retransmitted, "
              f"{st.results_lost} results lost, fallback {st.fallback_chunks}")
    return 0


def _add_inspect(sub) -> None:
    p = sub.add_parser(
        "inspect",
        help="resource report of a switch program on a target",
        description="Stages, stateful ALUs, SRAM, parsed bytes and recirculations of a "
        "p4_models program on a target, and whether it fits.",
    )
    p.add_argument("program", choices=["streaming_sum", "sketch_store", "phase2_guard"],
                   help="switch program")
    p.add_argument("--target", default="tofino1", choices=["tofino1", "tofino2"])
    p.add_argument("-k", type=int, default=64, help="int32 values per packet (default 64)")
    p.add_argument("--pool", type=int, default=512, help="slots per shadow set (default 512)")
    p.add_argument("-p", "--workers", type=int, default=15, dest="p",
                   help="workers (sketch_store, phase2_guard; default 15)")
    p.add_argument("--k-prime", type=int, default=4096, dest="k_prime",
                   help="sketch size k′ (sketch_store; default 4096)")


def cmd_inspect(args) -> int:
    from p4_models import TARGETS, phase2_guard, sketch_store, streaming_sum

    program = {"streaming_sum": lambda: streaming_sum(args.k, args.pool),
               "sketch_store": lambda: sketch_store(args.p, args.k_prime, args.k),
               "phase2_guard": lambda: phase2_guard(args.p, args.k)}[args.program]()
    report = program.report(TARGETS[args.target])
    print(report)
    return 0 if report.fits else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="innet", description="In-network robust gradient aggregation lab."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_run(sub)
    _add_pcap(sub)
    _add_inspect(sub)
    args = parser.parse_args(argv)
    try:
        return {"run": cmd_run, "pcap": cmd_pcap, "inspect": cmd_inspect}[args.command](args)
    except config.ScenarioError as err:
        print(f"innet: invalid scenario: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
