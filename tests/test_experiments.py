"""Sweeps, reports, comparisons, claims and the packet-loss library (issue 5)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from emulator.network import Link, LinkModel
from host.switch_allreduce import SwitchAllreduce
from host.transport import UnreliableUplink
from innet import claims, config, experiment, report
from innet.cli import main

TINY = ["--steps", "4", "-p", "7", "-f", "1", "--no-progress"]


def write(tmp_path, text, name="s.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


# -- scenario keys of the library -----------------------------------------------------
@pytest.mark.parametrize(
    "text,message",
    [
        ("[sweep]\n'workers.q' = [1]", "unknown key workers.q"),
        ("[sweep]\n'workers.f' = 3", "sweep.workers.f: expected a non-empty list"),
        ("[sweep]\n'workers.f' = [1, 4]", "sweep point workers.f=4: paths[3].rule: bulyan"),
        ("[sweep]\n'paths[9].params.lam' = [1.0]", "there is no paths[9]"),
        ("[sweep]\n'workers.f' = [1]\n[report]\nx = 'workers.p'", "report.x: 'workers.p'"),
        ("[[network.links]]\nworker = 20\nup_loss = 0.1", "network.links[0].worker"),
        ("[[network.links]]\nworker = 1\nup_loss = 1.5", "network.links[0].up_loss"),
        ("[[network.links]]\nworker = 1\nup_burst = [0.1]", "network.links[0].up_burst"),
        ("[[network.links]]\nworker = 1\n[[network.links]]\nworker = 1", "two entries"),
        ("[network]\ncrash = [3]", "network.crash"),
        ("[network]\ncrash = [3, 301]", "network.crash"),
        ("[network]\nrecovery = 'no'", "network.recovery: expected bool"),
        ("[report]\nexpect = [{check = \"'fx' > 0.5\"}]", "report.expect[0].check: no path"),
        ("[report]\nexpect = [{check = \"open('x')\"}]", "not allowed here"),
        ("[report]\nexpect = [{check = \"'fa' > 0.5\", where = 'workers.f > 1'}]",
         "report.expect[0].where: unknown name 'workers.f'"),
    ],
)
def test_invalid_library_keys_name_the_key(tmp_path, text, message):
    with pytest.raises(config.ScenarioError) as err:
        config.load(write(tmp_path, text))
    assert message in str(err.value)


def test_crash_needs_rules_that_hold_without_the_worker(tmp_path):
    text = "[workers]\np = 15\nf = 3\n[network]\ncrash = [1, 5]\n[[paths]]\nrule = 'bulyan'"
    with pytest.raises(config.ScenarioError, match="after network.crash only 14"):
        config.load(write(tmp_path, text))


def test_sweep_points_are_the_grid_in_order():
    s = config.from_dict({"sweep": {"workers.f": [0, 1], "network.recovery": [True, False]},
                          "paths": [{"rule": "fa"}]})
    points = config.sweep_points(s)
    assert [n for n, _, _ in points] == [
        "workers.f=0,network.recovery=true", "workers.f=0,network.recovery=false",
        "workers.f=1,network.recovery=true", "workers.f=1,network.recovery=false"]
    assert [(p.workers.f, p.network.recovery) for _, _, p in points] == [
        (0, True), (0, False), (1, True), (1, False)]
    assert all(not p.sweep for _, _, p in points)


def test_set_key_reaches_paths_and_round_trips():
    data = config.to_dict(config.from_dict({"paths": [{"rule": "fa"}]}))
    config.set_key(data, "paths[0].params.lam", 8.0)
    config.set_key(data, "network.up_loss", 0.25)
    s = config.from_dict(data)
    assert s.paths[0].params == {"lam": 8.0} and s.network.up_loss == 0.25
    assert config.from_dict(config.to_dict(s)) == s


def test_every_shipped_scenario_loads():

    files = sorted(Path("scenarios").glob("*.toml"))
    assert len(files) >= 12
    for f in files:
        config.sweep_points(config.load(f))


# -- claims ----------------------------------------------------------------------------
def test_claims_evaluate_accuracies_and_sweep_values():
    acc = {"fa": 0.93, "mean": 0.1, "switch:mean": 0.11}
    assert claims.evaluate("'fa' >= 'mean' + 0.5", acc)
    assert not claims.evaluate("'fa' < 0.9 or 'mean' > 0.2", acc)
    assert claims.evaluate("abs('switch:mean' - 'mean') < 0.02 and min('fa', 1) == 'fa'", acc)
    assert claims.evaluate("0.05 < 'mean' < 0.2", acc)
    assert claims.evaluate("workers.f >= 1 and network.recovery == false",
                           values={"workers.f": 2, "network.recovery": False})
    with pytest.raises(ValueError):
        claims.evaluate("__import__('os')", acc)
    with pytest.raises(KeyError):
        claims.evaluate("'nope' > 1", acc)


# -- the packet-loss library -------------------------------------------------------------
def _slow_zero_fill(G, model, k, seed):
    """Reference: draw the same link's fate packet batch by batch, zero by hand."""
    out = G.clone()
    n = G.shape[1]
    packets = -(-n // k)
    lost = 0
    for i in range(G.shape[0]):
        link = Link(model, seed * 1_000_003 + 7_000 + i)
        arrived = set(link.transmit(packets).tolist())
        for j in range(packets):
            if j not in arrived:
                out[i, j * k:(j + 1) * k] = 0.0
                lost += 1
    return out, lost


@pytest.mark.parametrize("model", [LinkModel(loss=0.2), LinkModel(burst=(0.1, 0.3, 0.0, 0.8)),
                                   LinkModel(down_between=(0, 1))])
def test_unreliable_uplink_zero_fills_exactly_the_lost_packets(model):
    G = torch.randn(4, 1000) + 5.0  # no value is zero by chance
    up = UnreliableUplink([model] * 4, k=64, seed=3)
    got, stats = up.send(G)
    want, lost = _slow_zero_fill(G, model, 64, 3)
    assert torch.equal(got, want)
    assert stats.lost == lost > 0 and stats.packets == 4 * 16
    assert stats.values_lost == int((got == 0).sum())
    assert torch.equal(G[got != 0], got[got != 0])  # what arrived is untouched


def test_unreliable_uplink_without_loss_is_the_identity():
    G = torch.randn(3, 100)
    got, stats = UnreliableUplink([LinkModel()] * 3, k=16).send(G)
    assert got is G and stats.lost == 0


@pytest.mark.parametrize("after_rounds", [0, 1])
def test_crashed_worker_falls_back_to_the_live_rows(after_rounds):
    rng = np.random.default_rng(0)
    p, k, n = 6, 16, 16 * 40
    X = rng.standard_normal((p, n)).astype(np.float32)
    ar = SwitchAllreduce(p, k, pool_size=8, max_retries=3)
    ar.crash(2, after_rounds=after_rounds)
    total, stats = ar.allreduce(X)
    live = [0, 1, 3, 4, 5]
    fell = stats.fallback_chunks["silent_worker"]
    assert fell > 0 and stats.retransmissions > 0
    want = X[live].astype(np.float64).sum(axis=0) * p / len(live)
    chunks = total.reshape(-1, k)
    # every chunk is either the switch's exact-sum (all 6 workers) or the live fallback
    full = X.astype(np.float64).sum(axis=0).reshape(-1, k)
    is_fallback = np.isclose(chunks, want.reshape(-1, k), atol=1e-9).all(axis=1)
    is_switch = np.isclose(chunks, full, atol=1e-3).all(axis=1)
    assert (is_fallback | is_switch).all()
    assert is_fallback.sum() == fell
    if after_rounds == 0:
        assert fell == n // k


def test_no_recovery_run_loses_packets_and_crash_is_survived(tmp_path):
    text = """
name = "lossy"
[workers]
p = 7
f = 1
[training]
steps = 6
eval_every = 3
[network]
up_loss = 0.2
lossy_workers = [0, 1]
recovery = false
crash = [4, 3]
[[paths]]
rule = "fa"
[[paths]]
rule = "mean"
via = "switch"
"""
    out = tmp_path / "run"
    assert main(["run", str(write(tmp_path, text)), "--out", str(out), "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    for path in ("fa", "switch:mean"):
        net = summary[path]["network"]
        assert net["packets_lost_unrecovered"] > 0
        assert net["crashed_workers"] == 1
    assert summary["switch:mean"]["network"]["fallback_chunks"]["silent_worker"] > 0
    # both paths saw the same loss: one seeded uplink each, same draws
    assert (summary["fa"]["network"]["packets_lost_unrecovered"]
            == summary["switch:mean"]["network"]["packets_lost_unrecovered"])
    text = (out / "report.md").read_text()
    assert "no recovery" in text and "crashes at step 3" in text


# -- run, sweep, report, compare ---------------------------------------------------------
def test_run_writes_a_report_with_figures(tmp_path):
    out = tmp_path / "run"
    assert main(["run", *TINY, "--agg", "mean", "--agg", "fa", "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert "| mean |" in md and "| fa |" in md and "figures/accuracy.png" in md
    for fig in ("accuracy.png", "loss.png", "network.png"):
        assert (out / "figures" / fig).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sweep_runs_resumes_and_reports(tmp_path, capsys):
    out = tmp_path / "sweep"
    args = ["sweep", *TINY, "--agg", "mean", "--agg", "median", "--grid", "workers.f=0,1",
            "--out", str(out)]
    assert main(args) == 0
    index = json.loads((out / "sweep.json").read_text())
    assert [p["name"] for p in index["points"]] == ["workers.f=0", "workers.f=1"]
    summaries = json.loads((out / "sweep_summary.json").read_text())
    assert set(summaries["workers.f=1"]) == {"mean", "median"}
    flat = json.loads((out / "summary.json").read_text())
    assert set(flat) == {f"workers.f={f}/{p}" for f in (0, 1) for p in ("mean", "median")}
    assert all("final_test_accuracy_sd" in entry for entry in flat.values())
    first = (out / "workers.f=0" / "summary.json").stat().st_mtime_ns
    capsys.readouterr()
    assert main(args) == 0  # resumed: nothing left to run
    assert "2 of 2 points already finished" in capsys.readouterr().out
    assert (out / "workers.f=0" / "summary.json").stat().st_mtime_ns == first
    md = (out / "report.md").read_text()
    assert "workers.f=1" in md and "figures/final_accuracy.png" in md
    assert (out / "workers.f=1" / "report.md").exists()


def test_sweep_in_parallel_matches_sequential(tmp_path):
    base = ["sweep", *TINY, "--agg", "mean", "--grid", "workers.f=0,1"]
    assert main([*base, "--out", str(tmp_path / "seq"), "--no-report"]) == 0
    assert main([*base, "--out", str(tmp_path / "par"), "-j", "2", "--no-report"]) == 0
    for point in ("workers.f=0", "workers.f=1"):
        seq = json.loads((tmp_path / "seq" / point / "summary.json").read_text())
        par = json.loads((tmp_path / "par" / point / "summary.json").read_text())
        assert seq["mean"]["final_test_accuracy"] == par["mean"]["final_test_accuracy"]
        assert seq["mean"]["final_train_loss"] == par["mean"]["final_train_loss"]


def test_sweep_report_checks_the_claims(tmp_path):
    text = """
name = "claims"
[workers]
p = 7
f = 1
[training]
steps = 4
[[paths]]
rule = "mean"
[[paths]]
rule = "median"
[sweep]
"workers.f" = [0, 1]
[report]
claim = "something the seeds say"
expect = [
  { check = "'mean' <= 1.0" },
  { check = "'mean' > 2.0", where = "workers.f >= 1" },
]
"""
    out = tmp_path / "sweep"
    assert main(["run", str(write(tmp_path, text)), "--out", str(out), "--no-progress"]) == 0
    md = (out / "report.md").read_text()
    assert "> something the seeds say" in md
    assert "`'mean' <= 1.0`: **holds** (2/2 points)" in md
    assert "`'mean' > 2.0` where `workers.f >= 1`: **fails** (0/1 points)" in md


def test_compare_and_report_commands(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["run", *TINY, "--agg", "mean", "--out", str(a), "--no-report"]) == 0
    assert main(["run", *TINY, "--agg", "fa", "--out", str(b), "--no-report"]) == 0
    assert not (a / "report.md").exists()
    assert main(["report", str(a)]) == 0 and (a / "report.md").exists()
    assert main(["compare", str(a), str(b), "--out", str(tmp_path / "cmp")]) == 0
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert "| a/mean |" in md and "| b/fa |" in md
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert "not a run folder" in capsys.readouterr().err


def test_cli_set_and_bad_options(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", *TINY, "--agg", "mean", "--set", "training.lr=0.05",
                 "--out", str(out), "--no-report"]) == 0
    assert config.load(out / "config.toml").training.lr == 0.05
    assert main(["run", *TINY, "--set", "training.lr"]) == 2
    assert "expected KEY=VALUE" in capsys.readouterr().err
    assert main(["sweep", *TINY]) == 2
    assert "no [sweep] table" in capsys.readouterr().err
    assert main(["bench", "nope"]) == 2
    from innet.cli import BENCHMARKS
    root = Path(__file__).resolve().parent.parent / "benchmarks"
    assert all((root / f"{name}.py").is_file() for name in BENCHMARKS)
    assert "unknown benchmark 'nope'" in capsys.readouterr().err


def test_report_reads_a_run_cut_short(tmp_path):
    out = tmp_path / "run"
    assert main(["run", *TINY, "--agg", "mean", "--out", str(out), "--no-report"]) == 0
    with (out / "metrics.jsonl").open("a") as fh:
        fh.write('{"path": "mean", "step": 5, "train_lo')  # the crash cut this line
    run = report.load_run(out)
    assert len(run.records["mean"]) == 4


def test_geometry_matches_a_slow_reference():
    """The mechanism metrics: pairwise cosines by group, cosines to the honest mean,
    the update against it, FA's weight share on the Byzantine rows."""
    rng = np.random.default_rng(4)
    G = rng.normal(size=(7, 30))
    G[:2] = rng.uniform(0, 1, size=(2, 30))
    honest = torch.tensor([False, False, True, True, True, True, True])
    update = rng.normal(size=30)
    c = rng.normal(size=7)
    got = experiment.geometry(torch.from_numpy(G), torch.from_numpy(update), honest,
                              torch.from_numpy(c))

    def cos(a, b):
        return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))

    H, B = range(2, 7), range(2)
    m = G[2:].mean(axis=0)
    want = {
        "cos_honest": np.mean([cos(G[i], G[j]) for i in H for j in H if i != j]),
        "cos_byzantine": cos(G[0], G[1]),
        "cos_cross": np.mean([cos(G[i], G[j]) for i in B for j in H]),
        "cos_honest_to_mean": np.mean([cos(G[i], m) for i in H]),
        "cos_byzantine_to_mean": np.mean([cos(G[i], m) for i in B]),
        "cos_update_to_mean": cos(update, m),
        "update_norm_ratio": np.linalg.norm(update) / np.linalg.norm(m),
        "fa_byzantine_share": sum(abs(c[i]) * np.linalg.norm(G[i]) for i in B)
        / sum(abs(c[i]) * np.linalg.norm(G[i]) for i in range(7)),
    }
    assert got == pytest.approx(want, rel=1e-12)
