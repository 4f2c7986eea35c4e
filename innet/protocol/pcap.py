"""pcap export/import of aggregation packets (open them in Wireshark with
``tools/innet.lua``).

Each packet is framed as Ethernet/IPv4/UDP on port 0xBEE0 + job, in its real
direction: a packet to the switch goes from worker w (10.0.0.<w+1>, MAC
02:00:00:00:00:<w+1>) to the switch (10.0.0.254, 02:00:00:00:00:fe); a RESULT packet
goes from the switch to worker w. A header-only packet (the exponent preamble, count 0)
is written without values. Timestamps are the caller's (real ones from a socket) or,
by default, modelled: each frame follows the previous one after its serialisation at
``gbps``."""

from __future__ import annotations

import numpy as np
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.utils import rdpcap, wrpcap

from innet.protocol.header import HEADER_BYTES, PORT_MIN, InnetAgg, flag, packet_dtype

SWITCH_IP, SWITCH_MAC = "10.0.0.254", "02:00:00:00:00:fe"


def host_of(worker: int) -> tuple[str, str]:
    """(IP, MAC) of worker ``worker``'s host in a capture."""
    return f"10.0.0.{worker + 1}", f"02:00:00:00:00:{worker + 1:02x}"


def to_scapy(packets: np.ndarray, times: np.ndarray | None = None,
             gbps: float = 100.0, hosts: np.ndarray | None = None) -> list:
    """Scapy frames of wire-format packets; ``hosts[i]`` is the worker packet i came
    from or goes to (default: its worker field — a multicast result reaches every
    worker with the worker field of the packet that completed it)."""
    k = packets.dtype["values"].shape[0]
    if packets.dtype != packet_dtype(k):  # e.g. canonicalised to native byte order
        packets = packets.astype(packet_dtype(k))
    frames, clock = [], 0.0
    for i, rec in enumerate(packets):
        raw = rec.tobytes()
        if int(rec["count"]) == 0:
            raw = raw[:HEADER_BYTES]
        ip, mac = host_of(int(rec["worker"] if hosts is None else hosts[i]))
        port = PORT_MIN + int(rec["job"]) % 16
        if int(rec["flags"]) & flag("RESULT"):
            link = Ether(src=SWITCH_MAC, dst=mac) / IP(src=SWITCH_IP, dst=ip)
        else:
            link = Ether(src=mac, dst=SWITCH_MAC) / IP(src=ip, dst=SWITCH_IP)
        frame = link / UDP(sport=port, dport=port) / InnetAgg(raw)
        if times is None:
            clock += len(frame) * 8 / (gbps * 1e9)
            frame.time = clock
        else:
            frame.time = float(times[i])
        frames.append(frame)
    return frames


def write_pcap(path: str, packets: np.ndarray, times: np.ndarray | None = None,
               hosts: np.ndarray | None = None) -> None:
    """Write wire-format packets (structured array) to a pcap file."""
    wrpcap(path, to_scapy(packets, times, hosts=hosts), nano=True)  # ns: frames are ns apart


def read_pcap(path: str, k: int) -> np.ndarray:
    """Read the aggregation packets of a pcap file back into a structured array
    (header-only packets come back with zero values)."""
    size = packet_dtype(k).itemsize
    rows = []
    for pkt in rdpcap(path):
        if InnetAgg in pkt:
            raw = bytes(pkt[InnetAgg])
            rows.append(raw + bytes(size - len(raw)) if len(raw) < size else raw[:size])
    return np.frombuffer(b"".join(rows), dtype=packet_dtype(k)).copy()
