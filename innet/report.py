"""Reports: Markdown with PNG figures for a run, a sweep, or several runs compared.

A run folder (``innet run``) gets ``report.md`` and ``figures/``: test accuracy
against step and against modelled aggregation time (time-to-accuracy), training
loss, and what went over the network (bytes, retransmissions, fallbacks, packets
lost without recovery). A sweep folder (``innet sweep``) gets the final accuracy of
every path against the swept key, the network counters against it, the claims of
``[report]`` checked at every point, and a report per point. ``compare`` puts paths
of several runs on one figure.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from innet import claims, config  # noqa: E402
from innet.config import Scenario  # noqa: E402

plt.rcParams.update({"figure.dpi": 110, "axes.grid": True, "grid.alpha": 0.3,
                     "axes.spines.top": False, "axes.spines.right": False,
                     "legend.fontsize": 8, "axes.titlesize": 10, "axes.labelsize": 9})


@dataclass
class Run:
    folder: Path
    scenario: Scenario
    summary: dict[str, dict[str, Any]]
    records: dict[str, list[dict[str, Any]]]  #: per path, in step order

    @property
    def paths(self) -> list[str]:
        return list(self.summary)


def load_run(folder: str | Path) -> Run:
    folder = Path(folder)
    for name in ("summary.json", "config.toml", "metrics.jsonl"):
        if not (folder / name).exists():
            raise FileNotFoundError(f"{folder} is not a run folder: {name} is missing")
    records: dict[str, list[dict[str, Any]]] = defaultdict(list)
    with (folder / "metrics.jsonl").open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:  # the line a crash cut short
                    continue
                records[record["path"]].append(record)
    return Run(folder, config.load(folder / "config.toml"),
               json.loads((folder / "summary.json").read_text()), dict(records))


def describe(s: Scenario) -> str:
    w, d, t, n = s.workers, s.data, s.training, s.network
    text = (f"p = {w.p} workers, f = {w.f} Byzantine ({w.attack}), {d.dataset}/{d.model}, "
            f"batch {d.batch}, {t.steps} steps, lr {t.lr}, seed {s.seed}")
    net = []
    if n.up_loss or n.down_loss or n.burst:
        where = f"workers {n.lossy_workers}" if n.lossy_workers else "every link"
        net.append(f"loss up {n.up_loss:g} / down {n.down_loss:g}"
                   + (f", Gilbert–Elliott {n.burst}" if n.burst else "") + f" on {where}")
    for link in n.links:
        net.append(f"link {link.worker}: " + ", ".join(
            f"{k} {getattr(link, k)}" for k in ("up_loss", "down_loss", "up_burst", "down_burst")
            if getattr(link, k) is not None))
    if n.duplicate or n.reorder:
        net.append(f"duplicate {n.duplicate:g}, reorder ≤ {n.reorder}")
    if n.failed_port:
        net.append(f"port of worker {n.failed_port[0]} down for rounds "
                   f"{n.failed_port[1]}–{n.failed_port[2]}")
    if n.crash:
        net.append(f"worker {n.crash[0]} crashes at step {n.crash[1]}")
    if net:
        net.append("retransmission on" if n.recovery else "no recovery: lost packets zero-filled")
        text += ". Network: " + "; ".join(net)
    return text


# -- figures --------------------------------------------------------------------------
def _series(records, key):
    pts = [(r["step"], r[key], r.get("modelled_s", 0.0)) for r in records if key in r]
    return [p[0] for p in pts], [p[1] for p in pts], [p[2] for p in pts]


def _save(fig, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path.name


def run_figures(runs: list[tuple[str, list[dict[str, Any]]]], folder: Path,
                title: str) -> list[tuple[str, str]]:
    """Figures for labelled record lists; returns (caption, file) pairs."""
    out = []
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for label, records in runs:
        steps, acc, modelled = _series(records, "test_accuracy")
        line, = a1.plot(steps, acc, marker="o", ms=3, label=label)
        if any(m > 0 for m in modelled):
            a2.plot([1e3 * m for m in modelled], acc, marker="o", ms=3, color=line.get_color(),
                    label=label)
    a1.set(xlabel="step", ylabel="test accuracy", title=f"{title}: accuracy vs step",
           ylim=(0, 1))
    a2.set(xlabel="modelled aggregation time (ms, log)", ylabel="test accuracy",
           title="time to accuracy (emulator.timing)", ylim=(0, 1))
    if a2.lines:
        a2.set_xscale("log")
    a1.legend(loc="lower right")
    out.append(("Test accuracy against step and against modelled aggregation time.",
                _save(fig, folder / "accuracy.png")))

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for label, records in runs:
        steps, loss, _ = _series(records, "train_loss")
        ax.plot(steps, loss, lw=1, label=label)
    ax.set(xlabel="step", ylabel="training loss (honest workers)", title=f"{title}: loss")
    if any(line.get_ydata().size and min(line.get_ydata()) > 0 for line in ax.lines):
        ax.set_yscale("log")
    ax.legend(loc="upper right")
    out.append(("Training loss of the honest workers' minibatches.",
                _save(fig, folder / "loss.png")))

    panels = [("bytes_on_wire", "MB on the wire per step", 1e-6),
              ("retransmissions", "retransmissions per step", 1.0),
              ("results_lost", "result packets lost (resent) per step", 1.0),
              ("fallback_chunks", "chunks sent to the PS fallback per step", 1.0),
              ("offload_fallback", "offload steps sent to the PS", 1.0),
              ("packets_lost", "packets lost, not recovered, per step", 1.0)]
    panels = [p for p in panels if any(r.get(p[0]) for _, rec in runs for r in rec)]
    if panels:
        fig, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels), 3.6),
                                 squeeze=False)
        labels = [label for label, _ in runs]
        for ax, (key, name, scale) in zip(axes[0], panels):
            values = [scale * sum(r.get(key, 0) for r in rec) / max(len(rec), 1)
                      for _, rec in runs]
            ax.bar(range(len(labels)), values, color=[f"C{i}" for i in range(len(labels))])
            ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=7)
            ax.set_title(name)
        out.append(("What went over the network, per step (means over the run).",
                    _save(fig, folder / "network.png")))
    return out


# -- tables and text --------------------------------------------------------------------
def _fallbacks(r: dict[str, Any]) -> int:
    net = r.get("network") or {}
    return int(sum((net.get("fallback_chunks") or {}).values()) + net.get("fallback_steps", 0))


def results_table(summary: dict[str, dict[str, Any]], steps: int) -> str:
    rows = ["| path | test acc | test loss | ms/step | agg ms/step | modelled µs/step | "
            "MB/step | retransmissions | results lost | fallbacks | lost, unrecovered |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in summary.items():
        net = r.get("network") or {}
        rows.append(
            f"| {name} | {r['final_test_accuracy']:.4f} | {r['final_test_loss']:.4f} | "
            f"{1e3 * r['seconds_per_step']:.2f} | {1e3 * r['aggregate_seconds_per_step']:.2f} | "
            f"{1e6 * r['modelled_seconds_per_step']:.1f} | "
            f"{1e-6 * net.get('bytes_on_wire', 0) / steps:.3f} | "
            f"{net.get('retransmissions', 0)} | {net.get('results_lost', 0)} | "
            f"{_fallbacks(r)} | "
            f"{net.get('packets_lost_unrecovered', 0)} |")
    return "\n".join(rows)


def run_trends(summary: dict[str, dict[str, Any]]) -> list[str]:
    acc = {k: v["final_test_accuracy"] for k, v in summary.items()}
    if not acc:
        return []
    best = max(acc, key=acc.get)
    worst = min(acc, key=acc.get)
    lines = [f"Best final accuracy: **{best}** {acc[best]:.4f}; worst: **{worst}** "
             f"{acc[worst]:.4f}."]
    close = [k for k in acc if k != best and acc[best] - acc[k] <= 0.01]
    if close:
        lines.append(f"Within 1 point of the best: {', '.join(close)}.")
    collapsed = [k for k in acc if acc[k] < 0.5 * acc[best]]
    if collapsed:
        lines.append(f"Collapsed (below half the best): {', '.join(collapsed)}.")
    return lines


def _check_lines(scenario: Scenario, points: list[tuple[str, dict[str, Any], dict]]) -> list[str]:
    """Each expectation checked at the points where its ``where`` holds."""
    lines = []
    for e in scenario.report.expect:
        held, failed = [], []
        for name, values, summary in points:
            if e.where and not claims.evaluate(e.where, values=values):
                continue
            acc = {k: v["final_test_accuracy"] for k, v in summary.items()}
            (held if claims.evaluate(e.check, accuracies=acc) else failed).append(name)
        total = len(held) + len(failed)
        scope = f" where `{e.where}`" if e.where else ""
        mark = "holds" if not failed else ("fails" if not held else "partly holds")
        line = f"- `{e.check}`{scope}: **{mark}** ({len(held)}/{total} points"
        line += f"; fails at {', '.join(failed)})" if failed and total > 1 else ")"
        lines.append(line)
    return lines


def write_run_report(folder: str | Path) -> Path:
    run = load_run(folder)
    s = run.scenario
    figs = run_figures(list(run.records.items()), run.folder / "figures", s.name)
    md = [f"# {s.name}", "", describe(s) + ".", ""]
    if s.report.claim:
        md += ["## The seeds' claim", "", f"> {s.report.claim}", ""]
    checks = _check_lines(s, [("run", {}, run.summary)])
    if checks:
        md += ["## Checks", "", *checks, ""]
    md += ["## Results", "", results_table(run.summary, s.training.steps), "",
           "## What it shows", "", *[f"- {t}" for t in run_trends(run.summary)], "",
           "## Figures", ""]
    md += [f"![{caption}](figures/{file})\n\n{caption}\n" for caption, file in figs]
    md += ["", "Files: `metrics.jsonl` (one line per step and path), `summary.json`, "
           "`config.toml` (the resolved scenario)."]
    path = run.folder / "report.md"
    path.write_text("\n".join(md) + "\n", encoding="utf-8")
    return path


# -- sweeps ----------------------------------------------------------------------------
def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _wide(values: list) -> bool:
    """Numeric values spread over decades (a λ sweep): a log-like axis reads better."""
    positive = [v for v in values if v > 0]
    return min(values) >= 0 and len(positive) > 2 and max(positive) > 20 * min(positive)


def write_sweep_report(folder: str | Path, point_reports: bool = True) -> Path:
    folder = Path(folder)
    index = json.loads((folder / "sweep.json").read_text())
    scenario = config.load(folder / "config.toml")
    points = []
    for pt in index["points"]:
        summary_file = folder / pt["name"] / "summary.json"
        if not summary_file.exists():
            continue  # not run yet: the report covers what is there
        points.append((pt["name"], pt["values"], json.loads(summary_file.read_text())))
        if point_reports:
            write_run_report(folder / pt["name"])
    if not points:
        raise FileNotFoundError(f"{folder}: no finished sweep point")
    keys = index["keys"]
    x = scenario.report.x or keys[0]
    others = [k for k in keys if k != x]
    paths = list(points[0][2])
    figdir = folder / "figures"

    # final accuracy against x: one line per path (and per value of the other keys)
    groups: dict[tuple, list] = defaultdict(list)
    for _name, values, summary in points:
        groups[tuple(values[k] for k in others)].append((values[x], summary))
    xs_all = [values[x] for _, values, _ in points]
    numeric = all(_is_number(v) for v in xs_all)
    ticks = list(dict.fromkeys(xs_all))
    pos = (lambda v: v) if numeric else (lambda v: ticks.index(v))
    fig, ax = plt.subplots(figsize=(6.4, 4))
    styles = ["-", "--", ":", "-."]
    for gi, (other, series) in enumerate(groups.items()):
        suffix = ", ".join(f"{k}={config._fmt(v)}" for k, v in zip(others, other))
        for pi, path in enumerate(paths):
            pts = [(pos(xv), s[path]["final_test_accuracy"]) for xv, s in series if path in s]
            ax.plot(*zip(*pts), marker="o", ms=4, ls=styles[gi % 4], color=f"C{pi}",
                    label=path + (f" ({suffix})" if suffix else ""))
    if not numeric:
        ax.set_xticks(range(len(ticks)), [config._fmt(t) for t in ticks])
    elif _wide(ticks):
        ax.set_xscale("symlog", linthresh=min(v for v in ticks if v > 0))
        ax.set_xticks(ticks, [config._fmt(t) for t in ticks])
    elif all(isinstance(v, int) for v in xs_all):
        ax.set_xticks(ticks)
    ax.set(xlabel=x, ylabel="final test accuracy", ylim=(0, 1),
           title=f"{scenario.name}: final accuracy vs {x}")
    ax.legend(fontsize=7, loc="best")
    figs = [(f"Final test accuracy of every path against {x}.",
             _save(fig, figdir / "final_accuracy.png"))]

    counters = [("bytes_on_wire", "MB on the wire per step", 1e-6 / scenario.training.steps),
                ("retransmissions", "retransmissions (run total)", 1.0),
                ("fallbacks", "fallbacks (chunks + offload steps)", 1.0),
                ("packets_lost_unrecovered", "packets lost, not recovered", 1.0)]

    def counter(r, key):
        return _fallbacks(r) if key == "fallbacks" else (r.get("network") or {}).get(key, 0)

    counters = [c for c in counters
                if any(counter(s[p], c[0]) for _, _, s in points for p in s)]
    if counters:
        fig, axes = plt.subplots(1, len(counters), figsize=(3.6 * len(counters), 3.6),
                                 squeeze=False)
        for ax, (key, name, scale) in zip(axes[0], counters):
            for gi, series in enumerate(groups.values()):
                for pi, path in enumerate(paths):
                    pts = [(pos(xv), scale * counter(s[path], key)) for xv, s in series
                           if path in s]
                    ax.plot(*zip(*pts), marker="o", ms=3, ls=styles[gi % 4], color=f"C{pi}",
                            label=path if gi == 0 else None)
            if not numeric:
                ax.set_xticks(range(len(ticks)), [config._fmt(t) for t in ticks])
            elif all(isinstance(v, int) for v in xs_all):
                ax.set_xticks(ticks)
            ax.set(xlabel=x, title=name)
        axes[0][0].legend(fontsize=7)
        figs.append((f"Network counters against {x}.", _save(fig, figdir / "network.png")))

    head = "| point | " + " | ".join(paths) + " |"
    table = [head, "|---" * (len(paths) + 1) + "|"]
    for name, _, summary in points:
        table.append(f"| [{name}]({name}/report.md) | " + " | ".join(
            f"{summary[p]['final_test_accuracy']:.4f}" if p in summary else "–"
            for p in paths) + " |")
    trends = []
    for path in paths:
        by_x = [(values[x], s[path]["final_test_accuracy"]) for _, values, s in points
                if path in s and all(values[k] == points[0][1][k] for k in others)]
        if len(by_x) > 1:
            trends.append(f"**{path}**: " + " → ".join(
                f"{a:.3f} ({x}={config._fmt(v)})" for v, a in by_x))
    md = [f"# {scenario.name} (sweep over {', '.join(keys)})", "",
          describe(scenario) + " (base scenario; each point overrides the swept keys).", ""]
    if scenario.report.claim:
        md += ["## The seeds' claim", "", f"> {scenario.report.claim}", ""]
    checks = _check_lines(scenario, points)
    if checks:
        md += ["## Checks", "", *checks, ""]
    md += ["## Final test accuracy", "", *table, "", "## What it shows", "",
           *[f"- {t}" for t in trends], ""]
    if len(points) < len(index["points"]):
        md += [f"Only {len(points)} of {len(index['points'])} points have finished.", ""]
    md += ["## Figures", ""] + [f"![{c}](figures/{f})\n\n{c}\n" for c, f in figs]
    md += ["", "Each point's folder has its own report.md, metrics.jsonl and summary.json."]
    path = folder / "report.md"
    path.write_text("\n".join(md) + "\n", encoding="utf-8")
    return path


def write_report(folder: str | Path) -> Path:
    """The report of a run or a sweep folder (whichever it is)."""
    folder = Path(folder)
    if (folder / "sweep.json").exists():
        return write_sweep_report(folder)
    return write_run_report(folder)


# -- several runs -----------------------------------------------------------------------
def write_comparison(folders: list[str | Path], out: str | Path) -> Path:
    """Paths of several run folders on one set of figures and one table."""
    out = Path(out)
    runs = [load_run(f) for f in folders]
    labelled = []
    summary = {}
    for run in runs:
        tag = run.folder.name
        for path, records in run.records.items():
            labelled.append((f"{tag}/{path}", records))
            if path in run.summary:
                summary[f"{tag}/{path}"] = run.summary[path]
    figs = run_figures(labelled, out / "figures", "comparison")
    md = ["# Comparison", ""]
    for run in runs:
        md.append(f"- `{run.folder}`: {describe(run.scenario)}.")
    steps = max(r.scenario.training.steps for r in runs)
    md += ["", "## Results", "", results_table(summary, steps), "",
           "(MB/step divides by the longest run's steps.)", "", "## What it shows", "",
           *[f"- {t}" for t in run_trends(summary)], "", "## Figures", ""]
    md += [f"![{c}](figures/{f})\n\n{c}\n" for c, f in figs]
    out.mkdir(parents=True, exist_ok=True)
    path = out / "compare.md"
    path.write_text("\n".join(md) + "\n", encoding="utf-8")
    return path
