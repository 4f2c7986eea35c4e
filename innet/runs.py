"""Run folders: what a run may write where, atomically, resumably, one writer at a time.

A run folder holds

* ``config.toml`` — the resolved scenario;
* ``run.json`` — the settings hash and the list of *units* (one per path and seed),
  with the ones finished;
* ``units/<unit>.jsonl`` — each unit's metrics, streamed (one line per step, flushed),
  ``units/<unit>.result.json`` once it has finished and ``units/<unit>.ckpt`` its
  latest checkpoint (``training.checkpoint_every``);
* ``metrics.jsonl`` — every finished unit's lines, rebuilt atomically (temporary file,
  then rename) whenever a unit finishes, so it never holds half a unit;
* ``summary.json`` — per path, the mean and spread over its finished seeds.

Every file is written through a temporary file and :func:`os.replace`, so a killed run
leaves either the old or the new version, never a torn one. A run refuses a folder that
already holds something unless it resumes (same settings) or is forced (the run's own
files are removed first, nothing else). ``.lock`` (an ``flock``) keeps two runs, or two
sweeps, from writing one folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from innet.config import Scenario, ScenarioError, to_dict


class RunFolderError(ScenarioError):
    """A run or sweep cannot use the folder it was given (the message says why)."""


#: what a run writes into its folder (``--force`` removes these and nothing else)
RUN_FILES = ("config.toml", "run.json", "metrics.jsonl", "metrics.csv", "summary.json",
             "report.md", "figures", "units", "tensorboard")
#: what a sweep writes beside its point folders
SWEEP_FILES = ("config.toml", "sweep.json", "sweep_summary.json", "summary.json", "report.md",
               "figures")
#: keys that do not change what a run computes
_NOT_SETTINGS = ("name", "out", "report")


def settings_hash(scenario: Scenario) -> str:
    """A short hash of everything that decides a run's results (not its name, output
    folder or report text): equal hashes, equal runs."""
    data = {k: v for k, v in to_dict(scenario).items() if k not in _NOT_SETTINGS}
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def atomic_write(path: Path, data: bytes | str) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with tmp.open("wb") as fh:
            fh.write(data.encode() if isinstance(data, str) else data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_json(path: Path, value: Any) -> None:
    atomic_write(path, json.dumps(value, indent=2) + "\n")


def read_json(path: Path, what: str) -> Any:
    """Parsed JSON, or a :class:`RunFolderError` saying the file is damaged."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise RunFolderError(f"{path}: {what} is damaged (not valid JSON: {err.msg} at "
                             f"line {err.lineno}); rerun with --force to start over") from None
    except UnicodeDecodeError:
        raise RunFolderError(f"{path}: {what} is damaged (not text)") from None


def usable_folder(folder: Path) -> Path:
    """Create ``folder`` (and its parents) or explain in one line why it cannot be."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise RunFolderError(f"--out {folder}: is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".probe{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise RunFolderError(f"--out {folder}: cannot write there ({err.strerror})") from None
    return folder


@contextlib.contextmanager
def locked(folder: Path, what: str = "run"):
    """Hold ``folder/.lock`` for the duration, or fail at once if another process does."""
    path = Path(folder) / ".lock"
    fh = path.open("a+")
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            raise RunFolderError(f"{folder}: another {what} is writing here (pid {holder}); "
                                 "wait for it or choose another --out") from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        yield
    finally:
        fh.close()


def _occupied(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in (".lock",)
                  and not p.name.startswith(".probe"))


def clear(folder: Path, names=RUN_FILES) -> None:
    for name in names:
        target = folder / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()


def claim_folder(folder: Path, scenario: Scenario, resume: bool, force: bool,
                 names=RUN_FILES) -> bool:
    """Check that a run may write into ``folder`` (already created and locked);
    returns whether it resumes. An empty folder is always fine; otherwise ``resume``
    needs the same settings and ``force`` clears the run's own files."""
    if resume and force:
        raise RunFolderError("--resume and --force: choose one")
    present = _occupied(folder)
    if not present:  # nothing yet (with --resume: killed before its first write)
        return False
    if force:
        clear(folder, names)
        return False
    if not resume:
        raise RunFolderError(
            f"{folder} already holds {', '.join(present[:4])}{'…' if len(present) > 4 else ''}; "
            "pass --resume to continue that run, --force to replace it, or choose "
            "another --out")
    state_file = folder / ("run.json" if names is RUN_FILES else "sweep.json")
    if not state_file.exists():
        raise RunFolderError(f"--resume: {folder} has no {state_file.name}; it is not a run "
                             "this version of innet can resume (use --force)")
    state = read_json(state_file, state_file.name)
    if state.get("settings_hash") != settings_hash(scenario):
        raise RunFolderError(
            f"--resume: {folder} holds a run of other settings ({state_file.name} hash "
            f"{state.get('settings_hash')}, these settings {settings_hash(scenario)}); "
            "resume with the same scenario and flags, or use --force")
    return True
