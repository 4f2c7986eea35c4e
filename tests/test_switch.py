"""The switch emulator, links and the in-network allreduce."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emulator.network import Link, LinkModel
from emulator.switch import DROP_REASONS, MULTICAST, UNICAST, SumSwitch
from host.switch_allreduce import AllreduceStats, SwitchAllreduce
from innet import aggregators
from innet.aggregators.base import Cost
from innet.protocol import encode, flag, packet_dtype
from innet.quant import INT32_MAX, chunk_exponents, scale_of
from p4_models import streaming_sum, tofino1, tofino2


def header(n, **over):
    h = {"job": np.zeros(n, int), "worker": np.arange(n) % 4, "step": np.zeros(n, int),
         "packet_id": np.zeros(n, int), "shadow": np.zeros(n, int), "slot": np.zeros(n, int),
         "flags": np.zeros(n, int), "exponent": np.zeros(n, int)}
    h.update({k: np.asarray(v) for k, v in over.items()})
    return h


# -- exactness ------------------------------------------------------------------------------
links = st.builds(
    LinkModel,
    loss=st.floats(0.0, 0.2),
    duplicate=st.floats(0.0, 0.2),
    reorder=st.integers(0, 16),
)


@settings(max_examples=30)
@given(seed=st.integers(0, 2**31), p=st.integers(1, 16), up=links, down=links,
       burst=st.booleans())
def test_switch_sum_is_bit_exact_under_loss_duplication_reordering(seed, p, up, down, burst):
    rng = np.random.default_rng(seed)
    P, k = 32, 16
    bound = INT32_MAX // p  # SwitchML scaling: |q| ≤ INT32_MAX / p
    Q = rng.integers(-bound, bound + 1, size=(p, P, k)).astype(np.int32)
    if burst:
        up = LinkModel(burst=(0.05, 0.3, 0.0, 0.6), duplicate=up.duplicate, reorder=up.reorder)
    ar = SwitchAllreduce(p, k, pool_size=P, up=up, down=down, seed=seed, max_retries=200)
    for window in range(3):  # reuse both shadow sets
        sums, _, ovf, done = ar.reduce_window(Q, np.zeros((p, P), np.int32), window)
        assert done.all() and not ovf.any()
        assert np.array_equal(sums.astype(np.int64), Q.astype(np.int64).sum(axis=0))
    # every slot counted each worker exactly once
    assert (ar.switch.counter[ar.switch.counter > 0] == p).all()


def test_dequantised_sum_within_the_quantisation_bound():
    rng = np.random.default_rng(0)
    p, n, k = 16, 20_000, 64
    X = (rng.normal(size=(p, n)) * rng.uniform(1e-3, 10, size=(1, n))).astype(np.float32)
    lossy = LinkModel(loss=0.05, duplicate=0.02, reorder=4)
    out, stats = SwitchAllreduce(p, k, pool_size=64, up=lossy, down=lossy).allreduce(X)
    exact = X.sum(axis=0, dtype=np.float64)
    e = chunk_exponents(X, k).max(axis=0)
    bound = np.repeat(p * 0.5 / scale_of(e, p), k)[:n]  # each of p roundings ≤ ½ unit
    assert (np.abs(out - exact) <= bound * (1 + 1e-9)).all()
    assert stats.retransmissions > 0 and sum(stats.fallback_chunks.values()) == 0


# -- saturation, Byzantine integers, fallbacks ----------------------------------------------
def test_out_of_range_integers_saturate_and_flag_overflow():
    sw = SumSwitch(p=3, k=4, pool_size=2)
    vals = np.array([[INT32_MAX] * 4, [INT32_MAX] * 4, [-5, 0, 1, 2]], dtype=np.int32)
    r = sw.process(encode(header(3, worker=[0, 1, 2]), vals), np.arange(3))
    assert r.kind.tolist() == [MULTICAST]
    assert r.overflow[0] == 1
    assert r.values[0].tolist() == [INT32_MAX - 5, INT32_MAX, INT32_MAX, INT32_MAX]


int32s = st.one_of(st.integers(-(2**31), 2**31 - 1),
                   st.sampled_from([-(2**31), -(2**31) + 1, -1, 0, 1, 2**31 - 2, 2**31 - 1]))


@settings(max_examples=200)
@given(rows=st.lists(st.lists(int32s, min_size=8, max_size=8), min_size=1, max_size=6))
def test_saturating_add_equals_the_clamped_fold_lane_by_lane(rows):
    """Each contribution is clamped to int32 as it is added (the Processor's
    semantics), and the overflow flag is set exactly when some step clamped."""
    p = len(rows)
    vals = np.array(rows, dtype=np.int64)
    expected, clamped = vals[0].copy(), False
    for row in vals[1:]:
        total = expected + row
        clamped |= bool(((total > INT32_MAX) | (total < -(2**31))).any())
        expected = np.clip(total, -(2**31), INT32_MAX)
    sw = SumSwitch(p=p, k=8, pool_size=1)
    r = sw.process(encode(header(p, worker=list(range(p))), vals.astype(np.int32)),
                   np.arange(p))
    assert r.kind.tolist() == [MULTICAST]
    assert r.values[0].tolist() == expected.tolist()
    assert bool(r.overflow[0]) == clamped



@pytest.mark.parametrize("k", [16, 37, 64])
def test_saturating_add_in_vector_lanes_equals_the_clamped_fold(k):
    """The same at packet widths the compiled add runs in vector registers (with a
    remainder at 37): 400 slots of 6 contributions mixing the int32 extremes with
    uniform values (a third of the slots small values only), in one batch."""
    rng = np.random.default_rng(k)
    p, slots = 6, 400
    extremes = np.array([-(2**31), -(2**31) + 1, -1, 0, 1, 2**30, 2**31 - 2, 2**31 - 1])
    vals = np.where(rng.random((p, slots, k)) < 0.5,
                    rng.choice(extremes, size=(p, slots, k)),
                    rng.integers(-(2**31), 2**31, size=(p, slots, k)))
    quiet = rng.random(slots) < 0.3  # slots that never reach the bounds
    vals[:, quiet] = rng.integers(-(2**20), 2**20, size=(p, int(quiet.sum()), k))
    expected, clamped = vals[0].copy(), np.zeros(slots, bool)
    for row in vals[1:]:
        total = expected + row
        clamped |= ((total > INT32_MAX) | (total < -(2**31))).any(axis=1)
        expected = np.clip(total, -(2**31), INT32_MAX)
    sw = SumSwitch(p=p, k=k, pool_size=slots)
    worker = np.tile(np.arange(p), slots)  # slot by slot, workers in order
    slot = np.repeat(np.arange(slots), p)
    h = header(p * slots, worker=worker, slot=slot)
    r = sw.process(encode(h, vals.transpose(1, 0, 2).reshape(-1, k).astype(np.int32)),
                   worker)
    assert (r.kind == MULTICAST).all() and np.array_equal(r.slot, np.arange(slots))
    assert np.array_equal(r.values, expected)
    assert np.array_equal(r.overflow != 0, clamped) and clamped.any() and not clamped.all()

def test_byzantine_integers_go_to_the_fallback():
    rng = np.random.default_rng(1)
    p, n, k = 5, 4096, 64
    X = rng.normal(size=(p, n)).astype(np.float32)
    ar = SwitchAllreduce(p, k, pool_size=16)

    def byzantine(Q, window):
        Q[0, :3] = INT32_MAX  # worker 0 ignores the agreed scale on three chunks
        return Q

    ar.tamper = byzantine
    out, stats = ar.allreduce(X)
    assert stats.fallback_chunks["overflow"] > 0
    np.testing.assert_allclose(out, X.sum(axis=0, dtype=np.float64), atol=1e-5)


def test_silent_worker_and_missing_slots_fall_back():
    X = np.random.default_rng(2).normal(size=(4, 1000)).astype(np.float32)
    ar = SwitchAllreduce(4, 64, pool_size=8, max_retries=3)
    ar.silent.add(2)
    out, stats = ar.allreduce(X)
    assert stats.fallback_chunks["silent_worker"] == 16
    np.testing.assert_allclose(out, X.sum(0, dtype=np.float64), atol=1e-5)
    out, stats = SwitchAllreduce(4, 64, pool_size=0).allreduce(X)
    assert stats.fallback_chunks["no_slots"] == 16
    # after the silent worker recovers, the cleared slots aggregate correctly again
    ar.silent.clear()
    out, stats = ar.allreduce(X)
    assert sum(stats.fallback_chunks.values()) == 0
    np.testing.assert_allclose(out, X.sum(0, dtype=np.float64), atol=1e-4)


def test_retransmission_to_finished_slot_gets_unicast_and_is_not_recounted():
    sw = SumSwitch(p=2, k=2, pool_size=1)
    pk = encode(header(2, worker=[0, 1]), np.array([[1, 2], [3, 4]], np.int32))
    assert sw.process(pk, np.arange(2)).kind.tolist() == [MULTICAST]
    again = sw.process(pk[:1], np.arange(1))
    assert again.kind.tolist() == [UNICAST] and again.values[0].tolist() == [4, 6]
    assert sw.counter[0] == 2
    partial = SumSwitch(p=3, k=2, pool_size=1)
    partial.process(pk[:1], np.arange(1))
    partial.process(pk[:1], np.arange(1))  # duplicate while filling: ignored
    assert partial.counter[0] == 1 and partial.values[0].tolist() == [1, 2]


# -- malformed and spoofed packets ----------------------------------------------------------
P_, K_ = 4, 8
SIZE = packet_dtype(K_).itemsize


def valid_frame(worker=0, slot=0):
    return encode(header(1, worker=[worker], slot=[slot]), np.ones((1, K_), np.int32)).tobytes()


def set_byte(frame, pos, value):
    b = bytearray(frame)
    b[pos] = value
    return bytes(b)


malformed = st.one_of(
    st.binary(max_size=600).filter(lambda b: len(b) != SIZE),  # wrong length
    st.builds(lambda n: valid_frame()[:n], st.integers(0, SIZE - 1)),  # truncated
    st.builds(lambda j: set_byte(valid_frame(), 0, j), st.integers(1, 255)),  # unknown job
    st.builds(lambda w: set_byte(valid_frame(), 1, w), st.integers(P_, 255)),  # worker range
    st.builds(lambda s: set_byte(valid_frame(), 11, s), st.integers(2, 255)),  # slot range
    st.builds(lambda c: set_byte(valid_frame(), 15, c), st.integers(0, 255).filter(
        lambda c: c != K_)),  # wrong count
    st.builds(lambda f: set_byte(valid_frame(), 12, f | flag("RESULT")), st.integers(0, 255)),
)


@settings(max_examples=200)
@given(batch=st.lists(malformed, min_size=50, max_size=50),
       spoofed=st.lists(st.integers(0, P_ - 1), min_size=5, max_size=5))
def test_fuzzed_malformed_and_spoofed_packets_are_dropped_and_counted(batch, spoofed):
    """200 examples × 55 packets = 11 000 bad packets."""
    sw = SumSwitch(p=P_, k=K_, pool_size=2)
    frames = batch + [valid_frame(worker=w) for w in spoofed]
    ingress = np.array([0] * len(batch) + [(w + 1) % P_ for w in spoofed])  # wrong ports
    res = sw.process_bytes(frames, ingress)
    assert len(res) == 0
    assert int(sw.drops.sum()) == len(frames)
    assert sw.drop_counts()["wrong_ingress_port"] == 5
    assert (sw.counter == 0).all()


def test_wrong_dtype_batch_is_dropped():
    sw = SumSwitch(p=2, k=4)
    sw.process(np.zeros(3, dtype=packet_dtype(8)), np.zeros(3))
    assert sw.drop_counts()["malformed"] == 3 and set(DROP_REASONS) == set(sw.drop_counts())


def test_native_fields_beyond_int32_are_dropped_not_wrapped():
    """Issue 12: worker 2³² + 1 given as int64 was cast to worker 1 and counted."""
    sw = SumSwitch(p=2, k=4, pool_size=2)
    h = {name: np.zeros(3, np.int64) for name in
         ("job", "worker", "shadow", "slot", "flags", "exponent", "count")}
    h["count"][:] = 4
    h["worker"][:] = [2**32 + 1, 0, 1]
    h["slot"][2] = -(2**32) + 1  # wraps to slot 1 in int32
    res = sw.process_native(h, np.ones((3, 4), np.int32), np.array([1, 0, 1]))
    assert len(res) == 0
    assert sw.drop_counts()["malformed"] == 2
    assert sw.counter.tolist() == [1, 0, 0, 0]  # only worker 0's packet counted, in slot 0


def test_dropped_duplicates_are_counted():
    sw = SumSwitch(p=3, k=4, pool_size=2)
    frame = encode(header(1, worker=[0]), np.ones((1, 4), np.int32))
    sw.process(np.concatenate([frame, frame]).astype(packet_dtype(4)), np.array([0, 0]))
    assert sw.drop_counts()["duplicate"] == 1
    assert sw.counter[0] == 1


@pytest.mark.parametrize("field,value,text", [
    ("max_retries", 10**9, "max_retries"), ("max_retries", -1, "max_retries"),
    ("pool_size", 40_000, "15-bit slot"), ("job", 300, "8-bit job")])
def test_allreduce_parameters_beyond_the_header_or_memory_are_refused(field, value, text):
    """Issue 12: max_retries = 10**9 allocated 37 GiB; pool 40 000 aliased the slot
    field and job 300 wrapped (every chunk fell back)."""
    with pytest.raises(ValueError, match=text):
        SwitchAllreduce(2, 4, **{"pool_size": 4, field: value})


# -- resources ---------------------------------------------------------------------------------
@pytest.mark.parametrize("pool", [64, 512, 4096])
def test_streaming_sum_k64_fits_tofino1(pool):
    report = streaming_sum(64, pool).report(tofino1)
    assert report.fits and report.recirculations == 0, str(report)


def test_streaming_sum_k256_needs_recirculations():
    assert streaming_sum(256).report(tofino1).recirculations == 2
    assert streaming_sum(256).report(tofino2).recirculations == 1
    huge = streaming_sum(64, pool_size=20_000).report(tofino1)
    assert not huge.fits and "register depth" in " ".join(huge.reasons)


def test_switch_rejects_more_than_32_workers():
    with pytest.raises(ValueError, match="32-bit worker bitmap"):
        SumSwitch(p=33)


# -- links ---------------------------------------------------------------------------------------
def test_bernoulli_loss_rate_and_duplication():
    link = Link(LinkModel(loss=0.1, duplicate=0.05), seed=0)
    got = link.transmit(100_000)
    assert abs(link.lost / 100_000 - 0.1) < 0.005
    assert abs(link.duplicated / (100_000 - link.lost) - 0.05) < 0.005
    assert len(got) == 100_000 - link.lost + link.duplicated


def test_gilbert_elliott_is_bursty():
    link = Link(LinkModel(burst=(0.01, 0.1, 0.0, 1.0)), seed=0)
    kept = np.zeros(200_000, bool)
    kept[link.transmit(200_000)] = True
    lost = ~kept
    runs = np.diff(np.flatnonzero(np.diff(lost.astype(int)) != 0))
    assert 0.05 < lost.mean() < 0.13  # stationary bad share 0.01/(0.01+0.1) ≈ 0.09
    assert np.mean(runs) > 3  # losses come in bursts (mean bad run ≈ 10)


def test_reordering_is_bounded_and_failed_port_loses_everything():
    got = Link(LinkModel(reorder=5), seed=0).transmit(10_000)
    assert sorted(got) == list(range(10_000))
    assert np.abs(got - np.arange(10_000)).max() <= 5
    port = Link(LinkModel(down_between=(1, 3)), seed=0)
    assert [len(port.transmit(10)) for _ in range(4)] == [10, 0, 0, 10]


def test_link_models_validate():
    with pytest.raises(ValueError, match="link.loss"):
        LinkModel(loss=1.5)


def test_native_batch_with_inconsistent_lengths_is_refused():
    sw = SumSwitch(p=2, k=4)
    h = {name: np.zeros(5, np.int32) for name in
         ("job", "worker", "shadow", "slot", "flags", "exponent", "count")}
    with pytest.raises(ValueError, match="disagree in length"):
        sw.process_native(h, np.zeros((2, 4), np.int32), np.zeros(2, np.int32))


def test_two_lanes_give_the_same_sums_as_one():
    rng = np.random.default_rng(3)
    p, P, k = 6, 16, 8
    Q = rng.integers(-1000, 1000, size=(P * p, k)).astype(np.int32)
    slot = np.repeat(np.arange(P), p)
    worker = np.tile(np.arange(p), P)
    h = header(P * p, worker=worker, slot=slot, count=np.full(P * p, k))
    one = SumSwitch(p, k, P, lanes=1).process_native(h, Q, worker)
    two = SumSwitch(p, k, P, lanes=2).process_native(h, Q, worker)
    assert np.array_equal(one.values, two.values) and np.array_equal(one.slot, two.slot)
    assert np.array_equal(one.values, Q.reshape(P, p, k).sum(axis=1))


def test_lanes_answer_in_arrival_order_like_one_lane():
    """Slots spread over several lanes' blocks, packets shuffled, copies, a slot out of
    range and a foreign job mixed in: the answers (multicasts and kept-result unicasts)
    come back in arrival order, field for field as one lane gives them (the lanes'
    answer lists are merged, not scanned)."""
    rng = np.random.default_rng(11)
    p, P, k = 5, 300, 4  # slots in five 64-slot blocks
    slot = np.repeat(np.arange(P), p)
    worker = np.tile(np.arange(p), P)
    order = rng.permutation(P * p)
    copies = rng.choice(P * p, size=200)  # retransmissions, some after their slot completes
    order = np.concatenate([order, copies])
    slot, worker = slot[order], worker[order]
    slot[rng.choice(len(slot), 7)] = P + 3  # out of range: dropped, counted
    job = np.where(rng.random(len(slot)) < 0.02, 9, 0)  # another job: dropped
    Q = rng.integers(-1000, 1000, size=(len(slot), k)).astype(np.int32)
    h = header(len(slot), worker=worker, slot=slot, job=job, count=np.full(len(slot), k))
    one = SumSwitch(p, k, P, lanes=1)
    two = SumSwitch(p, k, P, lanes=2)
    a, b = one.process_native(h, Q, worker), two.process_native(h, Q, worker)
    assert len(a) > P and np.all(np.diff(b.packet) > 0)
    for field in ("packet", "kind", "worker", "slot", "shadow", "exponent", "overflow",
                  "values"):
        assert np.array_equal(getattr(a, field), getattr(b, field)), field
    assert one.drop_counts() == two.drop_counts()
    assert (a.kind == UNICAST).any() and (a.kind == MULTICAST).sum() <= P


def test_fully_lost_window_is_exact_or_a_counted_fallback():
    """Issue 12's reproducer: window 0 lost entirely (up link down for one batch), no
    retries. Clearing only the set in use left the preamble's bits in the other set,
    and the next window took its packets for retransmissions: [11, 0, 33], accepted."""
    X = np.array([[1, 2, 3], [10, 20, 30]], np.float32)
    ar = SwitchAllreduce(2, 1, pool_size=1, up=LinkModel(down_between=(1, 2)), max_retries=0)
    out, stats = ar.allreduce(X)
    np.testing.assert_allclose(out, [11, 22, 33], rtol=1e-6)
    assert stats.fallback_chunks["silent_worker"] == 1  # window 0, summed by the PS


failures = st.one_of(st.none(), st.tuples(st.integers(0, 6), st.integers(1, 4)).map(
    lambda t: (t[0], t[0] + t[1])))


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31), p=st.integers(2, 8), k=st.sampled_from([1, 4, 16]),
       n=st.integers(1, 200), pool=st.integers(1, 8), retries=st.integers(0, 3),
       loss=st.sampled_from([0.0, 0.1, 0.3]), up_down=failures, down_down=failures,
       steps=st.integers(1, 3), delay=st.sampled_from([0.0, 0.1, 0.4]),
       max_delay=st.integers(1, 6), duplicate=st.sampled_from([0.0, 0.2]))
def test_lost_windows_never_give_a_silent_wrong_sum(seed, p, k, n, pool, retries, loss,
                                                   up_down, down_down, steps, delay,
                                                   max_delay, duplicate):
    """Failed ports over whole windows (up and down), loss, duplication, delay across
    rounds, few retries, several steps on one switch: every value is the exact sum to
    quantisation, whether the switch or the PS fallback produced it."""
    rng = np.random.default_rng(seed)
    common = dict(loss=loss, duplicate=duplicate, delay=delay,
                  max_delay=max_delay if delay else 0)
    up = [LinkModel(down_between=up_down if w == 0 else None, **common) for w in range(p)]
    down = [LinkModel(down_between=down_down if w == p - 1 else None, **common)
            for w in range(p)]
    ar = SwitchAllreduce(p, k, pool_size=pool, up=up, down=down, seed=seed,
                         max_retries=retries)
    for _ in range(steps):
        X = rng.normal(size=(p, n)).astype(np.float32)
        out, _ = ar.allreduce(X)
        exact = X.sum(axis=0, dtype=np.float64)
        scale = np.repeat(scale_of(chunk_exponents(X, k).max(axis=0), p), k)[:n]
        assert (np.abs(out - exact) <= p * 0.5 / scale + 1e-9).all()


def test_repeated_allreduce_never_reads_a_stale_slot():
    """Every use of a slot flips its shadow set, across windows and steps: vectors of
    changing length (partial windows) and a preamble per step never hit the kept
    result of an earlier use (which would show up as overflow fallbacks or errors)."""
    rng = np.random.default_rng(3)
    p, k = 6, 16
    ar = SwitchAllreduce(p, k, pool_size=8, up=LinkModel(loss=0.05), down=LinkModel(loss=0.05))
    for n in (300, 77, 128, 1000, 5, 300):
        X = (rng.normal(size=(p, n)) * rng.uniform(0.01, 100)).astype(np.float32)
        out, stats = ar.allreduce(X)
        assert stats.fallback_chunks == {"overflow": 0, "silent_worker": 0, "no_slots": 0}
        exact = X.sum(axis=0, dtype=np.float64)
        scale = np.repeat(scale_of(chunk_exponents(X, k).max(axis=0), p), k)[:n]
        assert (np.abs(out - exact) <= p * 0.5 / scale + 1e-12).all()


@pytest.mark.parametrize("loss", [0.0, 0.1])
@pytest.mark.parametrize("p,k,n,pool", [(5, 8, 500, 16), (1, 8, 33, 16), (7, 16, 4096, 512),
                                        (3, 64, 1000, 2)])
def test_wire_engine_gives_the_same_sums_as_the_compiled_engine(loss, p, k, n, pool):
    """The compiled engine quantises each packet as it is sent and dequantises each
    chunk as it is reassembled; the wire engine encodes a quantised send buffer. Same
    floats out, bit for bit (tail chunks, one window, many windows)."""
    rng = np.random.default_rng(4)
    X = rng.normal(size=(p, n)).astype(np.float32)
    link = LinkModel(loss=loss, duplicate=loss / 2, reorder=3 if loss else 0)
    fast, _ = SwitchAllreduce(p, k, pool, up=link, down=link, seed=1).allreduce(X)
    wire = SwitchAllreduce(p, k, pool, up=link, down=link, seed=1, wire=True, capture=100_000)
    slow, stats = wire.allreduce(X)
    assert np.array_equal(fast, slow)  # the integer sums are exact in both engines
    packets = wire.captured()  # what reached the switch, and what it sent back
    # the exponent preamble (PHASE) is header-only: count 0, up and down
    phase = (packets["flags"] & flag("PHASE")) != 0
    assert packets.dtype == packet_dtype(k) and phase.any()
    assert (packets["count"] == np.where(phase, 0, k)).all()
    to_switch = packets[(packets["flags"] & flag("RESULT")) == 0]
    assert len(to_switch) == sum(ln.sent - ln.lost + ln.duplicated for ln in wire.up)
    assert len(packets) > len(to_switch)  # the results
    assert stats.packets_up == sum(ln.sent for ln in wire.up)




@pytest.mark.parametrize("loss,silent,dead,tamper", [
    (0.0, None, None, False), (0.1, None, None, False), (0.0, 1, None, False),
    (0.0, None, 2, False), (0.0, None, None, True)])
def test_compiled_workers_propose_the_next_windows_exponents(loss, silent, dead, tamper,
                                                            monkeypatch):
    """The compiled workers take the exponents their packets propose from X as they
    send (packet by packet in an in-order round, all at once otherwise): in the
    preamble and every window, every worker's row — a silent or crashed one's too —
    equals the bulk pass over the chunks proposed for, the vector's tail and the
    chunks past its end included."""
    rng = np.random.default_rng(8)
    p, k, n, pool = 4, 16, 3000, 32  # 6 windows, a short tail chunk
    X = (rng.normal(size=(p, n)) * 2.0 ** rng.integers(-30, 30, size=(p, n // k + 1)
                                                       ).repeat(k, axis=1)[:, :n])
    X = X.astype(np.float32)
    link = LinkModel(loss=loss)
    ar = SwitchAllreduce(p, k, pool, up=link, down=link, seed=3, max_retries=3)
    if silent is not None:
        ar.silent.add(silent)
    if dead is not None:
        ar.crash(dead, after_rounds=20)  # dies during the third window
    if tamper:  # the packets' integers materialised first (PAYLOAD_Q), left as they are
        ar.tamper = lambda Q, window: Q
    # (a clean step is pipelined, see test_pipelined_step_is_the_window_path_bit_for_bit:
    # this one checks the window path's in-order lanes)
    monkeypatch.setattr(ar, "_can_pipeline", lambda m: False)
    seen, run_window = [], ar._window

    def spy(mode, Q, e_next, m, stats, **kw):
        answer = run_window(mode, Q, e_next, m, stats, **kw)
        seen.append((kw.get("propose_from"), m, e_next.copy()))
        return answer

    monkeypatch.setattr(ar, "_window", spy)
    ar.allreduce(X)
    # the preamble proposes window 0's exponents, window b those of window b + 1
    assert [first for first, _, _ in seen] == list(range(0, -(-n // k) + pool, pool))
    for first, m, e_next in seen:
        assert np.array_equal(e_next, chunk_exponents(X, k, first, m))

def _engine_state(ar: SwitchAllreduce) -> list:
    """Everything a step leaves behind: registers, counters, links, shadow sets."""
    sw = ar.switch
    return [sw.bitmap, sw.use, sw.counter, sw.exponent, sw.overflow, sw.values, sw.drops,
            sw.packets_in, ar._set, ar._up_arrays[1], ar._down_arrays[1], ar.step]


def _steps(ar: SwitchAllreduce, rng, p: int, lengths) -> list:
    """Steps over vectors of the given lengths: one with an Inf and a NaN, one whose
    control plane caps the exponents (overflowing chunks go to the PS); per step the
    output, the stats and the round log."""
    seen = []
    for i, n in enumerate(lengths):
        X = (rng.normal(size=(p, n)) * 2.0 ** rng.integers(-20, 20, size=(p, 1))
             ).astype(np.float32)
        if i == 1:
            X[0, n // 2] = np.inf
            X[-1, n // 3] = np.nan
        ar.switch.exponent_cap = 1 if i == 2 else 127
        if i == 2:  # values past the capped scale: the workers clip, the sums saturate
            X[:, :3] = 1e6
        out, stats = ar.allreduce(X)
        seen.append((out.copy(), stats.as_dict(), list(stats.round_log)))
    return seen


@pytest.mark.parametrize("p,k,lengths,pool", [
    (4, 8, (1000, 1000, 1000, 200), 16),  # windows of 16 slots, a partial last window
    (1, 4, (100, 100, 100), 8),  # one worker: every packet completes its slot
    (5, 64, (64 * 200 + 3, 700, 64 * 200 + 3), 128),  # a short tail chunk; fewer slots
    (3, 4, (777, 777, 3000), 50),  # the vector grows: slots unused a step join again
    (8, 64, (50, 50, 50), 512),  # one chunk: one slot of the pool
])
def test_pipelined_step_is_the_window_path_bit_for_bit(p, k, lengths, pool, monkeypatch):
    """With lossless links, live honest workers and fresh slots a step runs each group
    of slots through all its windows (emulator.rounds.pipelined_kernel) instead of
    every slot through one window at a time: every output bit, counter, round-log row,
    register, link state and shadow set equals the window path's, step after step,
    with non-finite values and capped exponents (overflow fallbacks) among them."""
    runs = {}
    for pipelined in (True, False):
        ar = SwitchAllreduce(p, k, pool)
        taken = []
        if pipelined:
            monkeypatch.setattr(ar, "_pipelined",
                                lambda *a, run=ar._pipelined, taken=taken:
                                taken.append(1) or run(*a))
        else:
            monkeypatch.setattr(ar, "_can_pipeline", lambda m: False)
        runs[pipelined] = _steps(ar, np.random.default_rng(p * 1000 + k), p, lengths)
        runs[pipelined].append(_engine_state(ar))
        assert len(taken) == (len(lengths) if pipelined else 0)
    (*steps, state), (*ref_steps, ref_state) = runs[True], runs[False]
    assert p == 1 or ref_steps[2][1]["fallback_chunks"]["overflow"]  # the cap bites
    for (out, stats, log), (ref_out, ref_stats, ref_log) in zip(steps, ref_steps):
        np.testing.assert_array_equal(out, ref_out)
        assert stats == ref_stats and log == ref_log
    for got, ref in zip(state, ref_state):
        np.testing.assert_array_equal(got, ref)


def test_only_a_step_that_cannot_go_wrong_is_pipelined():
    """Loss, a silent or crashed worker, Byzantine integers, a guard, a link that
    delays (it may hold packets across steps), or slots a later use has touched (a
    rewound step counter): the window path, with its retransmission rounds and checks.
    Forced through the pipelined kernel, a step on slots of a later use is caught by
    the kernel's script check, not returned."""
    p, k, pool, n = 4, 8, 16, 500
    X = np.random.default_rng(5).normal(size=(p, n)).astype(np.float32)
    clean = SwitchAllreduce(p, k, pool)
    assert clean._can_pipeline(pool)
    clean.allreduce(X)
    assert clean._can_pipeline(pool)
    cases = {"loss": SwitchAllreduce(p, k, pool, up=LinkModel(loss=0.01)),
             "silent": SwitchAllreduce(p, k, pool), "dead": SwitchAllreduce(p, k, pool),
             "tamper": SwitchAllreduce(p, k, pool), "guard": SwitchAllreduce(p, k, pool),
             "held": SwitchAllreduce(p, k, pool, down=LinkModel(delay=1.0, max_delay=3))}
    cases["silent"].silent.add(1)
    cases["dead"].crash(2)
    cases["tamper"].tamper = lambda Q, window: Q
    cases["guard"].guard = lambda Q, first, e: Q
    for name, ar in cases.items():
        assert not ar._can_pipeline(pool), name
    rewound = SwitchAllreduce(p, k, pool)
    rewound.allreduce(X)
    rewound.allreduce(X)
    rewound.step = 0  # a replay of step 0: its slots' keys are older than the registers'
    assert not rewound._can_pipeline(pool)
    rewound._can_pipeline = lambda m: True
    with pytest.raises(RuntimeError, match="off the protocol's script"):
        rewound.allreduce(X)


@pytest.mark.parametrize("lanes", [1, 2])
def test_a_lossless_round_adds_each_slot_in_worker_order_like_the_wire_engine(lanes):
    """A lossless round takes a lane's block of chunks worker by worker; saturating
    adds depend on the order, so each slot must still see workers 0, 1, … p − 1: the
    clamped fold in that order (a slow reference), the wire engine's sums and overflow
    flags, and the same counters."""
    rng = np.random.default_rng(11)
    p, k, m, pool = 5, 8, 200, 256  # four blocks of 64 slots (and a short one) on the lanes
    Q = rng.integers(-1000, 1000, size=(p, m, k), dtype=np.int32)
    hot = rng.random(m) < 0.5  # slots whose lanes go to the limits, in any order
    Q[:, hot] = rng.choice(np.array([INT32_MAX, -INT32_MAX, 2**30, -(2**30), 7], np.int32),
                           size=(p, int(hot.sum()), k))
    e = rng.integers(-5, 5, size=(p, m), dtype=np.int32)
    ref = Q[0].astype(np.int64)
    for w in range(1, p):
        ref = np.clip(ref + Q[w], -(2**31), INT32_MAX)
    got = {}
    for wire in (False, True):
        ar, stats = SwitchAllreduce(p, k, pool, lanes=lanes, wire=wire), AllreduceStats()
        sums, agreed, ovf, done = ar.reduce_window(Q, e, 0, stats)
        assert done.all() and np.array_equal(sums, ref)
        assert np.array_equal(agreed, e.max(axis=0))
        assert np.array_equal(ovf, _clamped_on_the_way(Q)) and ovf.any() and not ovf.all()
        got[wire] = (sums, ovf, stats.packets_up, stats.packets_down, stats.rounds)
    assert all(np.array_equal(a, b) for a, b in zip(got[False], got[True]))

def _clamped_on_the_way(Q: np.ndarray) -> np.ndarray:
    """Per slot: whether a clamp happened while folding the workers in order."""
    acc = Q[0].astype(np.int64)
    hit = np.zeros(Q.shape[1], bool)
    for w in range(1, Q.shape[0]):
        t = acc + Q[w]
        c = np.clip(t, -(2**31), INT32_MAX)
        hit |= (t != c).any(axis=1)
        acc = c
    return hit

def test_time_model_charges_serialisation_latency_and_timeouts():
    from emulator.timing import TimeModel

    tm = TimeModel(bandwidth_gbps=100, latency_us=1, pass_ns=500, timeout_us=1000)
    pkt = tm.packet_bytes(64)
    assert pkt == 42 + 16 + 256 + 24
    one = tm.switch_step_s([(1000, 1000, 16000, 16000, 0)], 64)
    assert one == pytest.approx(8 * 1000 * pkt / 100e9 + 2e-6 + 500e-9)
    retry = tm.switch_step_s([(1000, 1000, 16000, 16000, 0), (3, 3, 10, 10, 1)], 64)
    assert retry - one == pytest.approx(8 * 3 * pkt / 100e9 + 2.5e-6 + 1e-3)
    # the PS serialises all p gradients on one link: p times the switch's per-link load
    ps = tm.ps_step_s(16, 64 * 1000, Cost(), 64)
    assert ps == pytest.approx(2 * 16 * 8 * 1000 * pkt / 100e9 + 2e-6)
    with pytest.raises(ValueError, match="bandwidth_gbps"):
        TimeModel(bandwidth_gbps=0)
    # a TCP-like resend round: the timeout, the resent packets on the PS link, an RTT
    assert tm.retransmission_s([5, 1], 64) == pytest.approx(
        2e-3 + 8 * 6 * pkt / 100e9 + 2 * 2e-6)


def test_compute_profile_is_a_roofline_with_launch_costs():
    from emulator.timing import PROFILES, ComputeProfile

    prof = ComputeProfile("x", memory_gbps=100.0, gflops=1000.0, launch_us=2.0)
    assert prof.seconds(Cost(bytes=1e9)) == pytest.approx(1e-2)  # memory-bound
    assert prof.seconds(Cost(flops=1e11, launches=3)) == pytest.approx(0.1 + 6e-6)
    # every rule's modelled cost grows with n and p and reads G at least once
    for name in aggregators.NAMES:
        rule = aggregators.get(name, f=1)
        small, wide, tall = rule.cost(8, 1 << 12), rule.cost(8, 1 << 16), rule.cost(16, 1 << 12)
        assert small.bytes >= 8 * (1 << 12) * 4, name
        assert wide.bytes > small.bytes and tall.bytes > small.bytes, name
        assert PROFILES["a100"].seconds(wide) > PROFILES["a100"].seconds(small), name
    # the sorting rules pay their network's compare-exchanges
    from innet.aggregators.sorting_network import batcher_pairs

    assert aggregators.get("median").cost(16, 100).flops == 2 * len(batcher_pairs(16)) * 100 + 100


def test_reliable_transport_resends_until_everything_arrives():
    from host.transport import ReliableTransport

    lossy = [LinkModel(loss=0.3)] * 4
    resent = ReliableTransport(lossy, [LinkModel()] * 4, k=16, seed=1).step(16 * 100)
    assert resent and all(a >= b for a, b in zip(resent, resent[1:]))
    assert 0.2 * 400 < resent[0] < 0.4 * 400  # ~30 % of the 400 packets lost at first
    assert ReliableTransport([LinkModel()] * 4, [LinkModel()] * 4, 16).step(1600) == []
    again = ReliableTransport(lossy, [LinkModel()] * 4, k=16, seed=1).step(16 * 100)
    assert again == resent  # seeded
    dead = ReliableTransport([LinkModel(down_between=(0, 10**9))], [LinkModel()], 16,
                             max_rounds=5)
    with pytest.raises(RuntimeError, match="never recovers"):
        dead.step(160)


def test_allreduce_round_log_feeds_the_time_model():
    from emulator.timing import TimeModel

    p, k, n = 4, 16, 16 * 40
    X = np.random.default_rng(0).normal(size=(p, n)).astype(np.float32)
    clean = SwitchAllreduce(p, k, 16).allreduce(X)[1]
    lossy = SwitchAllreduce(p, k, 16, up=LinkModel(loss=0.2), seed=2).allreduce(X)[1]
    assert len(clean.round_log) == clean.rounds and clean.rounds == 1 + 3  # preamble + windows
    assert all(row[0] == 16 for row in clean.round_log)  # 16 chunks per window per link
    tm = TimeModel()
    assert tm.switch_step_s(lossy.round_log, k) > tm.switch_step_s(clean.round_log, k) + 1e-3


def test_control_plane_shares_register_memory_between_jobs():
    from emulator.control import ControlPlane

    rng = np.random.default_rng(5)
    p, k = 4, 16
    cp = ControlPlane(k=k, total_slots=48)
    _, a = cp.allocate(job=1, p=p, slots=32)
    lease_b, b = cp.allocate(job=2, p=p, slots=32)  # only 16 left: a smaller pool
    assert lease_b.slots == 16 and cp.used == 48
    lease_c, c = cp.allocate(job=3, p=p, slots=8)  # full: no slots, everything falls back
    assert c is None and lease_c.slots == 0
    jobs = [SwitchAllreduce(p, k, switch=a, up=LinkModel(loss=0.1), seed=1),
            SwitchAllreduce(p, k, switch=b, up=LinkModel(loss=0.1), seed=2),
            SwitchAllreduce(p, k, pool_size=0)]
    X = [rng.normal(size=(p, 1000)).astype(np.float32) for _ in jobs]
    for _ in range(2):  # interleaved steps of the three jobs
        for ar, x in zip(jobs, X):
            out, stats = ar.allreduce(x)
            assert np.abs(out - x.sum(0, dtype=np.float64)).max() < 1e-5
    assert stats.fallback_chunks["no_slots"] == -(-1000 // k)
    # another job's packets never reach a job's slots
    h = {"job": np.array([2]), "worker": np.array([0]), "shadow": np.array([0]),
         "slot": np.array([0]), "flags": np.array([0]), "exponent": np.array([0]),
         "count": np.array([k])}
    a.process_native(h, np.ones((1, k), np.int32), np.array([0]))
    assert a.drop_counts()["unknown_job"] == 1
    cp.release(1)
    lease_d, d = cp.allocate(job=4, p=p, slots=40)
    assert lease_d.slots == 32 and lease_d.base == 0 and not d.values.any()  # zeroed
    with pytest.raises(ValueError, match="holds no pool"):
        cp.release(1)


# -- stale, replayed and toggled packets (issue 12) ------------------------------------------
def _packet(worker, step, value, shadow=0, slot=0, k=2):
    h = header(1, worker=[worker], step=[step], packet_id=[0], shadow=[shadow], slot=[slot])
    return encode(h, np.full((1, k), value, np.int32))


def _run(sw, packets, ingress):
    return sw.process(np.concatenate(packets).astype(packet_dtype(2)), np.array(ingress))


@pytest.mark.parametrize("replay_first", [True, False])
def test_replay_of_an_earlier_use_is_dropped_and_the_sum_exact(replay_first):
    """Issue 12's reproducer: worker 0's step-0 packet replayed during step 2 (same
    slot, same shadow set) entered the sum: [201, 201] instead of [300, 300]."""
    sw = SumSwitch(p=3, k=2, pool_size=1)
    r0 = _run(sw, [_packet(0, 0, 1), _packet(1, 0, 100), _packet(2, 0, 100)], [0, 1, 2])
    assert r0.values[-1].tolist() == [201, 201]
    _run(sw, [_packet(w, 1, 100, shadow=1) for w in range(3)], [0, 1, 2])
    replay = _packet(0, 0, 1)
    step2 = [_packet(w, 2, 100) for w in range(3)]
    order = [replay, *step2] if replay_first else [step2[0], replay, *step2[1:]]
    res = _run(sw, order, [0, 0, 1, 2])
    assert [v.tolist() for v, kind in zip(res.values, res.kind) if kind == MULTICAST] \
        == [[300, 300]]
    if not replay_first:  # arrived while step 2 filled the slot: dropped, counted
        assert sw.drop_counts()["stale"] == 1


def test_a_worker_toggling_its_shadow_bit_is_not_counted_twice():
    """Issue 12: worker 0 sends to set 0, the same packet to set 1, then to set 0 again;
    the last copy is a duplicate of its first, not a second contribution."""
    sw = SumSwitch(p=3, k=2, pool_size=1)
    _run(sw, [_packet(w, 0, 1) for w in range(3)], [0, 1, 2])
    _run(sw, [_packet(w, 1, 1, shadow=1) for w in range(3)], [0, 1, 2])
    res = _run(sw, [_packet(0, 2, 1), _packet(0, 2, 1, shadow=1), _packet(0, 2, 1),
                    _packet(1, 2, 10), _packet(2, 2, 100)], [0, 0, 0, 1, 2])
    done = [v.tolist() for v, kind, s in zip(res.values, res.kind, res.shadow)
            if kind == MULTICAST and s == 0]
    assert done == [[111, 111]]  # each worker once
    assert sw.drop_counts()["duplicate"] >= 1


def test_exactness_campaign_finds_no_silent_wrong_sum():
    """A bounded run of benchmarks/exactness.py's seeded generator (the benchmark
    runs 10 000 + 2 000 trials): outages over whole windows, loss, duplication,
    reordering, few retries; replays, late copies and toggles at the switch."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "exactness.py"
    spec = importlib.util.spec_from_file_location("exactness", path)
    campaign = importlib.util.module_from_spec(spec)
    saved = list(sys.path)
    try:  # the script sets sys.path[0] to the repository root, as a script does
        spec.loader.exec_module(campaign)
    finally:
        sys.path[:] = saved
    rng = np.random.default_rng(12)
    assert sum(campaign.allreduce_trial(rng)[0] for _ in range(150)) == 0
    assert sum(campaign.replay_trial(rng)[0] for _ in range(150)) == 0
    fuzzed = campaign.fuzz(rng, 5_000)
    assert fuzzed == {"fuzzed_packets": 5_000, "fuzz_exceptions": 0,
                      "fuzz_miscounted_batches": 0, "fuzz_registers_changed_by_invalid": 0}


def test_registers_are_allocated_from_the_declaration():
    """Every register of the executed switch has the declared width, signedness and
    number of entries (the exponent register is 8 bits, as declared)."""
    sw = SumSwitch(4, k=8, pool_size=16)
    regs = dict(zip(("bitmap", "use", "counter", "exponent", "overflow", "values"),
                    (sw.bitmap, sw.use, sw.counter, sw.exponent, sw.overflow, sw.values)))
    declared = {r.name: r for st in streaming_sum(8, 16).stages for r in st.registers}
    assert set(regs) == set(declared)
    for name, arr in regs.items():
        reg = declared[name]
        assert arr.dtype == reg.dtype and arr.dtype.itemsize * 8 == reg.width, name
        assert arr.size == reg.depth * reg.lanes, name
    assert sw.exponent.dtype == np.int8
    # a native exponent the 8-bit register cannot hold is malformed, not wrapped
    h = {"job": np.zeros(2, np.int32), "worker": np.array([0, 1], np.int32),
         "shadow": np.zeros(2, np.int32), "slot": np.zeros(2, np.int32),
         "flags": np.zeros(2, np.int32), "exponent": np.array([300, 3], np.int32),
         "count": np.full(2, 8, np.int32)}
    before = [a.copy() for a in regs.values()]
    sw.process_native(h, np.ones((2, 8), np.int32), np.array([0, 1], np.int32))
    assert sw.drop_counts()["malformed"] == 1
    assert int(sw.exponent.max()) == 3
    assert any((a != b).any() for a, b in zip(regs.values(), before))  # the valid one counted


def _exact_or_fallback(X, out, stats, k):
    """Values farther from the float64 sum than p half-units of their chunk's scale,
    outside the chunks that went to the counted fallback."""
    p, n = X.shape
    exact = X.sum(axis=0, dtype=np.float64)
    scale = np.repeat(scale_of(chunk_exponents(X, k).max(axis=0), p), k)[:n]
    return int((np.abs(out - exact) > p * 0.5 / scale * (1 + 1e-9)).sum())


@pytest.mark.parametrize("engine", ["compiled", "wire"])
def test_packets_delayed_across_rounds_windows_and_steps_never_enter_a_later_sum(engine):
    """Links that hold packets back for up to 6 rounds: late packets of earlier
    windows and steps reach the switch while later uses of their slots fill, late
    results reach workers waiting for another use. The switch drops the stale packets
    (counted), the workers drop the stale results (counted); every sum stays exact."""
    rng = np.random.default_rng(21)
    p, k = 5, 4
    link = LinkModel(loss=0.05, duplicate=0.1, delay=0.3, max_delay=6)
    ar = SwitchAllreduce(p, k, pool_size=4, up=link, down=link, seed=3,
                         wire=engine == "wire")
    stale_results = late = 0
    for n in (40, 17, 64, 40):
        X = (rng.normal(size=(p, n)) * rng.uniform(0.1, 10)).astype(np.float32)
        out, stats = ar.allreduce(X)
        assert _exact_or_fallback(X, out, stats, k) == 0
        assert stats.fallback_chunks["overflow"] == 0
        stale_results += stats.stale_results
        late += stats.late_packets
    assert late > 50 and stale_results > 0
    assert ar.switch.drop_counts()["stale"] > 0  # late copies of earlier uses


def test_delay_is_bit_for_bit_the_same_in_both_engines():
    """The compiled engine's hold buffers and the wire engine's held wire packets
    deliver the same packets in the same order: same sums, same counters."""
    rng = np.random.default_rng(22)
    p, k = 4, 8
    link = LinkModel(loss=0.1, duplicate=0.1, reorder=2, delay=0.25, max_delay=4)
    engines = [SwitchAllreduce(p, k, pool_size=3, up=link, down=link, seed=9, wire=w)
               for w in (False, True)]
    for n in (100, 37, 100):
        X = rng.normal(size=(p, n)).astype(np.float32)
        (a, sa), (b, sb) = (e.allreduce(X) for e in engines)
        assert np.array_equal(a, b)
        da, db = sa.as_dict(), sb.as_dict()
        for key in ("rounds", "packets_up", "packets_down", "late_packets",
                    "stale_results", "results_lost", "duplicate_results",
                    "fallback_chunks", "switch_drops"):
            assert da[key] == db[key], key


def test_a_link_that_delays_needs_bounded_delay():
    with pytest.raises(ValueError, match="max_delay"):
        LinkModel(delay=0.1)
    with pytest.raises(ValueError, match="max_delay"):
        LinkModel(delay=0.1, max_delay=10**6)
    with pytest.raises(ValueError, match="delay"):
        LinkModel(delay=1.5, max_delay=2)
