"""Run folders: refusal, force, resume (bit for bit), seeds, sweeps by settings hash,
locks, and parallel children that die with their parent."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from innet import config, experiment, runs
from innet.cli import main
from innet.sweep import run_sweep

TINY = ["--steps", "4", "-p", "7", "-f", "1", "--no-progress", "--no-report"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}


def _finals(summary):
    keys = ("final_test_accuracy", "final_test_loss", "final_train_loss",
            "modelled_seconds_per_step")
    return {path: {k: entry[k] for k in keys} for path, entry in summary.items()}


def _metrics(folder):
    return [{k: v for k, v in json.loads(line).items() if k != "elapsed_s"}
            for line in (Path(folder) / "metrics.jsonl").read_text().splitlines()]


def test_run_refuses_an_occupied_folder_and_force_replaces_only_its_files(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", *TINY, "--agg", "mean", "--out", str(out)]) == 0
    (out / "notes.txt").write_text("mine")
    before = (out / "summary.json").read_text()
    assert main(["run", *TINY, "--agg", "median", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "already holds" in err and "--resume" in err and "--force" in err
    assert (out / "summary.json").read_text() == before  # nothing touched
    assert main(["run", *TINY, "--agg", "median", "--out", str(out), "--force"]) == 0
    assert set(json.loads((out / "summary.json").read_text())) == {"median"}
    assert (out / "notes.txt").read_text() == "mine"  # not the run's: left alone
    # resume with other settings is refused, naming both hashes
    assert main(["run", *TINY, "--agg", "mean", "--out", str(out), "--resume"]) == 2
    assert "other settings" in capsys.readouterr().err
    # resuming a finished run of the same settings does nothing and succeeds
    assert main(["run", *TINY, "--agg", "median", "--out", str(out), "--resume"]) == 0
    # a run killed before it wrote anything resumes from scratch
    assert main(["run", *TINY, "--agg", "mean", "--out", str(tmp_path / "new"),
                 "--resume"]) == 0
    assert json.loads((tmp_path / "new" / "summary.json").read_text())["mean"]["n_seeds"] == 1


def test_flag_only_runs_get_their_own_folder():
    import argparse

    from innet.cli import _add_run, _scenario_from_args

    parser = argparse.ArgumentParser()
    _add_run(parser.add_subparsers(dest="command"))

    def folder(*argv):
        args = parser.parse_args(["run", *argv])
        return experiment.output_dir(_scenario_from_args(args), args.out)

    assert folder("scenarios/default.toml") == Path("runs/default")
    changed = folder("scenarios/default.toml", "--steps", "40")
    assert changed.name.startswith("default-") and changed != folder(
        "scenarios/default.toml", "--steps", "41")
    assert folder("scenarios/default.toml", "--steps", "40") == changed  # stable
    assert folder("scenarios/default.toml", "--steps", "40", "--out", "x") == Path("x")


def _kill_at(monkeypatch, unit_key_part, step):
    """Make the unit whose key contains ``unit_key_part`` die after ``step`` steps, as
    a SIGKILL would leave it (its metrics written, no result)."""
    real = experiment._Trainer.step

    def dying(self):
        if self.done == step and unit_key_part in self.path.name:
            raise KeyboardInterrupt("killed")
        return real(self)

    monkeypatch.setattr(experiment._Trainer, "step", dying)


@pytest.mark.parametrize("kind", ["network", "offload", "no_recovery_crash"])
def test_resume_continues_to_the_same_metrics(tmp_path, monkeypatch, kind):
    """Interrupted between checkpoints, resumed: every metric of every step (wall time
    aside) equals an uninterrupted run's, for paths with state beyond the model:
    emulated links and switch registers, the PS transport, centered clipping's
    memory, the offload's secret, a crash that happened before the checkpoint."""
    net = {"up_loss": 0.05, "down_loss": 0.02}
    paths = [{"rule": "mean", "via": "switch"}, {"rule": "centered_clipping"},
             {"rule": "median"}]
    victim = "centered_clipping"
    if kind == "offload":
        paths, victim = [{"rule": "fa", "via": "offload"}, {"rule": "fa"}], "offload"
    if kind == "no_recovery_crash":
        net = {"up_loss": 0.05, "recovery": False, "crash": [2, 3]}
        paths, victim = [{"rule": "mean"}, {"rule": "mean", "via": "switch"}], "switch"
    s = config.from_dict({"workers": {"p": 7, "f": 1}, "seeds": [0, 1],
                          "training": {"steps": 12, "eval_every": 4, "checkpoint_every": 4},
                          "network": net, "paths": paths})
    whole = experiment.run(s, str(tmp_path / "whole"), progress=False)
    with monkeypatch.context() as m:
        _kill_at(m, victim, 6)
        with pytest.raises(KeyboardInterrupt):
            experiment.run(s, str(tmp_path / "cut"), progress=False)
    assert list((tmp_path / "cut" / "units").glob("*.ckpt"))
    resumed = experiment.run(s, str(tmp_path / "cut"), progress=False, resume=True)
    assert _finals(resumed) == _finals(whole)
    assert _metrics(tmp_path / "cut") == _metrics(tmp_path / "whole")
    assert not list((tmp_path / "cut" / "units").glob("*.ckpt"))  # done: removed


@pytest.mark.slow
def test_cli_resume_after_sigkill_matches_an_uninterrupted_run(tmp_path):
    """The issue's command: SIGKILL partway, --resume, same final metrics."""
    args = [sys.executable, "-m", "innet", "run", "scenarios/default.toml", "--steps", "120",
            "--set", "training.checkpoint_every=10", "--no-progress", "--no-report"]
    subprocess.run([*args, "--out", str(tmp_path / "whole")], check=True, env=ENV,
                   capture_output=True, timeout=600)
    cut = tmp_path / "cut"
    proc = subprocess.Popen([*args, "--out", str(cut)], env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not list((cut / "units").glob("02-*.ckpt")) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not (cut / "units" / "04-fa-s0.result.json").exists()  # it did stop partway
    done = subprocess.run([*args, "--out", str(cut), "--resume"], env=ENV,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    whole = json.loads((tmp_path / "whole" / "summary.json").read_text())
    again = json.loads((cut / "summary.json").read_text())
    assert _finals(again) == _finals(whole)


def test_seeds_give_mean_and_sd_and_run_in_parallel(tmp_path):
    out1, out2 = tmp_path / "seq", tmp_path / "par"
    base = ["run", *TINY, "--agg", "mean", "--agg", "median", "--seeds", "0,1,2"]
    assert main([*base, "--out", str(out1)]) == 0
    assert main([*base, "--out", str(out2), "-j", "2"]) == 0
    summary = json.loads((out1 / "summary.json").read_text())
    for entry in summary.values():
        per = entry["final_test_accuracy_per_seed"]
        assert entry["n_seeds"] == 3 and entry["seeds"] == [0, 1, 2] and len(per) == 3
        assert entry["final_test_accuracy"] == pytest.approx(sum(per) / 3)
        mean = sum(per) / 3
        sd = (sum((x - mean) ** 2 for x in per) / 2) ** 0.5
        assert entry["final_test_accuracy_sd"] == pytest.approx(sd)
    assert _finals(json.loads((out2 / "summary.json").read_text())) == _finals(summary)
    # the geometry diagnostics are float64 BLAS products: another thread count (the
    # parallel children get one core each) may change their last bits, nothing else
    def exact(rows):
        return sorted(json.dumps({k: v for k, v in r.items() if not k.startswith(
            ("cos_", "update_norm", "fa_byz"))}) for r in rows)

    assert exact(_metrics(out1)) == exact(_metrics(out2))
    seeds = {(r["path"], r["seed"]) for r in _metrics(out1)}
    assert len(seeds) == 6


def test_sweep_points_rerun_when_their_settings_change(tmp_path, capsys):
    """The issue's check: the sweep again with training.steps changed reruns every
    point to the new step count; unchanged settings are skipped."""
    out = tmp_path / "sweep"
    base = ["sweep", "scenarios/repro_mean_vs_f.toml", "--no-progress", "--no-report",
            "--out", str(out)]
    assert main([*base, "--set", "training.steps=3"]) == 0
    assert main([*base, "--set", "training.steps=5"]) == 0
    assert "4 points hold runs of other settings" in capsys.readouterr().out
    for point in json.loads((out / "sweep.json").read_text())["points"]:
        last = _metrics(out / point["name"])
        assert {r["step"] for r in last} == set(range(1, 6))
        assert json.loads((out / point["name"] / "run.json").read_text())[
            "settings_hash"] == point["settings_hash"]
    assert main([*base, "--set", "training.steps=5"]) == 0
    assert "4 of 4 points already finished" in capsys.readouterr().out


def test_a_second_sweep_into_a_locked_folder_is_refused(tmp_path):
    s = config.from_dict({"training": {"steps": 2}, "paths": [{"rule": "mean"}],
                          "sweep": {"workers.f": [0, 1]}})
    out = tmp_path / "sweep"
    out.mkdir()
    with runs.locked(out, "sweep"):  # as another process would hold it
        code = subprocess.run(
            [sys.executable, "-c", "import sys; from innet.cli import main; "
             f"sys.exit(main(['sweep', '--grid', 'workers.f=0,1', '--steps', '2', "
             f"'--agg', 'mean', '--out', {str(out)!r}, '--no-report']))"],
            env=ENV, capture_output=True, text=True, timeout=120)
        assert code.returncode == 2 and "another sweep is writing" in code.stderr
        with pytest.raises(runs.RunFolderError, match="another sweep"):
            run_sweep(s, out, progress=False)
    assert not (out / "workers.f=0").exists()


def _descendants(pid):
    kids, frontier = set(), {pid}
    while frontier:
        nxt = set()
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid in frontier:
                nxt.add(int(proc.name))
        kids |= nxt
        frontier = nxt
    return kids


def _alive(pid):
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_parallel_children_die_with_their_parent(tmp_path):
    out = tmp_path / "sweep"
    proc = subprocess.Popen(
        [sys.executable, "-m", "innet", "sweep", "--grid", "workers.f=0,1", "--steps", "400",
         "--agg", "fa", "-j", "2", "--out", str(out), "--no-progress", "--no-report"],
        env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(list(out.glob("*/units/*.jsonl"))) < 2:
            time.sleep(0.1)
        children = _descendants(proc.pid)
        assert len(children) >= 2
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(_alive(c) for c in children):
            time.sleep(0.1)
        assert not [c for c in children if _alive(c)]
    finally:
        for c in _descendants(proc.pid):
            os.kill(c, signal.SIGKILL)
        proc.kill()


def test_report_on_a_partial_run_names_what_is_missing(tmp_path, monkeypatch):
    from innet import report

    s = config.from_dict({"workers": {"p": 7, "f": 1}, "seeds": [0, 1],
                          "training": {"steps": 6, "eval_every": 3},
                          "paths": [{"rule": "mean"}, {"rule": "median"}]})
    with monkeypatch.context() as m:
        _kill_at(m, "median", 2)
        with pytest.raises(KeyboardInterrupt):
            experiment.run(s, str(tmp_path / "cut"), progress=False)
    md = report.write_run_report(tmp_path / "cut").read_text()
    assert "Partial run" in md and "median (seed 0)" in md and "median (seed 1)" in md
    assert "| mean |" in md and "--resume" in md
