"""Sweeps: a scenario's ``[sweep]`` grid, run point by point, resumable, in parallel.

Each point is an ordinary run in its own folder (``<out>/<point>/``, see
:mod:`innet.runs`). ``<out>/sweep.json`` lists the points and their values;
``<out>/sweep_summary.json`` gathers every point's summary, and ``<out>/summary.json``
the same flat, keyed ``<point>/<path>``.

A point is identified by the hash of its resolved settings, not by its folder name:
a point whose folder holds a finished run of the same settings is skipped, one that
holds an unfinished run of the same settings resumes (from its checkpoints), and one
that holds a run of other settings (``training.steps`` changed, say) runs again from
scratch. ``force=True`` reruns everything. ``<out>/.lock`` keeps a second sweep out
of the folder while one runs; parallel points (``jobs``) run in processes that die
with their parent (:mod:`innet.parallel`).
"""

from __future__ import annotations

import json
from concurrent.futures import as_completed
from pathlib import Path
from typing import Any

import tomli_w
from tqdm.auto import tqdm

from innet import config, runs
from innet.config import Scenario


def point_status(folder: Path, scenario: Scenario) -> str:
    """``"finished"`` (same settings, every unit done), ``"partial"`` (same settings,
    some units left), ``"stale"`` (a run of other settings, or a damaged one) or
    ``"empty"``."""
    from innet.experiment import units_of

    state_file = folder / "run.json"
    if not folder.is_dir() or not any(folder.iterdir()):
        return "empty"
    try:
        state = json.loads(state_file.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return "stale"
    if state.get("settings_hash") != runs.settings_hash(scenario):
        return "stale"
    done = all((folder / "units" / f"{u.key(scenario)}.result.json").exists()
               for u in units_of(scenario))
    return "finished" if done and (folder / "summary.json").exists() else "partial"


def _run_point(data: dict[str, Any], folder: str, resume: bool, force: bool) -> str:
    from innet import experiment

    experiment.run(config.from_dict(data), folder, progress=False, resume=resume, force=force)
    return folder


def run_sweep(scenario: Scenario, out: str | Path, jobs: int = 1, progress: bool = True,
              force: bool = False) -> dict[str, dict[str, Any]]:
    """Run every point of the scenario's grid into ``out``; return {point: summary}."""
    from innet import experiment

    if jobs < 1:
        raise config.ScenarioError(f"--jobs: must be >= 1, got {jobs}")
    out = runs.usable_folder(Path(out))
    points = config.sweep_points(scenario)
    with runs.locked(out, "sweep"):
        runs.atomic_write(out / "config.toml", tomli_w.dumps(config.to_dict(scenario)))
        index = {"name": scenario.name, "keys": list(scenario.sweep),
                 "settings_hash": runs.settings_hash(scenario),
                 "points": [{"name": name, "values": values,
                             "settings_hash": runs.settings_hash(s)}
                            for name, values, s in points]}
        runs.write_json(out / "sweep.json", index)

        todo = []
        counts = {"finished": 0, "partial": 0, "stale": 0, "empty": 0}
        for name, _, s in points:
            status = "stale" if force else point_status(out / name, s)
            counts[status] += 1
            if status != "finished":
                todo.append((name, s, status == "partial", status == "stale"))
        if counts["finished"]:
            print(f"sweep: {counts['finished']} of {len(points)} points already finished "
                  "with these settings, skipped")
        if counts["stale"] and not force:
            print(f"sweep: {counts['stale']} points hold runs of other settings, rerun")
        if counts["partial"]:
            print(f"sweep: {counts['partial']} points resume where they stopped")
        if jobs == 1 or len(todo) <= 1:
            bar = tqdm(todo, desc="sweep", unit="point", disable=not progress or len(todo) < 2)
            for name, s, resume, stale in bar:
                bar.set_postfix_str(name)
                experiment.run(s, out / name, progress=progress and len(todo) == 1,
                               resume=resume, force=stale)
        else:
            from innet.parallel import process_pool

            with process_pool(min(jobs, len(todo))) as pool:
                futures = [pool.submit(_run_point, config.to_dict(s), str(out / name), resume,
                                       stale) for name, s, resume, stale in todo]
                for future in tqdm(as_completed(futures), total=len(futures), desc="sweep",
                                   unit="point", disable=not progress):
                    future.result()  # re-raise a point's error here
        summaries = {name: runs.read_json(out / name / "summary.json", "summary.json")
                     for name, _, _ in points}
        runs.write_json(out / "sweep_summary.json", summaries)
        # the same, one level: "<point>/<path>" → that path's summary at that point
        runs.write_json(out / "summary.json", {f"{point}/{path}": entry
                                                for point, summary in summaries.items()
                                                for path, entry in summary.items()})
    return summaries
