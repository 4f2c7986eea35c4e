"""Randomised exactness campaign: every sum the in-network path returns is exact (to
quantisation) or came from a counted fallback — never silently wrong.

    python benchmarks/exactness.py                  # 10 000 allreduce + 2 000 replay
                                                    # trials, 100 000 fuzzed packets
    python benchmarks/exactness.py --trials 500 --replay-trials 200 --seed 7

Two parts, each drawn from one seeded generator:

* **allreduce trials** (compiled engine): p in 2…32, k in {1, 4, 16, 64}, vectors of
  1…600 values, pools of 1…16 slots, 1…3 steps on one switch; per link Bernoulli or
  Gilbert–Elliott loss up to 30 %, duplication, bounded reordering, delay across
  rounds (late packets and late duplicates in later windows and steps), failed ports
  (whole batches lost) on random links or on every link of a direction at once (whole
  windows lost); 0…5 retries. A value farther
  from the float64 sum than p half-units of its chunk's scale is a silent wrong sum.
* **replay trials** (the switch program on wire packets): several uses of a small
  pool, the honest packets of each step shuffled together with stale copies of
  earlier steps' packets (late duplicates and replays) and with shadow-bit toggles;
  every multicast result must equal the exact sum of its use's contributions.

* **fuzzing** (the switch program on raw frames): 100 000 frames, each a packet with
  exactly one parser or access check broken (count, RESULT flag, job, worker, ingress
  port, slot), a frame of the wrong length, or random bytes; switches of random p, k,
  pool and job. No exception may escape; every broken packet is counted under its
  reason; a batch of only broken packets leaves every register unchanged.

The last line is JSON: ``allreduce_trials``, ``replay_trials``, ``silent_wrong``
(both parts), ``fallback_chunks``, ``stale_dropped``, ``duplicates_dropped``,
``late_packets``, ``stale_packets_dropped``, ``stale_results_dropped``,
``fuzzed_packets``, ``fuzz_exceptions``, ``fuzz_miscounted_batches``,
``fuzz_registers_changed_by_invalid``, seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

from emulator.network import LinkModel  # noqa: E402
from emulator.switch import MULTICAST, SumSwitch  # noqa: E402
from host.switch_allreduce import SwitchAllreduce  # noqa: E402
from innet.protocol import encode, flag, packet_dtype  # noqa: E402
from innet.quant import chunk_exponents, scale_of  # noqa: E402


def random_link(rng: np.random.Generator, batches: int, outage) -> LinkModel:
    """Loss (Bernoulli or bursty) up to 30 %, duplication, reordering, delay across
    rounds (up to 8 of the link's batches: late packets and late duplicates reach
    later windows and steps), and a failed port: this link's own, or the outage
    shared by every link of the direction."""
    burst = None
    loss = float(rng.choice([0.0, rng.uniform(0, 0.3)]))
    if rng.random() < 0.2:
        burst, loss = (rng.uniform(0, 0.2), rng.uniform(0.1, 0.6), 0.0,
                       rng.uniform(0.2, 0.9)), 0.0
    down = outage
    if down is None and rng.random() < 0.15:
        start = int(rng.integers(0, batches))
        down = (start, start + int(rng.integers(1, 4)))
    delay = float(rng.choice([0.0, 0.0, 0.05, 0.3]))  # late across rounds, windows, steps
    return LinkModel(loss=loss, burst=burst, duplicate=float(rng.choice([0.0, 0.05, 0.2])),
                     reorder=int(rng.choice([0, 0, 3, 10])), down_between=down,
                     delay=delay, max_delay=int(rng.integers(1, 9)) if delay else 0)


def allreduce_trial(rng: np.random.Generator) -> tuple[int, int]:
    """One random configuration; returns (silent wrong values, fallback chunks, late
    packets, stale results the workers dropped, stale packets the switch dropped)."""
    p = int(rng.integers(2, 33))
    k = int(rng.choice([1, 4, 16, 64]))
    n = int(rng.integers(1, 601))
    pool = int(rng.integers(1, 17))
    steps = int(rng.integers(1, 4))
    batches = steps * (2 + -(-n // k) // pool)

    def outage():  # every link of one direction down for a few batches (a switch port
        if rng.random() < 0.3:  # group, or the switch itself): whole windows lost
            start = int(rng.integers(0, batches))
            return (start, start + int(rng.integers(1, 3)))
        return None

    up_outage, down_outage = outage(), outage()
    up = [random_link(rng, batches, up_outage) for _ in range(p)]
    down = [random_link(rng, batches, down_outage) for _ in range(p)]
    ar = SwitchAllreduce(p, k, pool_size=pool, up=up, down=down,
                         seed=int(rng.integers(2**31)), max_retries=int(rng.integers(0, 6)))
    wrong = fallbacks = late = stale = 0
    for _ in range(steps):
        X = (rng.normal(size=(p, n)) * rng.uniform(1e-3, 1e3)).astype(np.float32)
        out, stats = ar.allreduce(X)
        exact = X.sum(axis=0, dtype=np.float64)
        scale = np.repeat(scale_of(chunk_exponents(X, k).max(axis=0), p), k)[:n]
        wrong += int((np.abs(out - exact) > p * 0.5 / scale * (1 + 1e-9)).sum())
        fallbacks += sum(stats.fallback_chunks.values())
        late += stats.late_packets
        stale += stats.stale_results
    return wrong, fallbacks, late, stale, ar.switch.drop_counts()["stale"]


def replay_trial(rng: np.random.Generator, k: int = 2) -> tuple[int, int, int]:
    """Several steps on a small pool with stale copies and toggles mixed in; returns
    (wrong multicast results, stale drops, duplicate drops)."""
    p = int(rng.integers(2, 9))
    pool = int(rng.integers(1, 4))
    sw = SumSwitch(p=p, k=k, pool_size=pool)
    shadow = np.zeros(pool, int)  # the set each slot's next use takes
    history: list[tuple[dict, np.ndarray]] = []  # every packet sent so far
    uses: dict[int, list] = {s: [] for s in range(pool)}  # exact sums of each slot's uses
    wrong = 0
    for step in range(int(rng.integers(2, 6))):
        honest = []
        for s in range(pool):
            for w in range(p):
                value = rng.integers(-1000, 1000, size=k)
                honest.append(({"worker": w, "step": step, "packet_id": s,
                                "shadow": int(shadow[s]), "slot": s}, value))
            uses[s].append(sum(v for (h, v) in honest[-p:]))
        extra = []
        for _ in range(int(rng.integers(0, 2 * p))):
            if history and rng.random() < 0.7:  # a stale copy of an earlier step
                extra.append(history[int(rng.integers(len(history)))])
            else:  # a toggle: an honest packet of this step sent to the other set
                h, v = honest[int(rng.integers(len(honest)))]
                extra.append(({**h, "shadow": 1 - h["shadow"]}, v))
        batch = honest + extra
        batch = [batch[i] for i in rng.permutation(len(batch))]
        fields = {name: np.array([h[name] for h, _ in batch])
                  for name in ("worker", "step", "packet_id", "shadow", "slot")}
        n = len(batch)
        header = {"job": np.zeros(n, int), "flags": np.zeros(n, int),
                  "exponent": np.zeros(n, int), **fields}
        packets = encode(header, np.array([v for _, v in batch], np.int32))
        res = sw.process(packets.astype(packet_dtype(k)), fields["worker"])
        current = set()
        for kind, s, v, values in zip(res.kind, res.slot, res.shadow, res.values):
            if kind != MULTICAST:
                continue
            s, v = int(s), int(v)
            # stale copies may complete an old use again (harmless: nobody waits for
            # it); any result must be the exact sum of some use of its slot
            if not any(np.array_equal(values, total) for total in uses[s]):
                wrong += 1
            if v == shadow[s] and np.array_equal(values, uses[s][-1]):
                current.add(s)
        wrong += pool - len(current)  # every honest packet arrived: each use completes
        shadow ^= 1
        history += honest
    counts = sw.drop_counts()
    return wrong, counts["stale"], counts["duplicate"]


#: the parser's checks in order, and how a fuzzer breaks each (field, bad value)
FUZZ_CASES = ("malformed_count", "malformed_result_flag", "unknown_job", "worker_out_of_range",
              "wrong_ingress_port", "slot_out_of_range", "frame_length", "random_frame")


def fuzz_batch(rng: np.random.Generator, sw: SumSwitch, n: int
               ) -> tuple[list[bytes], np.ndarray, dict[str, int]]:
    """n fuzzed frames for ``sw``: each is a well-formed packet with exactly one check
    broken (so its drop reason is known), a frame of the wrong length, or random bytes
    of the right length. Returns (frames, ingress ports, expected drops by reason; the
    random frames' reasons are not predicted)."""
    p, k, pool = sw.p, sw.k, sw.pool_size
    frames, ports = [], []
    expected = {name: 0 for name in ("malformed", "unknown_job", "worker_out_of_range",
                                     "wrong_ingress_port", "slot_out_of_range")}
    size = packet_dtype(k).itemsize
    for _ in range(n):
        case = FUZZ_CASES[int(rng.integers(len(FUZZ_CASES)))]
        w = int(rng.integers(p))
        h = {"job": sw.job, "worker": w, "step": int(rng.integers(2**32)),
             "packet_id": int(rng.integers(2**32)), "shadow": int(rng.integers(2)),
             "slot": int(rng.integers(pool)), "flags": 0,
             "exponent": int(rng.integers(-128, 128)), "count": k}
        port = w
        if case == "malformed_count":
            h["count"] = int(rng.choice([0, k - 1, k + 1, 65535])) if k > 1 else 0
            expected["malformed"] += 1
        elif case == "malformed_result_flag":
            h["flags"] = int(rng.integers(256)) | flag("RESULT")
            expected["malformed"] += 1
        elif case == "unknown_job":
            h["job"] = (sw.job + 1 + int(rng.integers(255))) % 256
            expected["unknown_job"] += 1
        elif case == "worker_out_of_range":
            h["worker"] = int(rng.integers(p, 256))
            port = int(rng.integers(0, 64))
            expected["worker_out_of_range"] += 1
        elif case == "wrong_ingress_port":
            port = (w + 1 + int(rng.integers(63))) % 64
            if port == w:
                port = w + 64
            expected["wrong_ingress_port"] += 1
        elif case == "slot_out_of_range":
            h["slot"] = int(rng.integers(pool, 2**15))
            expected["slot_out_of_range"] += 1
        if case == "frame_length":
            length = int(rng.integers(0, 2 * size))
            frames.append(rng.bytes(length if length != size else size + 1))
            expected["malformed"] += 1
        elif case == "random_frame":
            frames.append(rng.bytes(size))
        else:
            values = rng.integers(-(2**31), 2**31, size=(1, k)).astype(np.int32)
            frames.append(encode({key: np.array([v]) for key, v in h.items()},
                                 values).tobytes())
        ports.append(port)
    return frames, np.array(ports, dtype=np.int32), expected


def fuzz(rng: np.random.Generator, packets: int) -> dict[str, int]:
    """``packets`` fuzzed frames through the switch program in batches: no exception
    may escape, every invalid packet is dropped and counted under the reason it
    breaks, and batches of invalid packets leave every register as it was."""
    exceptions = miscounted = registers_changed = sent = 0
    while sent < packets:
        p = int(rng.integers(1, 33))
        k = int(rng.choice([1, 2, 8, 64]))
        sw = SumSwitch(p, k, int(rng.integers(1, 65)), job=int(rng.integers(256)))
        n = min(int(rng.integers(1, 400)), packets - sent)
        frames, ports, expected = fuzz_batch(rng, sw, n)
        before = [r.copy() for r in (sw.bitmap, sw.use, sw.counter, sw.exponent,
                                     sw.overflow, sw.values)]
        try:
            sw.process_bytes(frames, ports)
        except Exception:  # noqa: BLE001 - the point is that nothing escapes
            exceptions += 1
        drops = sw.drop_counts()
        if any(drops[name] < count for name, count in expected.items()):
            miscounted += 1
        if sum(expected.values()) == n:  # nothing valid in the batch, nor random
            after = (sw.bitmap, sw.use, sw.counter, sw.exponent, sw.overflow, sw.values)
            if any(not np.array_equal(a, b) for a, b in zip(before, after)):
                registers_changed += 1
            if sum(drops.values()) != n:
                miscounted += 1
        sent += n
    return {"fuzzed_packets": sent, "fuzz_exceptions": exceptions,
            "fuzz_miscounted_batches": miscounted,
            "fuzz_registers_changed_by_invalid": registers_changed}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=10_000)
    ap.add_argument("--replay-trials", type=int, default=2_000)
    ap.add_argument("--fuzz-packets", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    start = time.perf_counter()
    wrong = fallbacks = late = stale_results = stale_packets = 0
    for i in range(args.trials):
        w, f, lt, sr, sp = allreduce_trial(rng)
        wrong += w
        fallbacks += f
        late += lt
        stale_results += sr
        stale_packets += sp
        if (i + 1) % 2000 == 0:
            print(f"  {i + 1} allreduce trials: {wrong} silent wrong, {fallbacks} fallback "
                  f"chunks", flush=True)
    replay_wrong = stale = dups = 0
    for _ in range(args.replay_trials):
        w, s, d = replay_trial(rng)
        replay_wrong += w
        stale += s
        dups += d
    fuzzed = fuzz(rng, args.fuzz_packets)
    seconds = time.perf_counter() - start
    print(f"fuzz:      {fuzzed['fuzzed_packets']} packets, {fuzzed['fuzz_exceptions']} "
          f"exceptions, {fuzzed['fuzz_miscounted_batches']} batches with drops miscounted, "
          f"{fuzzed['fuzz_registers_changed_by_invalid']} register files changed by invalid "
          "packets")
    print(f"allreduce: {args.trials} trials, {wrong} silent wrong values, {fallbacks} "
          f"counted fallback chunks; {late} packets delayed across rounds, {stale_packets} "
          f"stale packets dropped by the switch, {stale_results} stale results by workers")
    print(f"replays:   {args.replay_trials} trials, {replay_wrong} wrong results, {stale} "
          f"stale and {dups} duplicate packets dropped")
    print(json.dumps({"allreduce_trials": args.trials, "replay_trials": args.replay_trials,
                      "silent_wrong": wrong + replay_wrong, "fallback_chunks": fallbacks,
                      "late_packets": late, "stale_packets_dropped": stale_packets,
                      "stale_results_dropped": stale_results,
                      "stale_dropped": stale, "duplicates_dropped": dups, **fuzzed,
                      "seconds": seconds}))


if __name__ == "__main__":
    main()
