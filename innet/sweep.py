"""Sweeps: a scenario's ``[sweep]`` grid, run point by point, resumable, in parallel.

Each point is an ordinary run in its own folder (``<out>/<point>/``: metrics.jsonl,
summary.json, config.toml). ``<out>/sweep.json`` lists the points and their values;
``<out>/sweep_summary.json`` gathers every point's summary. A point whose summary
already holds every path is skipped, so an interrupted sweep resumes where it
stopped (``force=True`` reruns everything).

Parallel points run in separate processes (spawned, so no process inherits a
half-initialised OpenMP or CUDA runtime); each gets an even share of the cores for
torch and Numba.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import tomli_w
from tqdm.auto import tqdm

from innet import config
from innet.config import Scenario


def finished(folder: Path, scenario: Scenario) -> bool:
    """Does ``folder`` hold a complete run of ``scenario`` (every path summarised)?"""
    try:
        summary = json.loads((folder / "summary.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return False
    return all(path.name in summary for path in scenario.paths)


def _init_worker(threads: int) -> None:
    import numba
    import torch

    torch.set_num_threads(threads)
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))


def _run_point(data: dict[str, Any], folder: str) -> tuple[str, dict[str, Any]]:
    from innet import experiment

    scenario = config.from_dict(data)
    return folder, experiment.run(scenario, folder, progress=False)


def run_sweep(scenario: Scenario, out: str | Path, jobs: int = 1, progress: bool = True,
              force: bool = False) -> dict[str, dict[str, Any]]:
    """Run every point of the scenario's grid into ``out``; return {point: summary}."""
    from innet import experiment

    if jobs < 1:
        raise config.ScenarioError(f"--jobs: must be >= 1, got {jobs}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    points = config.sweep_points(scenario)
    with (out / "config.toml").open("wb") as fh:
        tomli_w.dump(config.to_dict(scenario), fh)
    index = {"name": scenario.name, "keys": list(scenario.sweep),
             "points": [{"name": name, "values": values} for name, values, _ in points]}
    (out / "sweep.json").write_text(json.dumps(index, indent=2))

    todo = [(name, s) for name, _, s in points if force or not finished(out / name, s)]
    skipped = len(points) - len(todo)
    if skipped:
        print(f"sweep: {skipped} of {len(points)} points already finished, skipped")
    if jobs == 1 or len(todo) <= 1:
        bar = tqdm(todo, desc="sweep", unit="point", disable=not progress or len(todo) < 2)
        for name, s in bar:
            bar.set_postfix_str(name)
            experiment.run(s, out / name, progress=progress and len(todo) == 1)
    else:
        jobs = min(jobs, len(todo))
        threads = max(1, (os.cpu_count() or 1) // jobs)
        with ProcessPoolExecutor(jobs, mp_context=get_context("spawn"),
                                 initializer=_init_worker, initargs=(threads,)) as pool:
            futures = [pool.submit(_run_point, config.to_dict(s), str(out / name))
                       for name, s in todo]
            for future in tqdm(as_completed(futures), total=len(futures), desc="sweep",
                               unit="point", disable=not progress):
                future.result()  # re-raise a point's error here
    summaries = {name: json.loads((out / name / "summary.json").read_text())
                 for name, _, _ in points}
    (out / "sweep_summary.json").write_text(json.dumps(summaries, indent=2))
    return summaries
