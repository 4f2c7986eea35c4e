"""Every bad input a new user met (issue 13): a one-line error naming the field or the
problem, exit code 2, nothing half-written."""

import errno
import json
import os

import pytest
import torch

from innet import runs
from innet.cli import main

TINY = ["--steps", "3", "-p", "5", "-f", "1", "--agg", "mean", "--no-progress", "--no-report"]


def _one_line_error(capsys, *needles):
    err = capsys.readouterr().err.strip()
    assert err and "\n" not in err and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


def test_dataset_without_its_folder_or_torchvision(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", *TINY, "--dataset", "mnist", "--out", str(out)]) == 2
    _one_line_error(capsys, "data.root", "mnist1d")
    assert main(["run", *TINY, "--dataset", "mnist", "--root", str(tmp_path / "none"),
                 "--out", str(out)]) == 2
    try:
        import torchvision  # noqa: F401
    except (ImportError, RuntimeError):
        _one_line_error(capsys, "data.dataset", "torchvision", "download.pytorch.org/whl/cpu")
    else:
        _one_line_error(capsys, "data.dataset", "not found")
    assert not out.exists()  # nothing written before the data was there


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda(tmp_path, capsys):
    assert main(["run", *TINY, "--device", "cuda", "--out", str(tmp_path / "r")]) == 2
    _one_line_error(capsys, "device", "no CUDA", "auto or cpu")
    assert not (tmp_path / "r").exists()
    assert main(["run", *TINY, "--device", "gpu", "--out", str(tmp_path / "r")]) == 2
    _one_line_error(capsys, "device", "cuda:N")


def test_out_naming_a_file_or_an_unwritable_place(tmp_path, capsys):
    file = tmp_path / "file"
    file.write_text("keep")
    assert main(["run", *TINY, "--out", str(file)]) == 2
    _one_line_error(capsys, "--out", "is a file")
    assert file.read_text() == "keep"
    assert main(["run", *TINY, "--out", "/proc/innet-cannot-be-here/run"]) == 2
    _one_line_error(capsys, "--out", "cannot write there")
    assert main(["sweep", *TINY, "--grid", "workers.f=0,1", "--out", str(file)]) == 2
    _one_line_error(capsys, "is a file")


def test_a_full_disk_leaves_no_torn_file(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    real = os.fsync
    calls = {"n": 0}

    def full(fd):  # the disk fills up when the first unit's results are written
        calls["n"] += 1
        if calls["n"] > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)

    monkeypatch.setattr(os, "fsync", full)
    assert main(["run", *TINY, "--out", str(out)]) == 2
    _one_line_error(capsys, "No space left on device")
    leftovers = [p.name for p in out.rglob("*") if ".tmp" in p.name]
    assert not leftovers
    for file in out.rglob("*.json"):
        json.loads(file.read_text())  # whatever is there is whole
    monkeypatch.setattr(os, "fsync", real)
    assert main(["run", *TINY, "--out", str(out), "--resume"]) == 0  # and it resumes


@pytest.mark.parametrize("argv, needles", [
    (["inspect", "streaming_sum", "-k", "0"], ["-k", ">= 1"]),
    (["inspect", "streaming_sum", "--pool", "0"], ["--pool", ">= 1"]),
    (["inspect", "sketch_store", "--k-prime", "100"], ["--k-prime", "multiple"]),
    (["inspect", "phase2_guard", "-p", "0"], ["-p", ">= 1"]),
])
def test_inspect_rejects_impossible_sizes(capsys, argv, needles):
    assert main(argv) == 2
    _one_line_error(capsys, *needles)


def test_report_on_a_garbled_summary_or_empty_metrics(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", *TINY, "--out", str(out)]) == 0
    summary = (out / "summary.json").read_text()
    (out / "summary.json").write_text(summary[: len(summary) // 2])
    assert main(["report", str(out)]) == 2
    _one_line_error(capsys, "summary.json", "damaged")
    assert not (out / "report.md").exists()
    (out / "summary.json").write_text(summary)
    (out / "metrics.jsonl").write_text("")
    assert main(["report", str(out)]) == 2
    _one_line_error(capsys, "metrics.jsonl", "no finished step")
    assert not (out / "report.md").exists()


@pytest.mark.parametrize("setting, needles", [
    ("training.lr=nan", ["training.lr", "finite"]),
    ("training.lr=inf", ["training.lr", "finite"]),
    ("network.up_loss=nan", ["network.up_loss", "finite"]),
    ("training.checkpoint_every=-1", ["training.checkpoint_every", ">= 0"]),
    ("seeds=[1, 1]", ["seeds", "once"]),
    ("network.host_profile='tpu'", ["network.host_profile", "a100"]),
])
def test_non_finite_and_impossible_settings(tmp_path, capsys, setting, needles):
    assert main(["run", *TINY, "--set", setting, "--out", str(tmp_path / "r")]) == 2
    _one_line_error(capsys, *needles)
    assert not (tmp_path / "r").exists()


def test_parameter_typos_list_the_allowed_keys(tmp_path, capsys):
    for via, typo in (("offload", "k_prim"), ("ps", "lamda")):
        argv = ["run", *TINY[:-4], "--no-progress", "--no-report", "--agg", "fa",
                "--set", f"paths[0].via='{via}'", "--set", f"paths[0].params.{typo}=1",
                "--out", str(tmp_path / via)]
        assert main(argv) == 2
        err = _one_line_error(capsys, "paths[0].params", typo, "allowed keys", "lam")
        assert ("k_prime" in err) == (via == "offload")
    assert main(["run", *TINY, "--seeds", "a,b", "--out", str(tmp_path / "s")]) == 2
    _one_line_error(capsys, "--seeds")


def test_a_run_folder_held_by_another_run_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    with runs.locked(out):
        import subprocess
        import sys

        code = subprocess.run(
            [sys.executable, "-m", "innet", "run", *TINY, "--out", str(out)],
            capture_output=True, text=True, timeout=120,
            env={**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"})
    assert code.returncode == 2 and "another run is writing" in code.stderr
    assert not (out / "config.toml").exists()


def test_tensorboard_export_or_a_clear_error(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", *TINY, "--out", str(out)]) == 0
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        assert main(["report", str(out), "--tensorboard"]) == 2
        _one_line_error(capsys, "pip install tensorboard")
        return
    assert main(["report", str(out), "--tensorboard"]) == 0
    events = list((out / "tensorboard").rglob("events.out.tfevents.*"))
    assert len(events) == 1 and events[0].stat().st_size > 0


def test_launch_refuses_what_it_cannot_run_by_name(tmp_path, capsys):
    """innet launch: an offload path, the emulated crash, a bad capture size — each a
    one-line error naming the key, exit code 2, no run folder and no process started."""
    out = tmp_path / "l"
    base = ["launch", "scenarios/switch_loss.toml", "--out", str(out), "--no-progress"]
    assert main([*base, "--set", 'paths=[{rule = "fa", via = "offload"}]']) == 2
    _one_line_error(capsys, "paths[0].via", "offload")
    assert main([*base, "--set", "network.crash=[1, 5]"]) == 2
    _one_line_error(capsys, "network.crash")
    assert main([*base, "--pcap", str(tmp_path / "x.pcap"), "--pcap-packets", "0"]) == 2
    _one_line_error(capsys, "--pcap-packets")
    assert not out.exists() and not (tmp_path / "x.pcap").exists()
