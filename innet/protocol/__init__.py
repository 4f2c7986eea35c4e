"""The innet wire format: one declaration (``header.FIELDS``) gives the scapy layer
(specification, pretty-printer, pcap) and the numpy dtype of the hot path."""

from innet.protocol.header import (
    FLAGS,
    HEADER_BYTES,
    PORT_MAX,
    PORT_MIN,
    InnetAgg,
    decode,
    edge_flags,
    encode,
    flag,
    packet_dtype,
)

__all__ = [
    "FLAGS",
    "HEADER_BYTES",
    "PORT_MAX",
    "PORT_MIN",
    "InnetAgg",
    "decode",
    "edge_flags",
    "encode",
    "flag",
    "packet_dtype",
]
