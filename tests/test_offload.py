"""Two-phase FA offload: sketch, control-plane FA, phase-2 defences, training."""

import numpy as np
import pytest
import torch

from host.capture import digits_gradients
from host.fa_offload import (
    CountSketch,
    OffloadedFA,
    null_space_phase2,
    quantise_rows,
    replace_phase2,
    scaled_phase2,
)
from innet import config, experiment
from innet.aggregators.flag import FlagAggregator
from p4_models import phase2_guard, sketch_store, streaming_sum, tofino1, tofino2


@pytest.fixture(scope="module")
def attacked_gradients():
    G = digits_gradients(steps=(50,))[0]
    G[:3] = np.random.default_rng(0).uniform(-10, 10, size=(3, G.shape[1]))  # f = 3 uniform
    return G


def test_count_sketch_matches_its_dense_matrix():
    rng = np.random.default_rng(1)
    sk = CountSketch(300, 32, seed=4)
    S = np.zeros((32, 300))
    S[sk.bucket, np.arange(300)] = sk.sign
    X = rng.normal(size=(5, 300))
    assert np.allclose(sk(X), X @ S.T)
    Q, scale = quantise_rows(X, 8)
    assert np.abs(Q).max() <= 127 and np.abs(Q * scale[:, None] - X).max() <= scale.max() / 2


def test_offloaded_fa_tracks_full_fa(attacked_gradients):
    G = attacked_gradients
    full = FlagAggregator(f=3).solve(torch.from_numpy(G)).aggregate.numpy()
    agg, stats = OffloadedFA(15, 3, k_prime=4096, W=24, b=16).aggregate(G)
    assert not stats.fallback and stats.clamped_values == 0
    cos = agg @ full / np.linalg.norm(agg) / np.linalg.norm(full)
    assert cos > 0.999
    assert np.linalg.norm(agg - full) / np.linalg.norm(full) < 0.05
    # the attackers get (almost) no weight, as in full FA
    c, *_ = OffloadedFA(15, 3).coefficients(G)
    assert np.abs(c[:3]).max() < 0.05 * np.abs(c[3:]).min()
    # the one-exponent solver as well; an unknown solver is refused by name
    c_fixed, *_ = OffloadedFA(15, 3, solver="fixed").coefficients(G)
    assert np.abs(c_fixed[:3]).max() < 0.05 * np.abs(c_fixed[3:]).min()
    with pytest.raises(ValueError, match="solver"):
        OffloadedFA(15, 3, solver="lapack")


@pytest.mark.parametrize("attack", [scaled_phase2([3, 4]), scaled_phase2([5], factor=1.5),
                                    replace_phase2([3])])
def test_phase2_lies_are_caught_and_fall_back_to_full_fa(attacked_gradients, attack):
    G = attacked_gradients
    off = OffloadedFA(15, 3)
    off.phase2_attack = attack
    agg, stats = off.aggregate(G)
    assert stats.fallback and stats.checks_failed
    full = FlagAggregator(f=3).solve(torch.from_numpy(G)).aggregate.numpy()
    assert np.allclose(agg, full)


def test_null_space_deviation_passes_the_public_checksum_and_fails_the_secret_gram(
        attacked_gradients):
    """The limit of a public sketch: δ with Sδ = 0 passes the public checksum. The
    switch's secret sketch of the phase-2 stream sees it: the liars' Gram entries are
    far from what phase 1 promised, the step falls back to full FA."""
    G = attacked_gradients
    full = FlagAggregator(f=3).solve(torch.from_numpy(G)).aggregate.numpy()
    liars = [3, 4, 5]
    off = OffloadedFA(15, 3, quarantine=0)
    off.phase2_attack = null_space_phase2(liars)
    agg, stats = off.aggregate(G)
    assert stats.checksum_failed == []  # the public sketch's null space, as before
    assert stats.gram_failed == liars and stats.checks_failed == liars and stats.fallback
    assert np.allclose(agg, full)
    off.defences = False  # without the checks, the damage the check prevents
    agg, stats = off.aggregate(G)
    assert np.linalg.norm(agg - full) / np.linalg.norm(full) > 0.5


def test_honest_steps_never_trip_the_checksum():
    off = OffloadedFA(8, 1, k_prime=512)
    rng = np.random.default_rng(2)
    for _ in range(20):
        G = rng.normal(size=(8, 3000)) * rng.uniform(0.01, 100, size=(8, 1))
        assert not off.aggregate(G)[1].fallback


def test_sketch_programs_resource_reports():
    r = sketch_store(15, 4096, 64).report(tofino1)
    assert r.fits and r.recirculations == 0 and r.largest_register == 15 * 4096 // 64
    assert phase2_guard(15, 64).report(tofino1).fits
    # guard + streaming sum together exceed one tofino1 pass, not a tofino2 one
    alus = phase2_guard(15, 64).report(tofino1).alus_needed
    assert alus + streaming_sum(64, 512).report(tofino1).alus_needed > 48
    assert (phase2_guard(15, 64).report(tofino2).alus_needed
            + streaming_sum(64, 512).report(tofino2).alus_needed) <= 80
    with pytest.raises(ValueError, match="multiple of k"):
        sketch_store(15, 100, 64)


def test_offload_path_validates_its_parameters():
    base = {"workers": {"p": 15, "f": 3, "attack": "uniform"}}
    with pytest.raises(config.ScenarioError, match=r"paths\[0\].rule"):
        config.from_dict({**base, "paths": [{"rule": "mean", "via": "offload"}]})
    with pytest.raises(config.ScenarioError, match=r"params.W"):
        config.from_dict({**base, "paths": [{"rule": "fa", "via": "offload",
                                             "params": {"W": 40}}]})
    with pytest.raises(config.ScenarioError, match=r"phase2_attack"):
        config.from_dict({**base, "paths": [{"rule": "fa", "via": "offload",
                                             "params": {"phase2_attack": "x"}}]})
    with pytest.raises(config.ScenarioError, match=r"params.solver.*bfp"):
        config.from_dict({**base, "paths": [{"rule": "fa", "via": "offload",
                                             "params": {"solver": "lapack"}}]})


@pytest.mark.slow
def test_offloaded_fa_trains_within_a_point_of_ps_fa(tmp_path):
    s = config.from_dict({
        "workers": {"p": 15, "f": 3, "attack": "uniform"},
        "paths": [{"rule": "fa"},
                  {"rule": "fa", "via": "offload",
                   "params": {"k_prime": 4096, "W": 24, "b": 16}}],
    })
    summary = experiment.run(s, str(tmp_path), progress=False)
    ps, off = summary["fa"], summary["offload:fa"]
    assert abs(ps["final_test_accuracy"] - off["final_test_accuracy"]) <= 0.01
    assert off["final_test_accuracy"] > 0.85
    assert off["network"]["fallback_steps"] == 0


def test_integer_gram_is_exact_for_wide_sketches():
    from host.fa_offload import integer_gram

    rng = np.random.default_rng(3)
    Y = rng.integers(-(2**30), 2**30, size=(4, 5000))
    exact = np.array([[sum(int(a) * int(b) for a, b in zip(Y[i], Y[j])) for j in range(4)]
                      for i in range(4)], dtype=object)
    got = integer_gram(Y)
    assert all(abs(int(got[i, j]) - exact[i, j]) <= abs(exact[i, j]) * 2**-52 * 4
               for i in range(4) for j in range(4))


def test_offload_runs_the_compiled_irls_where_it_covers_the_setting(attacked_gradients):
    """Two-block solver, paper mode, λ = 0: one compiled call, whose c agrees with the
    Python IRLS around the same solver to the solver's resolution (0.14 % here: the
    W-bit rounding amplifies last-bit differences in the order of operations), and
    down-weights the same attackers. λ > 0 stays on the Python path."""
    G = attacked_gradients
    compiled = OffloadedFA(15, 3)
    python = OffloadedFA(15, 3)
    python.compiled = False
    assert compiled.compiled and not OffloadedFA(15, 3, lam=1.0).compiled
    assert not OffloadedFA(15, 3, solver="fixed").compiled
    c1, *_ = compiled.coefficients(G)
    c2, *_ = python.coefficients(G)
    np.testing.assert_allclose(c1, c2, rtol=0, atol=1e-2 * np.abs(c2).max())
    assert np.abs(c1[:3]).max() < 0.05 * np.abs(c1[3:]).min()
    total, stats = compiled.aggregate(G)
    # the modelled cost of the control plane's part grows as p² k′ and p³, not with n
    small, wide = OffloadedFA(15, 3, k_prime=256), OffloadedFA(15, 3, k_prime=4096)
    gram = wide.control_plane_cost(15).flops - small.control_plane_cost(15).flops
    assert gram == 2 * 15 * 15 * (4096 - 256)  # the integer Gram of the sketches
    assert wide.control_plane_cost(30).flops > 4 * wide.control_plane_cost(15).flops
    assert not stats.fallback and np.isfinite(total).all()


@pytest.mark.parametrize("via,params", [("switch", {}),
                                        ("offload", {"k_prime": 256, "W": 16, "b": 8})])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_rows_meet_the_policy_before_quantisation(via, params, bad):
    """Issue 12: a NaN became ≈ −6.8e38 on the switch path and passed every offload
    check. The PS's policy now applies before the rows are quantised: zeroed and
    counted, or an error."""
    from host.ps import ParameterServer
    from innet import aggregators
    from innet.aggregators import NonFiniteGradientError

    scenario = config.from_dict({"workers": {"p": 7, "f": 1},
                             "paths": [{"rule": "mean" if via == "switch" else "fa",
                                        "via": via, "params": params}]})
    path = scenario.paths[0]
    G = torch.randn(7, 5000)
    G[2, 17] = bad
    for policy in ("zero", "error"):
        ps = ParameterServer(torch.nn.Linear(2, 2), aggregators.get(path.rule, f=1), 0.1,
                             nonfinite=policy)
        agg = experiment._Aggregation(scenario, path, ps)
        if policy == "error":
            with pytest.raises(NonFiniteGradientError, match=r"\[2\]"):
                agg.step(G)
            continue
        update, _, _ = agg.step(G)
        assert torch.isfinite(update).all() and ps.nonfinite_rows == 1
        clean = G.clone()
        clean[2] = 0.0
        expected, _, _ = experiment._Aggregation(scenario, path, ParameterServer(
            torch.nn.Linear(2, 2), aggregators.get(path.rule, f=1), 0.1)).step(clean)
        torch.testing.assert_close(update, expected)


def test_a_worker_caught_lying_is_quarantined_then_readmitted(attacked_gradients):
    """Phase-2 scaling by the 3 Byzantine workers: caught at step 0 (fallback), then
    left out of the Gram and of phase 2 for `quarantine` steps, during which the
    offload serves without fallback and stays close to full FA on the honest rows;
    re-admitted afterwards, caught again."""
    from host.fa_offload import scaled_phase2

    G = attacked_gradients
    off = OffloadedFA(15, 3, quarantine=3)
    off.phase2_attack = scaled_phase2([0, 1, 2])
    runs = [off.aggregate(G) for _ in range(6)]
    history = [st for _, st in runs]
    assert history[0].fallback and sorted(history[0].checks_failed) == [0, 1, 2]
    honest = FlagAggregator(f=3).solve(torch.from_numpy(G[3:])).aggregate.numpy()
    for total, st in runs[1:4]:
        assert st.quarantined == [0, 1, 2] and not st.fallback and not st.checks_failed
        cos = total @ honest / np.linalg.norm(total) / np.linalg.norm(honest)
        assert cos > 0.99  # FA on the 12 honest rows, through the switch
    assert history[4].quarantined == [] and history[4].fallback  # back, lying again
    off2 = OffloadedFA(15, 3, quarantine=0)
    off2.phase2_attack = scaled_phase2([0, 1, 2])
    assert all(off2.aggregate(G)[1].fallback for _ in range(3))  # no quarantine: every step
    with pytest.raises(ValueError, match="quarantine"):
        OffloadedFA(15, 3, quarantine=-1)


def catch_bounds(k_prime: int, checked: int, d: int) -> tuple[float, float]:
    """Bounds on P(the checksum catches a deviation of equal size in d sketch buckets)
    when |R| = ``checked`` secret buckets are drawn from k′ with secret signs. M, the
    deviated buckets inside R, is hypergeometric. Upper: P(M ≥ 1) = 1 − C(k′−d, |R|) /
    C(k′, |R|). Lower: the M terms are ±a with secret signs, so an odd M never cancels
    and an even M cancels with probability C(M, M/2)/2^M; deviations of unequal size
    cancel less."""
    from math import comb

    lower = upper = 0.0
    for m in range(1, d + 1):
        pm = comb(d, m) * comb(k_prime - d, checked - m) / comb(k_prime, checked)
        upper += pm
        lower += pm * (1 - (comb(m, m // 2) / 2**m if m % 2 == 0 else 0.0))
    return lower, upper


@pytest.mark.parametrize("d", [1, 4, 16])
def test_sparse_deviations_are_caught_at_the_rate_the_formula_states(attacked_gradients, d):
    """Worker 3 (honest in phase 1) pushes one coordinate in each of d buckets to the
    per-value bound in phase 2. The checksum sees it only when one of those buckets is
    among the |R| secret ones of the step, and several such buckets can cancel under
    the secret signs: the caught share over N steps must lie within
    :func:`catch_bounds` (4 binomial sds). This states what the sampled checksum
    guarantees (docs/FA_OFFLOAD.md): with k′ = 4 096 and |R| = 256 a single bucket is
    caught on 6.25 % of steps — not sound on its own."""
    G = attacked_gradients[:, :2048]
    k_prime, checked, steps = 512, 64, 400
    off = OffloadedFA(15, 3, k_prime=k_prime, check_buckets=checked, quarantine=0)
    sk = off.sketch_of(G.shape[1])
    rng = np.random.default_rng(d)
    liar = 5

    lied = []

    def sparse(V, c, sketch):
        buckets = rng.choice(k_prime, size=d, replace=False)
        bound = abs(c[liar]) * np.linalg.norm(G[liar])
        lied.append(False)
        for b in buckets:
            where = np.flatnonzero(sketch.bucket == b)
            if where.size:
                j = where[rng.integers(where.size)]
                V[liar, j] = -np.sign(V[liar, j] or 1.0) * bound
                lied[-1] = True
        return V

    off.phase2_attack = sparse
    caught = missed = 0
    for _ in range(steps):
        stats = off.aggregate(G)[1]
        caught += liar in stats.checksum_failed
        missed += lied[-1] and liar not in stats.checks_failed
    lower, upper = catch_bounds(k_prime, checked, d)
    sd = np.sqrt(0.25 / steps)
    assert lower - 4 * sd <= caught / steps <= upper + 4 * sd, (caught / steps, lower, upper)
    # the secret Gram check sees what the sampled checksum misses: one coordinate at
    # the bound at least doubles the worker's norm
    assert missed == 0
    if d == 1:  # one bucket: no cancellation, the bounds meet at |R|/k′
        assert lower == upper == pytest.approx(checked / k_prime)
    assert sk.k_prime == k_prime


@pytest.mark.parametrize("d", [1, 4, 16])
def test_the_default_checksum_covers_every_bucket(attacked_gradients, d):
    """By default every bucket is checked: a lie in d (non-empty) buckets escapes only
    when its d terms cancel under the secret signs, which for an odd d never happens
    and for an even d has probability C(d, d/2)/2^d (0.375 at d = 4, 0.196 at 16)."""
    G = attacked_gradients
    off = OffloadedFA(15, 3, quarantine=0)
    assert off.check_buckets == off.k_prime
    nonempty = np.unique(off.sketch_of(G.shape[1]).bucket)
    rng = np.random.default_rng(d)
    liar, steps = 5, 200

    def sparse(V, c, sketch):
        bound = abs(c[liar]) * np.linalg.norm(G[liar])
        for b in rng.choice(nonempty, size=d, replace=False):
            where = np.flatnonzero(sketch.bucket == b)
            j = where[rng.integers(where.size)]
            V[liar, j] = -np.sign(V[liar, j] or 1.0) * bound
        return V

    off.phase2_attack = sparse
    caught = both = 0
    for _ in range(steps):
        stats = off.aggregate(G)[1]
        caught += liar in stats.checksum_failed
        both += liar in stats.checks_failed
    assert both == steps  # with the secret Gram check: every step
    lower, upper = catch_bounds(off.k_prime, off.k_prime, d)
    assert upper == pytest.approx(1.0)
    assert caught / steps >= lower - 4 * np.sqrt(0.25 / steps), (caught / steps, lower)
    if d == 1:
        assert caught == steps


# -- the offload's programs, executed (emulator.offload) ---------------------------------
def test_sketch_store_executes_its_declaration_and_counts_every_drop():
    from emulator.offload import SketchSwitch

    p, k_prime, k = 3, 16, 4
    sw = SketchSwitch(p, k_prime, k)
    declared = {r.name: r for st in sketch_store(p, k_prime, k).stages for r in st.registers}
    for name in sw.registers:
        assert sw.registers[name].dtype == declared[name].dtype, name
        assert sw.registers[name].size == declared[name].depth * declared[name].lanes, name
    rng = np.random.default_rng(0)
    Yq = rng.integers(-1000, 1000, size=(p, k_prime))
    before = {n: r.copy() for n, r in sw.registers.items()}
    # invalid packets only: wrong count, worker, ingress, index
    sw.process([0, 7, 1, 2], [0, 0, 0, 99], np.zeros((4, k)), [0, 7, 0, 2],
               count=[k - 1, k, k, k])
    assert sw.drop_counts() == {"malformed": 1, "worker_out_of_range": 1,
                                "wrong_ingress_port": 1, "index_out_of_range": 1,
                                "duplicate": 0}
    assert all(np.array_equal(before[n], r) for n, r in sw.registers.items())
    sw.send_sketches(Yq)
    sw.send_sketches(Yq + 1)  # retransmissions write nothing: idempotent
    assert sw.complete and np.array_equal(sw.read(), Yq)
    assert sw.drop_counts()["duplicate"] == p * k_prime // k


def _guard_reference(Q, exps, e_ref, bound, codes, bucket_of, signs, B):
    """Slow reference of the guard: per value, the bound in the packet's scale, the
    clamp, the shift to the reference scale, the two signed sums."""
    p, m, k = Q.shape
    Q = Q.astype(np.int64).copy()
    checksum = np.zeros(p, np.int64)
    secret = np.zeros((p, B * k), np.int64)
    clamped = np.zeros(p, np.int64)
    for w in range(p):
        for c in range(m):
            shift = e_ref - exps[c]
            b = int(bound[w])
            b = min(b << shift, 2**31 - 1) if shift >= 0 else b >> -shift
            for j in range(k):
                v = int(Q[w, c, j])
                if abs(v) > b:
                    v = b if v > 0 else -b
                    clamped[w] += 1
                Q[w, c, j] = v
                ref = v >> shift if shift >= 0 else v << -shift
                checksum[w] += codes[c, j] * ref
                secret[w, bucket_of[c] * k + j] += signs[c, j] * ref
    return Q, checksum, secret, clamped


def test_phase2_guard_matches_its_slow_reference():
    from emulator.offload import GuardSwitch

    rng = np.random.default_rng(5)
    p, k, m, B = 4, 8, 12, 3
    g = GuardSwitch(p, k, chunks=m, secret_buckets=B)
    declared = {r.name: r for st in phase2_guard(p, k, B).stages for r in st.registers}
    assert {n: r.dtype for n, r in g.registers.items()} == {n: r.dtype for n, r in
                                                           declared.items()}
    Q = rng.integers(-2**20, 2**20, size=(p, m, k)).astype(np.int32)
    exps = rng.integers(-3, 4, size=m)
    e_ref = 2
    bound = rng.integers(2**14, 2**19, size=p).astype(np.int32)
    codes = rng.integers(-1, 2, size=(m, k)).astype(np.int8)
    bucket_of = rng.integers(0, B, size=m)
    signs = rng.choice(np.array([-1, 1], np.int8), size=(m, k))
    g.arm(bound, e_ref, codes, bucket_of, signs)
    ref = _guard_reference(Q, exps, e_ref, bound, codes, bucket_of, signs, B)
    out = g(Q[:, :5].copy(), 0, exps[:5])  # two windows
    out2 = g(Q[:, 5:].copy(), 5, exps[5:])
    assert np.array_equal(np.concatenate([out, out2], axis=1), ref[0])
    checksum, secret, clamped = g.read()
    assert np.array_equal(checksum, ref[1]) and np.array_equal(secret, ref[2])
    assert np.array_equal(clamped, ref[3]) and clamped.sum() > 0
