"""pcap export/import of aggregation packets (open them in Wireshark).

Each packet is framed as Ethernet/IPv4/UDP with destination port 0xBEE0 + job and a
source address per worker (10.0.0.<worker+1>); the switch is 10.0.0.254."""

from __future__ import annotations

import numpy as np
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.utils import rdpcap, wrpcap

from innet.protocol.header import PORT_MIN, InnetAgg, packet_dtype


def to_scapy(packets: np.ndarray) -> list:
    k = packets.dtype["values"].shape[0]
    if packets.dtype != packet_dtype(k):  # e.g. canonicalised to native byte order
        packets = packets.astype(packet_dtype(k))
    frames = []
    for rec in packets:
        payload = InnetAgg(rec.tobytes())
        w = int(rec["worker"])
        frames.append(
            Ether() / IP(src=f"10.0.0.{w + 1}", dst="10.0.0.254")
            / UDP(sport=PORT_MIN, dport=PORT_MIN + int(rec["job"]) % 16) / payload
        )
    return frames


def write_pcap(path: str, packets: np.ndarray) -> None:
    """Write wire-format packets (structured array) to a pcap file."""
    wrpcap(path, to_scapy(packets))


def read_pcap(path: str, k: int) -> np.ndarray:
    """Read the aggregation packets of a pcap file back into a structured array."""
    layers = [pkt[InnetAgg] for pkt in rdpcap(path) if InnetAgg in pkt]
    data = b"".join(bytes(layer) for layer in layers)
    return np.frombuffer(data, dtype=packet_dtype(k)).copy()
