"""innet packets across a real veth link between two network namespaces, and (where the
kernel has ``sch_netem``) through ``tc netem`` loss: configured vs observed loss.

Needs root and iproute2; each test skips with the reason where that is missing. The
namespaces and the veth pair are removed whatever happens.
"""

import os
import shutil
import subprocess
import sys
import uuid
from contextlib import contextmanager

import pytest

ENV = {**os.environ, "NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
K = 64
SWITCH, WORKER = "10.77.0.1", "10.77.0.2"

RECEIVER = """
import json, sys, time
from innet.protocol.udp import BatchSocket
sock = BatchSocket({k}, "{host}", 0)
print(sock.port, flush=True)
got, last = 0, time.monotonic()
while time.monotonic() - last < 1.0:
    if sock.wait(0.1):
        frames, keys, bad = sock.recv()
        got += len(frames)
        last = time.monotonic()
print(json.dumps({{"received": got, "kernel_drops": sock.kernel_drops()}}), flush=True)
"""

SENDER = """
import sys, time
import numpy as np
from innet.protocol import encode
from innet.protocol.udp import BatchSocket, address_key
n, port = int(sys.argv[1]), int(sys.argv[2])
sock = BatchSocket({k}, "{host}", 0)
packets = encode({{"job": np.zeros(n), "worker": np.zeros(n), "step": np.zeros(n),
                  "packet_id": np.arange(n) % 32768, "shadow": np.zeros(n),
                  "slot": np.arange(n) % 512, "flags": np.zeros(n), "exponent": np.zeros(n),
                  "count": np.full(n, {k})}}, np.ones((n, {k}), np.int32))
dest = np.full(n, address_key("{peer}", port))
for lo in range(0, n, 256):  # paced: the receiver's socket buffer must not overflow
    sock.send(packets[lo:lo + 256], dest[lo:lo + 256])
    time.sleep(0.002)
"""


def _run(*cmd, check=True):
    return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=30)


@contextmanager
def _namespaces():
    """Two namespaces joined by a veth pair: the switch's side and the worker's."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    if shutil.which("ip") is None:
        pytest.skip("iproute2 (ip) is not installed")
    tag = uuid.uuid4().hex[:6]
    ns_s, ns_w = f"innet_s{tag}", f"innet_w{tag}"
    try:
        try:
            _run("ip", "netns", "add", ns_s)
            _run("ip", "netns", "add", ns_w)
            _run("ip", "link", "add", f"vs{tag}", "type", "veth", "peer", "name", f"vw{tag}")
        except subprocess.CalledProcessError as err:
            pytest.skip(f"cannot make namespaces and veth here: {err.stderr.strip()}")
        _run("ip", "link", "set", f"vs{tag}", "netns", ns_s)
        _run("ip", "link", "set", f"vw{tag}", "netns", ns_w)
        for ns, dev, ip in ((ns_s, f"vs{tag}", SWITCH), (ns_w, f"vw{tag}", WORKER)):
            _run("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
            _run("ip", "-n", ns, "link", "set", dev, "up")
            _run("ip", "-n", ns, "link", "set", "lo", "up")
        yield ns_s, ns_w, f"vw{tag}"
    finally:
        for ns in (ns_s, ns_w):  # deleting a namespace deletes its end of the veth
            _run("ip", "netns", "del", ns, check=False)


def _send_across(ns_s: str, ns_w: str, n: int) -> dict:
    """n innet packets from the worker's namespace to a receiver in the switch's."""
    import json

    receiver = subprocess.Popen(
        ["ip", "netns", "exec", ns_s, sys.executable, "-c", RECEIVER.format(k=K, host=SWITCH)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        port = int(receiver.stdout.readline())
        _run("ip", "netns", "exec", ns_w, sys.executable, "-c",
             SENDER.format(k=K, host=WORKER, peer=SWITCH), str(n), str(port))
        out, err = receiver.communicate(timeout=60)
        assert receiver.returncode == 0, err
        return json.loads(out.strip().splitlines()[-1])
    finally:
        if receiver.poll() is None:
            receiver.kill()
            receiver.wait()


def test_packets_cross_a_veth_link_between_namespaces():
    """No loss configured: every packet arrives (the plumbing the netem test uses)."""
    with _namespaces() as (ns_s, ns_w, _):
        got = _send_across(ns_s, ns_w, 5000)
    assert got["received"] + got["kernel_drops"] == 5000
    assert got["received"] >= 4990


def test_netem_loss_configured_vs_observed():
    """tc netem drops 10 % on the worker's egress: the observed loss of 20 000 packets
    lies within 5 binomial sd of it (socket-buffer drops counted apart)."""
    with _namespaces() as (ns_s, ns_w, dev):
        added = _run("ip", "netns", "exec", ns_w, "tc", "qdisc", "add", "dev", dev, "root",
                     "netem", "loss", "10%", check=False)
        if added.returncode != 0:
            pytest.skip(f"tc netem unavailable (the kernel lacks sch_netem): "
                        f"{added.stderr.strip()}")
        n = 20_000
        got = _send_across(ns_s, ns_w, n)
    lost = (n - got["received"] - got["kernel_drops"]) / n
    sd = (0.1 * 0.9 / n) ** 0.5
    assert abs(lost - 0.1) <= 5 * sd, (lost, got)
