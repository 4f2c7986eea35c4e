"""The ``innet`` command line (also ``python -m innet``)."""

from __future__ import annotations

import argparse
import sys

from innet import config


def _scenario_flags(p) -> None:
    p.add_argument("scenario", nargs="?", help="TOML scenario file (default: built-in defaults)")
    p.add_argument("--out", help="output folder (default: runs/<name>)")
    p.add_argument("--name", help="scenario name")
    p.add_argument("--seed", type=int)
    p.add_argument("--seeds", help="run every path once per seed, e.g. --seeds 0,1,2 "
                   "(summary: mean ± sd)")
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
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="sets",
                   help="set any scenario key (TOML value), e.g. --set network.up_loss=0.1 "
                   "--set 'paths[0].params.lam=8' (repeatable)")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                   dest="grids", help="sweep a key over values, e.g. --grid workers.f=0,1,3 "
                   "(repeatable; adds to the file's [sweep] table)")
    p.add_argument("-j", "--jobs", type=int, default=1,
                   help="run units (paths × seeds) or sweep points in parallel processes")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--no-report", action="store_true",
                   help="skip report.md and the figures")


def _add_run(sub) -> None:
    p = sub.add_parser(
        "run",
        help="train with one or more aggregation paths; write metrics, summary, report",
        description="Run a scenario (TOML file and/or flags; flags override the file). "
        "Writes metrics.jsonl (streamed), summary.json, config.toml, report.md and "
        "figures/ to the output folder. A scenario with a [sweep] table (or --grid) "
        "runs as a sweep.",
    )
    _scenario_flags(p)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true",
                      help="continue a killed run in its folder (same settings), from its "
                      "last checkpoint (training.checkpoint_every)")
    mode.add_argument("--force", action="store_true",
                      help="replace the run the output folder holds")


def _add_sweep(sub) -> None:
    p = sub.add_parser(
        "sweep",
        help="run a grid of scenarios (resumable, optionally in parallel) and report",
        description="Run every point of the scenario's [sweep] grid and --grid axes into "
        "<out>/<point>/: points already finished with the same settings are skipped, "
        "unfinished ones resume, ones of other settings run again; then write "
        "<out>/report.md (final accuracy vs the swept key, network counters, claims).",
    )
    _scenario_flags(p)
    p.add_argument("--force", action="store_true", help="rerun finished points too")


def _toml_value(text: str):
    import tomllib

    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text  # a bare word: a string


def _toml_values(text: str) -> list:
    import tomllib

    try:
        return tomllib.loads(f"v = [{text}]")["v"]
    except tomllib.TOMLDecodeError:
        return [v.strip() for v in text.split(",") if v.strip()]


def _split(option: str, item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key.strip() or not value.strip():
        raise config.ScenarioError(f"{option} {item!r}: expected KEY=VALUE")
    return key.strip(), value.strip()


def _scenario_from_args(args) -> config.Scenario:
    data = config.read_toml(args.scenario) if args.scenario else {}
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
    if args.seeds is not None:
        seeds = _toml_values(args.seeds)
        if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
            raise config.ScenarioError(f"--seeds {args.seeds!r}: expected integers, e.g. 0,1,2")
        data["seeds"] = seeds
    if args.agg:
        data["paths"] = [{"rule": rule} for rule in args.agg]
    for item in args.sets:
        key, value = _split("--set", item)
        config.set_key(data, key, _toml_value(value))
    for item in args.grids:
        key, value = _split("--grid", item)
        data.setdefault("sweep", {})[key] = _toml_values(value)
    scenario = config.from_dict(data)
    if args.out is None and not scenario.out and args.name is None:
        # flags changed the file's settings: their own folder, not the file's
        file_only = config.from_dict(config.read_toml(args.scenario) if args.scenario else {})
        from innet.runs import settings_hash

        if settings_hash(file_only) != settings_hash(scenario):
            scenario.out = f"runs/{scenario.name}-{settings_hash(scenario)[:8]}"
    return scenario


def _report(folder, args) -> None:
    if args.no_report:
        return
    from innet import report

    path = report.write_report(folder)
    print(f"report: {path}")


def cmd_run(args) -> int:
    from innet import experiment

    scenario = _scenario_from_args(args)
    if scenario.sweep:
        return _sweep(scenario, args)
    out = experiment.output_dir(scenario, args.out)
    summary = experiment.run(scenario, str(out), progress=not args.no_progress, jobs=args.jobs,
                             resume=args.resume, force=args.force)
    return _print_run(summary, out, args)


def _print_run(summary, out, args, extra: str = "") -> int:
    """The summary table, where the outputs are, and the report."""
    from innet import experiment

    print()
    print(experiment.format_table(summary))
    print(f"\noutputs in {out}/ (metrics.jsonl, summary.json, config.toml{extra})")
    _report(out, args)
    return 0


def _sweep(scenario, args) -> int:
    from innet import experiment
    from innet.sweep import run_sweep

    out = experiment.output_dir(scenario, args.out)
    summaries = run_sweep(scenario, out, jobs=args.jobs, progress=not args.no_progress,
                          force=args.force)
    print()
    for point, summary in summaries.items():
        print(f"== {point}")
        print(experiment.format_table(summary))
    print(f"\noutputs in {out}/ (one folder per point, sweep.json, summary.json, "
          "sweep_summary.json)")
    _report(out, args)
    return 0


def cmd_sweep(args) -> int:
    scenario = _scenario_from_args(args)
    if not scenario.sweep:
        raise config.ScenarioError("sweep: the scenario has no [sweep] table; add one or "
                                   "pass --grid KEY=V1,V2")
    return _sweep(scenario, args)


def _add_report(sub) -> None:
    p = sub.add_parser(
        "report",
        help="(re)write report.md and figures/ for a run or sweep folder",
        description="Read a run folder (metrics.jsonl, summary.json, config.toml) or a "
        "sweep folder (sweep.json) and write report.md with PNG figures into it.",
    )
    p.add_argument("folder", help="a run or sweep output folder")
    p.add_argument("--tensorboard", action="store_true",
                   help="also write TensorBoard event files to FOLDER/tensorboard/ (a run "
                   "folder; needs the tensorboard package)")


def cmd_report(args) -> int:
    from innet import report

    print(f"report: {report.write_report(args.folder)}")
    if args.tensorboard:
        print(f"tensorboard: {report.write_tensorboard(args.folder)}")
    return 0


def _add_compare(sub) -> None:
    p = sub.add_parser(
        "compare",
        help="several run folders on one table and one set of figures",
        description="Put every path of several run folders on the same accuracy, "
        "time-to-accuracy, loss and network figures, with one table (compare.md).",
    )
    p.add_argument("folders", nargs="+", help="run output folders")
    p.add_argument("--out", default="runs/compare", help="where to write (default runs/compare)")


def cmd_compare(args) -> int:
    from innet import report

    print(f"comparison: {report.write_comparison(args.folders, args.out)}")
    return 0


BENCHMARKS = {
    "aggregators": "every rule vs a numpy sum and vs ByzFL (benchmarks/aggregators.py)",
    "fa_outputs": "FA output modes: accuracy of each (benchmarks/fa_outputs.py)",
    "emulator": "switch emulator vs numpy: ratios, Mpps (benchmarks/emulator.py)",
    "exactness": "randomised loss/outage/replay campaign: silent wrong sums "
                 "(benchmarks/exactness.py)",
    "quant": "quantized eigensolvers: time and subspace angles per W (benchmarks/quant.py)",
    "step": "a training step's parts: worker gradients vs each rule (benchmarks/step.py)",
    "fa_offload_study": "offloaded vs full FA aggregate grid and figure "
                        "(benchmarks/fa_offload_study.py)",
    "offload_integrity": "phase-2 lies caught, false alarms, the residual lie's damage "
                         "(benchmarks/offload_integrity.py)",
    "udp_switch": "the UDP switch server's packets/s vs a recv_into loop "
                  "(benchmarks/udp_switch.py)",
}


def _add_bench(sub) -> None:
    p = sub.add_parser(
        "bench",
        help="run the benchmarks (each prints ratios against a baseline of the same run)",
        description="Run benchmark scripts from benchmarks/: "
        + "; ".join(f"{k}: {v}" for k, v in BENCHMARKS.items()),
    )
    p.add_argument("names", nargs="*", metavar="NAME",
                   help=f"which ({', '.join(BENCHMARKS)}; default aggregators, emulator, quant)")


def cmd_bench(args) -> int:
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "benchmarks"
    names = args.names or ["aggregators", "emulator", "quant"]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        print(f"innet bench: unknown benchmark {unknown[0]!r}; one of {', '.join(BENCHMARKS)}",
              file=sys.stderr)
        return 2
    if not root.is_dir():
        print(f"innet bench: {root} not found (benchmarks ship with the source checkout)",
              file=sys.stderr)
        return 2
    code = 0
    for name in names:
        print(f"== {name}: {BENCHMARKS[name]}", flush=True)
        code |= subprocess.call([sys.executable, str(root / f"{name}.py")])
    return code


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
    from p4_models import PROGRAMS

    p.add_argument("program", choices=list(PROGRAMS), help="switch program")
    p.add_argument("--target", default="tofino1", choices=["tofino1", "tofino2"])
    p.add_argument("-k", type=int, default=64, help="int32 values per packet (default 64)")
    p.add_argument("--pool", type=int, default=512, help="slots per shadow set (default 512)")
    p.add_argument("-p", "--workers", type=int, default=15, dest="p",
                   help="workers (sketch_store, phase2_guard; default 15)")
    p.add_argument("--k-prime", type=int, default=4096, dest="k_prime",
                   help="sketch size k′ (sketch_store; default 4096)")


def cmd_inspect(args) -> int:
    from p4_models import PROGRAMS, TARGETS

    for flag, value in (("-k", args.k), ("--pool", args.pool), ("-p", args.p),
                        ("--k-prime", args.k_prime)):
        if value < 1:
            raise config.ScenarioError(f"inspect {flag}: must be >= 1, got {value}")
    if args.program == "sketch_store" and args.k_prime % args.k:
        raise config.ScenarioError(f"inspect --k-prime: must be a multiple of -k ({args.k}), "
                                   f"got {args.k_prime}")
    build, _ = PROGRAMS[args.program]
    program = build(args.k, args.pool, args.p, args.k_prime)
    report = program.report(TARGETS[args.target])
    print(report)
    return 0 if report.fits else 1


def _add_launch(sub) -> None:
    p = sub.add_parser(
        "launch",
        help="run a scenario on real processes: a UDP switch server and torchrun ranks",
        description="Like `innet run`, but the switch is a UDP server process (`innet switch "
        "serve`) and the PS and the p workers are torch.distributed ranks started by "
        "torchrun (rank 0 the PS, ranks 1..p the workers, gloo): workers compute their own "
        "gradients and stream real packets; the run folder has run's form plus per-process "
        "counters (units/*.processes.json). ps and switch paths.",
    )
    _scenario_flags(p)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="run the units not finished yet")
    mode.add_argument("--force", action="store_true",
                      help="replace the run the output folder holds")
    p.add_argument("--pcap", default=None,
                   help="write the switch server's first --pcap-packets datagrams in and out "
                   "(real timestamps, per-worker hosts) to this pcap file")
    p.add_argument("--pcap-packets", type=int, default=20_000, dest="pcap_packets",
                   help="datagrams --pcap keeps (default 20000)")


def cmd_launch(args) -> int:
    from innet import experiment
    from innet.launch import Terminated, launch

    if args.pcap_packets < 1:
        raise config.ScenarioError(f"--pcap-packets: at least 1 datagram, got "
                                   f"{args.pcap_packets}")
    scenario = _scenario_from_args(args)
    if scenario.sweep:
        raise config.ScenarioError("sweep: innet launch runs one scenario; use innet sweep")
    out = experiment.output_dir(scenario, args.out)
    try:
        summary = launch(scenario, str(out), progress=not args.no_progress,
                         resume=args.resume, force=args.force, pcap=args.pcap,
                         pcap_packets=args.pcap_packets)
    except RuntimeError as err:
        print(f"innet launch: {err}", file=sys.stderr)
        return 1
    except Terminated as err:  # SIGTERM / SIGHUP: every process it started is stopped
        print("innet launch: stopped by a signal; the switch server and the ranks were "
              "stopped; `--resume` continues the units not finished", file=sys.stderr)
        return int(err.code or 1)
    return _print_run(summary, out, args, ", units/*.processes.json")


def _add_switch(sub) -> None:
    p = sub.add_parser(
        "switch",
        help="the switch emulator as a UDP server: serve, status, stop",
        description="`innet switch serve` runs the switch emulator as a process that "
        "receives innet packets over UDP in batches and answers with RESULT packets (the "
        "same compiled program as `innet run`); `status` prints its counters as JSON; "
        "`stop` shuts it down.",
    )
    ssub = p.add_subparsers(dest="switch_command", required=True)
    serve = ssub.add_parser("serve", help="run a switch server until stopped")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=0xBEE0,
                       help="data port (default 0xBEE0 = 48864; 0: any free port, printed)")
    serve.add_argument("--control-port", type=int, default=0, dest="control_port",
                       help="control port (default 0: any free port, printed)")
    serve.add_argument("-k", type=int, default=64, help="int32 values per packet (default 64)")
    serve.add_argument("--batch", type=int, default=1024,
                       help="datagrams per recvmmsg (default 1024)")
    serve.add_argument("--idle-timeout", type=float, default=None, dest="idle_timeout",
                       help="exit after this many seconds without a datagram")
    serve.add_argument("--pcap", default=None,
                       help="on exit, write the first --pcap-packets datagrams in and out "
                       "(real timestamps) to this pcap file")
    serve.add_argument("--pcap-packets", type=int, default=20_000, dest="pcap_packets",
                       help="datagrams --pcap keeps (default 20000)")
    for name in ("status", "stop"):
        q = ssub.add_parser(name, help=f"{name} of a running switch server")
        q.add_argument("--control", required=True, help="its control address HOST:PORT")


def cmd_switch(args) -> int:
    import json

    from emulator.server import SwitchServer, request

    if args.switch_command == "serve":
        if (not (args.port == 0 or 1 <= args.port <= 65535) or args.k < 1 or args.batch < 1
                or args.pcap_packets < 1):
            raise config.ScenarioError("switch serve: --port must be 0..65535, -k, --batch "
                                       "and --pcap-packets >= 1")
        server = SwitchServer(args.host, args.port, args.control_port, args.k, args.batch,
                              capture=args.pcap_packets if args.pcap else 0)
        (h, d), (_, c) = server.address, server.control_address
        print(json.dumps({"data": [h, d], "control": [h, c], "k": args.k}), flush=True)
        try:
            server.serve_forever(args.idle_timeout)
        except KeyboardInterrupt:
            pass
        finally:
            server.close()
            if args.pcap:
                server.write_capture(args.pcap)
        return 0
    host, _, port = args.control.rpartition(":")
    if not host or not port.isdigit():
        raise config.ScenarioError(f"switch {args.switch_command} --control: expected "
                                   f"HOST:PORT, got {args.control!r}")
    try:
        answer = request((host, int(port)), {"op": "status" if args.switch_command == "status"
                                             else "shutdown"})
    except TimeoutError as err:
        print(f"innet switch: {err}", file=sys.stderr)
        return 1
    print(json.dumps(answer, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="innet", description="In-network robust gradient aggregation lab."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_run(sub)
    _add_sweep(sub)
    _add_report(sub)
    _add_compare(sub)
    _add_inspect(sub)
    _add_bench(sub)
    _add_pcap(sub)
    _add_switch(sub)
    _add_launch(sub)
    args = parser.parse_args(argv)
    commands = {"run": cmd_run, "sweep": cmd_sweep, "report": cmd_report,
                "compare": cmd_compare, "inspect": cmd_inspect, "bench": cmd_bench,
                "pcap": cmd_pcap, "switch": cmd_switch, "launch": cmd_launch}
    from innet.runs import RunFolderError

    try:
        return commands[args.command](args)
    except RunFolderError as err:
        print(f"innet {args.command}: {err}", file=sys.stderr)
        return 2
    except config.ScenarioError as err:
        print(f"innet: invalid scenario: {err}", file=sys.stderr)
        return 2
    except FileNotFoundError as err:  # report/compare on a folder that is not a run
        print(f"innet {args.command}: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a full disk, a folder that vanished, …
        where = f" {err.filename}" if err.filename else ""
        print(f"innet {args.command}: cannot write{where}: {err.strerror or err}",
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
