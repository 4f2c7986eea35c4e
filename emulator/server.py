"""The switch emulator as a UDP server (``innet switch serve``): real packets in, the
same compiled program out.

The data socket receives innet packets in batches (``recvmmsg`` into a preallocated
ring, :class:`innet.protocol.udp.BatchSocket`); each batch runs through the job's
:class:`emulator.switch.SumSwitch` — the kernel the in-process engines use — and the
answers go back as RESULT packets with ``sendmmsg``: a completed slot to every worker
of the job (unicast to each: the emulated multicast), a kept result to the worker that
asked. No Python runs per packet beyond the system calls.

Ingress identity: the control plane leases a job with the workers' addresses; a
packet's source address is its ingress port (worker i's address is port i), so a
packet claiming worker i from another address is dropped as ``wrong_ingress_port``.

Emulated links: per worker, an up and a down :class:`emulator.network.Link` (loss,
Gilbert–Elliott, duplication, reordering, delay), applied to each batch at ingress
and to the answers at egress, seeded, so a run's emulated fate is reproducible. A link
that delays holds a packet back for 1 … ``max_delay`` of its own batches (the packets
it carries later) and delivers it first when due (``late_packets``; at most
``HOLD_CAP`` held per link, more are lost as ``hold_full``). Packets the kernel dropped
for want of socket buffer are counted apart (``kernel_drops``).

Control channel: JSON datagrams on a second UDP socket, one request, one answer:
``{"op": "lease", "p", "k", "pool", "job", "workers": [[host, port], …], "up": {link
model}, "down": {…}, "seed"}``, ``{"op": "status"}`` (counters), ``{"op": "release"}``
and ``{"op": "shutdown"}``.
"""

from __future__ import annotations

import json
import select
import socket
import time
from dataclasses import asdict

import numpy as np

from emulator.network import Link, LinkModel
from emulator.switch import DROP_REASONS, MULTICAST, SumSwitch
from innet.protocol import decode, encode, flag, packet_dtype
from innet.protocol.udp import BatchSocket, address_key

F_RESULT, F_OVERFLOW, F_PHASE = flag("RESULT"), flag("OVERFLOW"), flag("PHASE")
F_EDGES = flag("FIRST", "LAST")
HOLD_CAP = 4096  #: packets one delaying link can hold back


class Job:
    """A leased job: its switch, the workers' address keys and emulated links."""

    def __init__(self, p: int, k: int, pool: int, job: int, workers: list, up: dict,
                 down: dict, seed: int):
        self.switch = SumSwitch(p, k, pool, job)
        self.p, self.k, self.job = p, k, job
        self.keys = np.array([address_key(h, port) for h, port in workers], np.int64)
        if len(self.keys) != p or len(set(self.keys.tolist())) != p:
            raise ValueError(f"need {p} distinct worker addresses, got {workers}")
        self.order = np.argsort(self.keys)
        self.sorted = self.keys[self.order]
        up_model, down_model = LinkModel(**(up or {})), LinkModel(**(down or {}))
        self.up = [Link(up_model, seed * 1_000_003 + 20_000 + i) for i in range(p)]
        self.down = [Link(down_model, seed * 1_000_003 + 21_000 + i) for i in range(p)]
        self.lossless = up_model.lossless and down_model.lossless
        #: what the links hold back for later batches (delay > 0): per direction and
        #: link, the held wire packets and the link batch each is due in
        self.dtype = packet_dtype(k)
        self.held = [[(np.zeros(0, self.dtype), np.zeros(0, np.int64)) for _ in range(p)]
                     for _ in range(2)]
        self.counters = {"packets_in": 0, "emulated_lost_up": 0, "emulated_lost_down": 0,
                         "results_sent": 0, "batches": 0, "unknown_source": 0,
                         "late_packets": 0, "hold_full": 0,
                         "first_batch_s": None, "last_batch_s": None}

    def ingress(self, keys: np.ndarray) -> np.ndarray:
        """The ingress port of each source address (−1: not a worker of this job)."""
        pos = np.searchsorted(self.sorted, keys)
        pos = np.minimum(pos, len(self.sorted) - 1)
        hit = self.sorted[pos] == keys
        return np.where(hit, self.order[pos], -1).astype(np.int32)

    def carry(self, direction: int, packets: np.ndarray, owner: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, int]:
        """Wire packets through the emulated links of ``direction`` (0 up, 1 down;
        owner[i] the link of packet i, −1: none): a link delivers its held packets that
        are due, then this batch's survivors; those it delays are held for 1 …
        max_delay of its batches (at most HOLD_CAP per link: more are lost,
        ``hold_full``). Returns (what arrives, interleaved link by link; each one's
        link; packets lost)."""
        links = self.up if direction == 0 else self.down
        none = owner < 0
        parts, owners, ranks = [packets[none]], [owner[none]], [np.arange(int(none.sum()))]
        lost = 0
        for w in range(self.p):
            mine = np.flatnonzero(owner == w)
            if len(mine) == 0:  # a link's batch is a batch of its own packets
                continue
            held, due = self.held[direction][w]
            link = links[w]
            ready = due <= link.batches
            now, late, when = link.transmit_late(len(mine))
            lost += len(mine) - len(np.unique(np.concatenate([now, late])))
            keep = np.concatenate([held[~ready], packets[mine[late]]]).astype(self.dtype)
            keep_due = np.concatenate([due[~ready], when])
            if len(keep) > HOLD_CAP:
                self.counters["hold_full"] += len(keep) - HOLD_CAP
                keep, keep_due = keep[:HOLD_CAP], keep_due[:HOLD_CAP]
            self.held[direction][w] = (keep, keep_due)
            self.counters["late_packets"] += len(late)
            got = np.concatenate([held[ready], packets[mine[now]]]).astype(self.dtype)
            parts.append(got)
            owners.append(np.full(len(got), w, owner.dtype))
            ranks.append(np.arange(len(got)))
        order = np.argsort(np.concatenate(ranks), kind="stable")
        return (np.concatenate(parts).astype(self.dtype)[order],
                np.concatenate(owners)[order], lost)


class SwitchServer:
    """The data and control sockets and at most one leased job."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, control_port: int = 0,
                 k: int = 64, batch: int = 1024, capture: int = 0):
        self.k = k
        #: the first ``capture`` datagrams in and out, with real timestamps and the
        #: worker each came from or went to (:meth:`write_capture` makes a pcap of them)
        self.capture_left = capture
        self.captured: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.data = BatchSocket(k, host, port, batch)
        self.control = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.control.bind((host, control_port))
        self.control.setblocking(False)
        self.job: Job | None = None
        self.running = True
        self._warm_up()
        self.unleased_drops = 0
        self.started = time.time()

    def _warm_up(self) -> None:
        """Compile (or load from Numba's cache) the switch kernels now: the first batch
        of a job must not wait seconds for them while the workers' timers run out."""
        sw = SumSwitch(1, self.k, 1)
        packets = encode({"job": [0], "worker": [0], "step": [0], "packet_id": [0],
                          "shadow": [0], "slot": [0], "flags": [0], "exponent": [0]},
                         np.zeros((1, self.k), np.int32))
        sw.process(packets, np.zeros(1, np.int32))

    @property
    def address(self) -> tuple[str, int]:
        return self.data.host, self.data.port

    @property
    def control_address(self) -> tuple[str, int]:
        return self.control.getsockname()

    def close(self) -> None:
        self.data.close()
        self.control.close()

    # -- the data path -----------------------------------------------------------------
    def serve_batch(self) -> int:
        """Receive one batch, run it through the job's switch, send the answers.
        Returns the datagrams received."""
        frames, keys, bad = self.data.recv()
        n = len(frames) + bad
        if n == 0:
            return 0
        job = self.job
        if job is None:
            self.unleased_drops += n
            return n
        sw = job.switch
        now = time.perf_counter()
        if job.counters["first_batch_s"] is None:
            job.counters["first_batch_s"] = now
        job.counters["last_batch_s"] = now
        sw.drops[0] += bad  # frames of another length: malformed
        sw.packets_in += bad
        ingress = job.ingress(keys)
        job.counters["unknown_source"] += int((ingress < 0).sum())
        job.counters["batches"] += 1
        if job.lossless:  # (no emulated link: every frame arrives, in order)
            packets, port = frames, ingress
        else:
            packets, port, lost = job.carry(0, frames, ingress)
            job.counters["emulated_lost_up"] += lost
        job.counters["packets_in"] += len(packets)
        if self.capture_left > 0:
            self._capture(packets, port)
        h, values = decode(packets)  # once: the switch's input and the answers' fields
        res = sw.process_native(h, values, port)
        if len(res) == 0:
            return n
        echoed = h["flags"][res.packet]  # a result echoes its packet's PHASE, FIRST, LAST
        phase = echoed & F_PHASE
        out = encode({"job": np.full(len(res), job.job), "worker": res.worker,
                      "step": h["step"][res.packet], "packet_id": h["packet_id"][res.packet],
                      "shadow": res.shadow, "slot": res.slot,
                      "flags": F_RESULT | np.where(res.overflow != 0, F_OVERFLOW, 0)
                      | (echoed & (F_PHASE | F_EDGES)),
                      "count": np.where(phase != 0, 0, job.k),
                      "exponent": res.exponent}, res.values)
        # destinations: a completed slot to every worker, a kept result to its asker
        multi = res.kind == MULTICAST
        rows = np.concatenate([np.repeat(np.flatnonzero(multi), job.p),
                               np.flatnonzero(~multi)])
        dest_w = np.concatenate([np.tile(np.arange(job.p), int(multi.sum())),
                                 res.worker[~multi].astype(np.int64)])
        order = np.argsort(rows, kind="stable")  # in the order the switch answered
        rows, dest_w = rows[order], dest_w[order]
        if job.lossless:
            job.counters["results_sent"] += self.data.send(out, job.keys[dest_w], rows)
            if self.capture_left > 0:
                self._capture(out[rows], dest_w)
            return n
        sent, to, lost = job.carry(1, out[rows], dest_w)
        job.counters["emulated_lost_down"] += lost
        job.counters["results_sent"] += self.data.send(sent, job.keys[to])
        if self.capture_left > 0:
            self._capture(sent, to)
        return n

    def _capture(self, packets: np.ndarray, workers: np.ndarray) -> None:
        take = min(self.capture_left, len(packets))
        now = time.time()  # one receive (or send) call: its frames 1 ns apart, in order
        self.captured.append((packets[:take].copy(), np.asarray(workers[:take]).copy(),
                              now + 1e-9 * np.arange(take)))
        self.capture_left -= take

    def write_capture(self, path: str) -> int:
        """Write the captured datagrams to a pcap (see :mod:`innet.protocol.pcap`);
        returns how many."""
        from innet.protocol.pcap import write_pcap

        if not self.captured:
            packets, hosts, times = np.zeros(0, packet_dtype(self.k)), np.zeros(0), np.zeros(0)
        else:
            packets = np.concatenate([c[0] for c in self.captured]).astype(packet_dtype(self.k))
            hosts = np.concatenate([c[1] for c in self.captured])
            times = np.concatenate([c[2] for c in self.captured])
        write_pcap(path, packets, times, hosts=hosts)
        return len(packets)

    # -- the control path --------------------------------------------------------------
    def handle_control(self) -> None:
        try:
            raw, peer = self.control.recvfrom(65536)
        except BlockingIOError:
            return
        try:
            request = json.loads(raw)
            answer = self._control(request)
        except Exception as err:  # a bad request gets an answer, never a dead server
            answer = {"ok": False, "error": f"{type(err).__name__}: {err}"}
        self.control.sendto(json.dumps(answer).encode(), peer)

    def _control(self, r: dict) -> dict:
        op = r.get("op")
        if op == "lease":
            k = int(r.get("k", self.k))
            if k != self.k:
                raise ValueError(f"this server carries packets of k={self.k}, not {k}")
            self.job = Job(int(r["p"]), k, int(r.get("pool", 512)), int(r.get("job", 0)),
                           r["workers"], r.get("up"), r.get("down"), int(r.get("seed", 0)))
            return {"ok": True, "data": list(self.address)}
        if op == "status":
            return {"ok": True, **self.status()}
        if op == "release":
            self.job = None
            return {"ok": True}
        if op == "shutdown":
            self.running = False
            return {"ok": True}
        raise ValueError(f"unknown op {op!r} (lease, status, release, shutdown)")

    def status(self) -> dict:
        out = {"data": list(self.address), "uptime_s": time.time() - self.started,
               "received": self.data.received, "sent": self.data.sent,
               "kernel_drops": self.data.kernel_drops(), "unleased_drops": self.unleased_drops,
               "job": None}
        if self.job is not None:
            j = self.job
            out["job"] = {"p": j.p, "k": j.k, "pool": j.switch.pool_size, "job": j.job,
                          "drops": j.switch.drop_counts(), **j.counters,
                          "up": asdict(j.up[0].model), "down": asdict(j.down[0].model)}
        return out

    def serve_forever(self, idle_timeout: float | None = None) -> None:
        """Until a shutdown request (or ``idle_timeout`` seconds without a datagram)."""
        last = time.monotonic()
        while self.running:
            ready = select.select([self.data.fd, self.control], [], [], 0.05)[0]
            if not ready:
                if idle_timeout is not None and time.monotonic() - last > idle_timeout:
                    return
                continue
            last = time.monotonic()
            if self.control in ready:
                self.handle_control()
            if self.data.fd in ready:
                while self.serve_batch() == self.data.batch:
                    pass  # drain what is queued before looking at the control socket


def request(control: tuple[str, int], message: dict, timeout: float = 2.0,
            retries: int = 3) -> dict:
    """One control request to a switch server (retried: the channel is UDP)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        for attempt in range(retries):
            s.sendto(json.dumps(message).encode(), tuple(control))
            try:
                raw, _ = s.recvfrom(65536)
                answer = json.loads(raw)
                if not answer.get("ok"):
                    raise RuntimeError(f"switch server: {answer.get('error')}")
                return answer
            except (TimeoutError, ConnectionRefusedError):
                if attempt == retries - 1:
                    raise TimeoutError(f"no answer from the switch server at {control}") \
                        from None
    raise AssertionError("unreachable")


__all__ = ["DROP_REASONS", "Job", "SwitchServer", "request"]
