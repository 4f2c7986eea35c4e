"""Reports: Markdown with PNG figures for a run, a sweep, or several runs compared.

A run folder (``innet run``) gets ``report.md`` and ``figures/``: test accuracy
against step and against modelled aggregation time (time-to-accuracy), training
loss, final accuracy with its spread, and what went over the network (bytes,
retransmissions, fallbacks, packets lost without recovery). With several seeds every
curve is the mean over the seeds with a ±1 sd band, every final number is mean ± sd,
and two paths whose means are closer than 2 sd are reported as a tie. A sweep folder
(``innet sweep``) gets the final accuracy of every path against the swept key, the
network counters against it, the claims of ``[report]`` checked at every point, and a
report per point. ``compare`` puts paths of several runs on one figure.

Figures are meant for a paper: each path keeps one colour × line-style pair (distinct
for up to 40 paths), legends sit outside the axes, a run that diverged is clipped and
marked instead of flattening the rest, crashes and fallbacks are marked on the time
series, and titles come from the resolved scenario.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from innet import claims, config  # noqa: E402
from innet.config import Scenario  # noqa: E402
from innet.runs import RunFolderError, read_json  # noqa: E402

plt.rcParams.update({"figure.dpi": 110, "axes.grid": True, "grid.alpha": 0.3,
                     "axes.spines.top": False, "axes.spines.right": False,
                     "legend.fontsize": 8, "axes.titlesize": 10, "axes.labelsize": 9})

_COLOURS = [f"C{i}" for i in range(10)]
_LINES = ["-", "--", ":", "-."]
_MARKERS = ["o", "s", "^", "D"]
#: a loss this many times the median path's final loss (or non-finite) is a divergence
DIVERGED = 1e3


def style(i: int) -> dict[str, Any]:
    """Colour, line style and marker of the i-th path: distinct for 40 paths."""
    return {"color": _COLOURS[i % 10], "ls": _LINES[(i // 10) % 4],
            "marker": _MARKERS[(i // 10) % 4]}


def _legend_outside(ax) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0,
                  fontsize=7, frameon=False)


@dataclass
class Run:
    folder: Path
    scenario: Scenario
    summary: dict[str, dict[str, Any]]
    records: dict[str, list[dict[str, Any]]]  #: per path, every seed, in step order
    missing: list[str]  #: units (path, seed) that have not finished

    @property
    def paths(self) -> list[str]:
        return list(self.summary)


def _read_metrics(file: Path) -> list[dict[str, Any]]:
    out = []
    with file.open(encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # the line a crash cut short
                continue
            if isinstance(record, dict) and "path" in record and "step" in record:
                out.append(record)
    return out


def load_run(folder: str | Path) -> Run:
    folder = Path(folder)
    for name in ("summary.json", "config.toml", "metrics.jsonl"):
        if not (folder / name).exists():
            raise FileNotFoundError(f"{folder} is not a run folder: {name} is missing")
    try:
        scenario = config.load(folder / "config.toml")
    except config.ScenarioError as err:
        raise RunFolderError(f"{folder}/config.toml: {err}") from None
    summary = read_json(folder / "summary.json", "summary.json")
    if not isinstance(summary, dict):
        raise RunFolderError(f"{folder}/summary.json is damaged (not a table of paths)")
    records: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in _read_metrics(folder / "metrics.jsonl"):
        records[record["path"]].append(record)
    if not any(records.values()):
        raise RunFolderError(f"{folder}/metrics.jsonl holds no finished step: nothing to "
                             "report (did the run stop before its first unit finished?)")
    from innet.experiment import seeds_of

    missing = []
    for path in scenario.paths:
        done = set((summary.get(path.name) or {}).get("seeds", []))
        missing += [f"{path.name} (seed {s})" for s in seeds_of(scenario) if s not in done]
    return Run(folder, scenario, summary, dict(records), missing)


def title_of(s: Scenario) -> str:
    """A figure title from the resolved scenario (flags included)."""
    w, d = s.workers, s.data
    attack = f", f={w.f} {w.attack}" if w.f else ", f=0"
    params = (" (" + ", ".join(f"{k}={config.fmt(v)}" for k, v in w.attack_params.items())
              + ")") if w.f and w.attack_params else ""
    base = s.name.split("/")[0]
    return f"{base}: {d.dataset}, p={w.p}{attack}{params}"


def describe(s: Scenario) -> str:
    from innet.experiment import seeds_of

    w, d, t, n = s.workers, s.data, s.training, s.network
    seeds = seeds_of(s)
    seed_text = f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {seeds} (mean ± sd)"
    text = (f"p = {w.p} workers, f = {w.f} Byzantine ({w.attack}), {d.dataset}/{d.model}, "
            f"batch {d.batch}, {t.steps} steps, lr {t.lr}"
            + (f", momentum {t.momentum}" if t.momentum else "")
            + (f", lr × {t.gamma} at {t.milestones}" if t.milestones else "")
            + f", {seed_text}")
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
    if n.delay:
        net.append(f"delay {n.delay:g} (late by ≤ {n.max_delay} rounds)")
    if n.failed_port:
        net.append(f"port of worker {n.failed_port[0]} down for rounds "
                   f"{n.failed_port[1]}–{n.failed_port[2]}")
    if n.crash:
        net.append(f"worker {n.crash[0]} crashes at step {n.crash[1]}")
    if net:
        net.append("retransmission on" if n.recovery else "no recovery: lost packets zero-filled")
        text += ". Network: " + "; ".join(net)
    return text


# -- series over seeds ----------------------------------------------------------------
def mean_series(records: list[dict[str, Any]], key: str):
    """(steps, mean, sd, modelled_s mean) of ``key`` over the seeds, at the steps every
    seed recorded it; non-finite values stay (they mark a divergence)."""
    by_step: dict[int, list[tuple[float, float]]] = defaultdict(list)
    seeds = {r.get("seed", 0) for r in records}
    for r in records:
        if r.get(key) is not None:
            by_step[r["step"]].append((float(r[key]), float(r.get("modelled_s", 0.0))))
    steps = [s for s in sorted(by_step) if len(by_step[s]) == len(seeds)]
    mean = [statistics.fmean(v for v, _ in by_step[s]) for s in steps]
    sd = [statistics.stdev([v for v, _ in by_step[s]]) if len(seeds) > 1 else 0.0
          for s in steps]
    modelled = [statistics.fmean(m for _, m in by_step[s]) for s in steps]
    return steps, mean, sd, modelled


def _events(records: list[dict[str, Any]]) -> tuple[list[int], list[int]]:
    """Steps with a crash, and steps with a fallback (any seed)."""
    crashes = sorted({r["step"] for r in records if "crashed_worker" in r})
    fallbacks = sorted({r["step"] for r in records
                        if r.get("fallback_chunks") or r.get("offload_fallback")})
    return crashes, fallbacks


def _diverged(loss: list[float], reference: float) -> int | None:
    """Index of the first value that is non-finite or DIVERGED × the reference."""
    for i, v in enumerate(loss):
        if not math.isfinite(v) or (reference > 0 and v > DIVERGED * reference):
            return i
    return None


def _save(fig, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path.name


def run_figures(runs: list[tuple[str, list[dict[str, Any]]]], folder: Path,
                title: str, summary: dict[str, dict[str, Any]] | None = None
                ) -> list[tuple[str, str]]:
    """Figures for labelled record lists; returns (caption, file) pairs."""
    out = []
    many = any(len({r.get("seed", 0) for r in rec}) > 1 for _, rec in runs)
    band = " (mean over seeds, ±1 sd band)" if many else ""

    # accuracy vs step and vs modelled time, with crash and fallback marks
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    marked = False
    for i, (label, records) in enumerate(runs):
        st = style(i)
        steps, acc, sd, modelled = mean_series(records, "test_accuracy")
        if not steps:
            continue
        a1.plot(steps, acc, ms=3, label=label, **st)
        lo = [m - s for m, s in zip(acc, sd)]
        hi = [m + s for m, s in zip(acc, sd)]
        if many:
            a1.fill_between(steps, lo, hi, color=st["color"], alpha=0.15, lw=0)
        if any(m > 0 for m in modelled):
            a2.plot([1e3 * m for m in modelled], acc, ms=3, **st)
            if many:
                a2.fill_between([1e3 * m for m in modelled], lo, hi, color=st["color"],
                                alpha=0.15, lw=0)
        crashes, fallbacks = _events(records)
        for c in crashes:
            a1.axvline(c, color=st["color"], ls=":", lw=1)
            marked = True
        if fallbacks:
            a1.plot(fallbacks, [0.01] * len(fallbacks), "|", color=st["color"], ms=8)
            marked = True
    fig.suptitle(title, fontsize=10)
    a1.set(xlabel="step", ylabel="test accuracy", title="accuracy vs step", ylim=(0, 1))
    a2.set(xlabel="modelled aggregation time (ms, log)", ylabel="test accuracy",
           title="time to accuracy (emulator.timing)", ylim=(0, 1))
    if a2.lines:
        a2.set_xscale("log")
    else:
        a2.set_visible(False)
    handles, labels = a1.get_legend_handles_labels()
    if handles:
        (a2 if a2.lines else a1).legend(handles, labels, loc="upper left",
                                        bbox_to_anchor=(1.02, 1.0), fontsize=7, frameon=False)
    marks = (" Dotted verticals: a worker crashed; ticks on the axis: steps with a "
             "fallback to the PS." if marked else "")
    out.append(("Test accuracy against step and against modelled aggregation time"
                + band + "." + marks, _save(fig, folder / "accuracy.png")))

    # training loss, diverged paths clipped and marked
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    series = [(i, label, *mean_series(records, "train_loss")[:3])
              for i, (label, records) in enumerate(runs)]
    finals = [loss[-1] for _, _, _, loss, _ in series if loss and math.isfinite(loss[-1])]
    reference = statistics.median(finals) if finals else 0.0
    diverged_labels, kept_max = [], 0.0
    for i, label, steps, loss, sd in series:
        cut = _diverged(loss, reference)
        end = len(loss) if cut is None else cut
        kept_max = max([kept_max, *[v for v in loss[:end] if math.isfinite(v)]])
        name = label if cut is None else f"{label} (diverged at step {steps[cut]})"
        if cut is not None:
            diverged_labels.append(label)
        st = style(i)
        ax.plot(steps[:end], loss[:end], lw=1, color=st["color"], ls=st["ls"], label=name)
        if many and end:
            ax.fill_between(steps[:end], [m - s for m, s in zip(loss[:end], sd[:end])],
                            [m + s for m, s in zip(loss[:end], sd[:end])],
                            color=st["color"], alpha=0.12, lw=0)
        if cut is not None:
            ax.plot([steps[cut]], [0], marker="x", color=st["color"], ms=9, mew=2,
                    transform=ax.get_xaxis_transform(), clip_on=False)
    curves = [line.get_ydata() for line in ax.lines if line.get_marker() != "x"]
    if any(len(c) for c in curves) and all(v > 0 for c in curves for v in c):
        ax.set_yscale("log")
    if kept_max > 0 and diverged_labels:
        ax.set_ylim(top=2 * kept_max)
    ax.set(xlabel="step", ylabel="training loss (honest workers)", title=f"{title}\nloss")
    _legend_outside(ax)
    note = (f" Diverged (loss non-finite or > {DIVERGED:g}× the median path's): "
            f"{', '.join(diverged_labels)}, cut where it happened and marked ×."
            if diverged_labels else "")
    out.append(("Training loss of the honest workers' minibatches" + band + "." + note,
                _save(fig, folder / "loss.png")))

    # final accuracy with its spread: horizontal bars, names readable
    if summary:
        names = [label for label, _ in runs if label in summary]
        if names:
            fig, ax = plt.subplots(figsize=(6.5, 0.45 * len(names) + 1.2))
            acc = [summary[k]["final_test_accuracy"] for k in names]
            err = [summary[k].get("final_test_accuracy_sd", 0.0) for k in names]
            ypos = list(range(len(names)))[::-1]
            ax.barh(ypos, acc, xerr=err if many else None, capsize=3,
                    color=[style(i)["color"] for i in range(len(names))], alpha=0.85)
            for y, a, e in zip(ypos, acc, err):
                ax.text(min(a + e + 0.01, 0.98), y, f"{a:.3f}" + (f" ± {e:.3f}" if many else ""),
                        va="center", fontsize=7)
            ax.set_yticks(ypos, names, fontsize=8)
            ax.set(xlim=(0, 1), xlabel="final test accuracy", title=f"{title}\nfinal accuracy")
            out.append(("Final test accuracy" + (" (mean ± sd over seeds)" if many else "")
                        + ".", _save(fig, folder / "final_accuracy.png")))

    panels = [("bytes_on_wire", "MB on the wire per step", 1e-6),
              ("retransmissions", "retransmissions per step", 1.0),
              ("ps_retransmissions", "PS transport resends per step", 1.0),
              ("results_lost", "result packets lost (resent) per step", 1.0),
              ("fallback_chunks", "chunks sent to the PS fallback per step", 1.0),
              ("late_packets", "packets delayed across rounds per step", 1.0),
              ("offload_fallback", "offload steps sent to the PS", 1.0),
              ("quarantined", "workers in quarantine per step", 1.0),
              ("packets_lost", "packets lost, not recovered, per step", 1.0)]
    panels = [p for p in panels if any(r.get(p[0]) for _, rec in runs for r in rec)]
    if panels:
        labels = [label for label, _ in runs]
        fig, axes = plt.subplots(1, len(panels), figsize=(3.3 * len(panels),
                                                          0.35 * len(labels) + 1.4),
                                 squeeze=False, sharey=True)
        ypos = list(range(len(labels)))[::-1]
        for ax, (key, name, scale) in zip(axes[0], panels):
            values = [scale * sum(r.get(key, 0) for r in rec) / max(len(rec), 1)
                      for _, rec in runs]
            ax.barh(ypos, values, color=[style(i)["color"] for i in range(len(labels))])
            ax.set_title(name, fontsize=8)
        axes[0][0].set_yticks(ypos, labels, fontsize=7)
        out.append(("What went over the network, per step (means over the run).",
                    _save(fig, folder / "network.png")))
    return out


# -- tables and text --------------------------------------------------------------------
def _fallbacks(r: dict[str, Any]) -> int:
    net = r.get("network") or {}
    return int(sum((net.get("fallback_chunks") or {}).values()) + net.get("fallback_steps", 0))


def _pm(r: dict[str, Any], key: str, digits: int = 4) -> str:
    value = r[key]
    if r.get("n_seeds", 1) > 1:
        return f"{value:.{digits}f} ± {r.get(key + '_sd', 0.0):.{digits}f}"
    return f"{value:.{digits}f}"


def results_table(summary: dict[str, dict[str, Any]], steps: int) -> str:
    rows = ["| path | test acc | test loss | seeds | ms/step | agg ms/step | modelled µs/step | "
            "MB/step | retransmissions | results lost | fallbacks | lost, unrecovered |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in summary.items():
        net = r.get("network") or {}
        n = r.get("n_seeds", 1)
        rows.append(
            f"| {name} | {_pm(r, 'final_test_accuracy')} | {_pm(r, 'final_test_loss')} | "
            f"{n} | {1e3 * r['seconds_per_step']:.2f} | "
            f"{1e3 * r['aggregate_seconds_per_step']:.2f} | "
            f"{1e6 * r['modelled_seconds_per_step']:.1f} | "
            f"{1e-6 * net.get('bytes_on_wire', 0) / steps / n:.3f} | "
            f"{net.get('retransmissions', 0) + net.get('ps_retransmissions', 0)} | "
            f"{net.get('results_lost', 0)} | {_fallbacks(r)} | "
            f"{net.get('packets_lost_unrecovered', 0)} |")
    return "\n".join(rows)


def spreads(summary: dict[str, dict[str, Any]]) -> dict[str, tuple[float, float]]:
    return {k: (v["final_test_accuracy"], v.get("final_test_accuracy_sd", 0.0))
            for k, v in summary.items()}


def run_trends(summary: dict[str, dict[str, Any]]) -> list[str]:
    """What the final accuracies say, with ties (means within 2 sd) called ties."""
    res = spreads(summary)
    if not res:
        return []
    acc = {k: v[0] for k, v in res.items()}
    best = max(acc, key=acc.get)
    worst = min(acc, key=acc.get)
    multi = any(v.get("n_seeds", 1) > 1 for v in summary.values())
    lines = [f"Best final accuracy: **{best}** {acc[best]:.4f}; worst: **{worst}** "
             f"{acc[worst]:.4f}."]
    if multi:
        tied = [k for k in acc if k != best and not claims.differs(res[best], res[k])]
        if tied:
            lines.append(f"Tied with the best (within {claims.TIE_SDS:g} sd): "
                         f"{', '.join(tied)}.")
        pairs = claims.separated_pairs(res)
        total = len(res) * (len(res) - 1) // 2
        lines.append(f"{len(pairs)} of {total} pairs of paths differ by more than "
                     f"{claims.TIE_SDS:g} sd" + (": " + ", ".join(f"{a} vs {b}"
                                                             for a, b in pairs[:12])
                                                 + ("…" if len(pairs) > 12 else "")
                                                 if pairs else "; the rest are ties") + ".")
    else:
        close = [k for k in acc if k != best and acc[best] - acc[k] <= 0.01]
        if close:
            lines.append(f"Within 1 point of the best: {', '.join(close)} (one seed: "
                         "differences this small are not evidence; run seeds = [0, 1, 2]).")
    collapsed = [k for k in acc if acc[k] < 0.5 * acc[best]]
    if collapsed:
        lines.append(f"Collapsed (below half the best): {', '.join(collapsed)}.")
    return lines


_GEOMETRY = (("cos_honest", "cos honest–honest"), ("cos_byzantine", "cos Byz–Byz"),
             ("cos_cross", "cos Byz–honest"), ("cos_byzantine_to_mean", "cos Byz → honest mean"),
             ("cos_update_to_mean", "cos update → honest mean"),
             ("update_norm_ratio", "‖update‖ / ‖honest mean‖"),
             ("fa_byzantine_share", "FA weight on Byz rows"))


def geometry_table(records: dict[str, list[dict[str, Any]]], first_eval: int | None = None
                   ) -> tuple[str, int] | None:
    """The mechanism, measured: the cosine structure at the first evaluation step
    (before a failing path has drifted away), mean over seeds."""
    rows, step = [], first_eval
    for path, recs in records.items():
        evals = [r for r in recs if "cos_honest" in r]
        if not evals:
            continue
        step = min(r["step"] for r in evals) if step is None else step
        at = [r for r in evals if r["step"] == step]
        if not at:
            continue
        cells = []
        for key, _ in _GEOMETRY:
            values = [r[key] for r in at if r.get(key) is not None]
            cells.append(f"{statistics.fmean(values):.3f}" if values else "–")
        rows.append(f"| {path} | " + " | ".join(cells) + " |")
    if not rows:
        return None
    head = "| path | " + " | ".join(name for _, name in _GEOMETRY) + " |"
    return "\n".join([head, "|---" * (len(_GEOMETRY) + 1) + "|", *rows]), step


def _check_lines(scenario: Scenario, points: list[tuple[str, dict[str, Any], dict]]) -> list[str]:
    """Each expectation checked at the points where its ``where`` holds."""
    lines = []
    for e in scenario.report.expect:
        held, failed = [], []
        for name, values, summary in points:
            try:
                applies = not e.where or claims.evaluate(e.where, values=values)
            except KeyError:  # a field of a swept table this point does not set
                applies = False
            if not applies:
                continue
            acc = {k: v["final_test_accuracy"] for k, v in summary.items()}
            ok = claims.evaluate(e.check, accuracies=acc, spreads=spreads(summary))
            (held if ok else failed).append(name)
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
    figs = run_figures(list(run.records.items()), run.folder / "figures", title_of(s),
                       run.summary)
    md = [f"# {s.name}", "", describe(s) + ".", ""]
    if run.missing:
        md += [f"**Partial run**: {len(run.missing)} unit(s) have not finished: "
               f"{', '.join(run.missing)}. Resume it with `innet run … --resume`.", ""]
    if s.report.claim:
        md += ["## The seeds' claim", "", f"> {s.report.claim}", ""]
    checks = _check_lines(s, [("run", {}, run.summary)])
    if checks:
        md += ["## Checks", "", *checks, ""]
    md += ["## Results", "", results_table(run.summary, s.training.steps), "",
           "## What it shows", "", *[f"- {t}" for t in run_trends(run.summary)], ""]
    geo = geometry_table(run.records)
    if geo:
        md += [f"## Geometry of the rows (step {geo[1]})", "",
               "Cosines between the workers' gradients at the first evaluation step, mean "
               "over seeds: what a distance or subspace rule sees.", "", geo[0], ""]
    md += ["## Figures", ""]
    md += [f"![{caption}](figures/{file})\n\n{caption}\n" for caption, file in figs]
    md += ["", "Files: `metrics.jsonl` (one line per step, path and seed), `metrics.csv`, "
           "`summary.json` (mean, sd and per-seed values), `config.toml` (the resolved "
           "scenario)."]
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


def _tick(value: Any, sep: str = ", ", grid: list | None = None) -> str:
    """A sweep value as text; of a swept table only the fields that vary over ``grid``."""
    if isinstance(value, dict):
        others = [v for v in grid or [] if isinstance(v, dict)]
        items = [(k, v) for k, v in value.items()
                 if not others or any(o.get(k) != v for o in others)]

        def show(k, v):
            if isinstance(v, dict):  # a nested table: its fields, not its name
                return ", ".join(f"{a}={config.fmt(b)}" for a, b in v.items())
            return f"{k}={config.fmt(v)}"

        return sep.join(show(k, v) for k, v in items) or "base"
    return config.fmt(value)


def write_sweep_report(folder: str | Path, point_reports: bool = True) -> Path:
    folder = Path(folder)
    index = read_json(folder / "sweep.json", "sweep.json")
    scenario = config.load(folder / "config.toml")
    points, missing = [], []
    for pt in index["points"]:
        summary_file = folder / pt["name"] / "summary.json"
        if not summary_file.exists():
            missing.append(pt["name"])
            continue
        summary = read_json(summary_file, "summary.json")
        if not summary:
            missing.append(pt["name"])
            continue
        points.append((pt["name"], pt["values"], summary))
        if point_reports:
            write_run_report(folder / pt["name"])
    if not points:
        raise FileNotFoundError(f"{folder}: no finished sweep point")
    keys = index["keys"]
    x = scenario.report.x or keys[0]
    others = [k for k in keys if k != x]
    paths = list(dict.fromkeys(p for _, _, s in points for p in s))
    figdir = folder / "figures"
    multi = any(v.get("n_seeds", 1) > 1 for _, _, s in points for v in s.values())

    groups: dict[tuple, list] = defaultdict(list)
    for _name, values, summary in points:
        groups[tuple(json.dumps(values[k], sort_keys=True) for k in others)].append(
            (values[x], summary))
    xs_all = [values[x] for _, values, _ in points]
    numeric = all(_is_number(v) for v in xs_all)
    ticks = []
    for v in xs_all:
        if v not in ticks:
            ticks.append(v)
    fig, ax = plt.subplots(figsize=(8, 4.2))
    width = 0.8 / max(len(paths), 1)
    for gi, (other, series) in enumerate(groups.items()):
        suffix = ", ".join(f"{k}={_tick(json.loads(v), grid=scenario.sweep.get(k))}"
                           for k, v in zip(others, other))
        for pi, path in enumerate(paths):
            st = style(pi + 10 * gi)
            pts = [(xv, s[path]["final_test_accuracy"], s[path].get("final_test_accuracy_sd", 0))
                   for xv, s in series if path in s]
            if not pts:
                continue
            label = path + (f" ({suffix})" if suffix else "")
            if numeric:  # a line through the values, with error bars
                ax.errorbar([p[0] for p in pts], [p[1] for p in pts],
                            yerr=[p[2] for p in pts] if multi else None, capsize=3, ms=4,
                            label=label, **st)
            else:  # categories (strings, booleans, tables): grouped points, no lines
                pos = [ticks.index(p[0]) - 0.4 + width * (pi + 0.5) for p in pts]
                ax.errorbar(pos, [p[1] for p in pts], yerr=[p[2] for p in pts] if multi else None,
                            fmt=st["marker"], color=st["color"], capsize=3, ms=5, label=label)
    if not numeric:
        ax.set_xticks(range(len(ticks)), [_tick(t, "\n", ticks) for t in ticks], fontsize=7)
    elif _wide(ticks):
        ax.set_xscale("symlog", linthresh=min(v for v in ticks if v > 0))
        ax.set_xticks(ticks, [config.fmt(t) for t in ticks])
    elif all(isinstance(v, int) for v in xs_all):
        ax.set_xticks(ticks)
    ax.set(xlabel=x, ylabel="final test accuracy", ylim=(0, 1),
           title=f"{scenario.name}: final accuracy vs {x}"
           + (" (mean ± sd)" if multi else ""))
    _legend_outside(ax)
    figs = [(f"Final test accuracy of every path against {x}"
             + (", mean ± sd over seeds" if multi else "") + ".",
             _save(fig, figdir / "final_accuracy.png"))]

    counters = [("bytes_on_wire", "MB on the wire per step", 1e-6 / scenario.training.steps),
                ("retransmissions", "retransmissions (run total)", 1.0),
                ("fallbacks", "fallbacks (chunks + offload steps)", 1.0),
                ("packets_lost_unrecovered", "packets lost, not recovered", 1.0)]

    def counter(r, key):
        n = r.get("n_seeds", 1)
        value = _fallbacks(r) if key == "fallbacks" else (r.get("network") or {}).get(key, 0)
        return value / n

    counters = [c for c in counters
                if any(counter(s[p], c[0]) for _, _, s in points for p in s)]
    if counters:
        fig, axes = plt.subplots(1, len(counters), figsize=(3.6 * len(counters) + 2, 3.6),
                                 squeeze=False)
        for ax, (key, name, scale) in zip(axes[0], counters):
            for gi, series in enumerate(groups.values()):
                for pi, path in enumerate(paths):
                    st = style(pi + 10 * gi)
                    pts = [(xv if numeric else ticks.index(xv), scale * counter(s[path], key))
                           for xv, s in series if path in s]
                    if pts:
                        ax.plot(*zip(*pts), ms=3, label=path if gi == 0 else None,
                                **({**st, "ls": st["ls"] if numeric else "none"}))
            if not numeric:
                ax.set_xticks(range(len(ticks)), [_tick(t, "\n", ticks) for t in ticks],
                              fontsize=6)
            elif all(isinstance(v, int) for v in xs_all):
                ax.set_xticks(ticks)
            ax.set(xlabel=x, title=name)
        _legend_outside(axes[0][-1])
        figs.append((f"Network counters against {x} (per seed).",
                     _save(fig, figdir / "network.png")))

    head = "| point | " + " | ".join(paths) + " |"
    table = [head, "|---" * (len(paths) + 1) + "|"]
    for name, _, summary in points:
        table.append(f"| [{name}]({name}/report.md) | " + " | ".join(
            _pm(summary[p], "final_test_accuracy", 3) if p in summary else "–"
            for p in paths) + " |")
    trends = []
    for path in paths:
        by_x = [(values[x], s[path]["final_test_accuracy"]) for _, values, s in points
                if path in s and all(values[k] == points[0][1][k] for k in others)]
        if len(by_x) > 1:
            trends.append(f"**{path}**: " + " → ".join(
                f"{a:.3f} ({x}: {_tick(v, grid=ticks)})" for v, a in by_x))
    if multi:
        for name, _, summary in points:
            pairs = claims.separated_pairs(spreads(summary))
            total = len(summary) * (len(summary) - 1) // 2
            trends.append(f"at {name}: {len(pairs)} of {total} pairs differ by more than "
                          f"{claims.TIE_SDS:g} sd" + (" (all ties)" if not pairs else ""))
    md = [f"# {scenario.name} (sweep over {', '.join(keys)})", "",
          describe(scenario) + " (base scenario; each point overrides the swept keys).", ""]
    if missing:
        md += [f"**Partial sweep**: {len(missing)} of {len(index['points'])} points have not "
               f"finished: {', '.join(missing)}.", ""]
    if scenario.report.claim:
        md += ["## The seeds' claim", "", f"> {scenario.report.claim}", ""]
    checks = _check_lines(scenario, points)
    if checks:
        md += ["## Checks", "", *checks, ""]
    md += ["## Final test accuracy", "", *table, "", "## What it shows", "",
           *[f"- {t}" for t in trends], ""]
    fa_lines = _fa_lines(scenario, points)
    if fa_lines:
        md += ["## FA against the claim", "", *fa_lines, ""]
    geo_rows = []
    for name, _, _ in points:
        run_records = defaultdict(list)
        for record in _read_metrics(folder / name / "metrics.jsonl"):
            run_records[record["path"]].append(record)
        geo = geometry_table(dict(run_records), first_eval=1)
        if geo:
            geo_rows.append((name, geo[0]))
    if geo_rows:
        md += ["## Geometry of the rows at step 1", "",
               "At step 1 every path sees the same rows (same model, same minibatches, same "
               "attack draws): the cosines are the attack's structure; the FA column is the "
               "share of FA's update its coefficients give the Byzantine rows (f/p = "
               f"{scenario.workers.f}/{scenario.workers.p} would be no defence at all). Each "
               "point's own report has the same table at its first evaluation step.", ""]
        for name, table in geo_rows:
            rows = table.splitlines()
            keep = [rows[0], rows[1]] + [r for r in rows[2:] if r.startswith("| fa |")
                                        or r.startswith("| offload:fa |")] or rows[2:3]
            md += [f"**{name}**", "", *(keep if len(keep) > 2 else rows[:3]), ""]
    md += ["## Figures", ""] + [f"![{c}](figures/{f})\n\n{c}\n" for c, f in figs]
    md += ["", "Each point's folder has its own report.md, metrics.jsonl and summary.json."]
    path = folder / "report.md"
    path.write_text("\n".join(md) + "\n", encoding="utf-8")
    return path


def _fa_lines(scenario: Scenario, points) -> list[str]:
    """FA's result at every point next to the best rule's, tie or not."""
    fa_paths = [p.name for p in scenario.paths if p.rule == "fa"]
    lines = []
    for name, _, summary in points:
        res = spreads(summary)
        if not res:
            continue
        best = max(res, key=lambda k: res[k][0])
        for path in fa_paths:
            if path not in res or path == best:
                if path == best:
                    lines.append(f"- {name}: **{path}** is the best path "
                                 f"({res[path][0]:.3f} ± {res[path][1]:.3f}).")
                continue
            verdict = ("below it" if claims.differs(res[best], res[path])
                       else f"a tie (within {claims.TIE_SDS:g} sd)")
            lines.append(f"- {name}: **{path}** {res[path][0]:.3f} ± {res[path][1]:.3f} against "
                         f"the best, {best}, {res[best][0]:.3f} ± {res[best][1]:.3f}: {verdict}.")
    return lines


def write_tensorboard(folder: str | Path) -> Path:
    """TensorBoard event files of a run folder's metrics, one run per path and seed,
    under ``folder/tensorboard/`` (``tensorboard --logdir folder/tensorboard``)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise RunFolderError("--tensorboard needs the tensorboard package: pip install "
                             "tensorboard (or pip install 'innet[tensorboard]')") from None
    run = load_run(folder)
    out = run.folder / "tensorboard"
    skip = {"path", "seed", "step"}
    for path, records in run.records.items():
        for seed in sorted({r.get("seed", 0) for r in records}):
            name = f"{path}-s{seed}".replace("/", "_").replace(":", "_")
            writer = SummaryWriter(str(out / name))
            for r in records:
                if r.get("seed", 0) != seed:
                    continue
                for key, value in r.items():
                    if key not in skip and isinstance(value, int | float) and not isinstance(
                            value, bool):
                        writer.add_scalar(key, value, r["step"])
            writer.close()
    return out


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
    figs = run_figures(labelled, out / "figures", "comparison", summary)
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
