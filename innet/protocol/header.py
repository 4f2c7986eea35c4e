"""Aggregation packet header, after UDP on ports 0xBEE0–0xBEEF (SwitchML's range,
REFERENCE §4.1).

    0       job             u8    job id (selects the slot pool)
    1       worker          u8    worker id, 0..31 (one bit of the 32-bit bitmap)
    2..5    step            u32   training step
    6..9    packet_id       u32   chunk number within the step (offset = id·k)
    10..11  pool            u16   bit 15: shadow set; bits 0..14: slot (pool index)
    12      flags           u8    FIRST, LAST, RETRANSMIT, RESULT, OVERFLOW, FALLBACK, PHASE
    13      exponent        i8    block exponent (2^e bounds |x|), maxed by the switch
    14..15  count           u16   number of int32 values that follow
    16..    values          i32[count], big-endian

All multi-byte fields are big-endian (network order). ``packet_dtype(k)`` is the numpy
record of one packet carrying k values; tests check it byte-for-byte against scapy.
"""

from __future__ import annotations

import numpy as np
from scapy.fields import (
    BitField,
    ByteField,
    FieldLenField,
    FieldListField,
    FlagsField,
    IntField,
    SignedByteField,
    SignedIntField,
)
from scapy.layers.inet import UDP
from scapy.packet import Packet, bind_layers

PORT_MIN, PORT_MAX = 0xBEE0, 0xBEEF
FLAGS = ("FIRST", "LAST", "RETRANSMIT", "RESULT", "OVERFLOW", "FALLBACK", "PHASE", "SPARE")
HEADER_BYTES = 16


def flag(*names: str) -> int:
    """Bit mask of the named flags, e.g. ``flag('RESULT', 'OVERFLOW')``."""
    return sum(1 << FLAGS.index(n) for n in names)


class InnetAgg(Packet):
    """The aggregation header and its int32 payload (scapy layer)."""

    name = "InnetAgg"
    fields_desc = [
        ByteField("job", 0),
        ByteField("worker", 0),
        IntField("step", 0),
        IntField("packet_id", 0),
        BitField("shadow", 0, 1),
        BitField("slot", 0, 15),
        FlagsField("flags", 0, 8, list(FLAGS)),
        SignedByteField("exponent", 0),
        FieldLenField("count", None, count_of="values", fmt="!H"),
        FieldListField("values", [], SignedIntField("", 0), count_from=lambda pkt: pkt.count,
                       max_count=65535),
    ]


for _port in range(PORT_MIN, PORT_MAX + 1):
    bind_layers(UDP, InnetAgg, dport=_port)


def packet_dtype(k: int) -> np.dtype:
    """numpy record of one packet with k values, in wire byte order (packed)."""
    return np.dtype(
        [
            ("job", "u1"),
            ("worker", "u1"),
            ("step", ">u4"),
            ("packet_id", ">u4"),
            ("pool", ">u2"),
            ("flags", "u1"),
            ("exponent", "i1"),
            ("count", ">u2"),
            ("values", ">i4", (k,)),
        ]
    )


def encode(header: dict[str, np.ndarray], values: np.ndarray) -> np.ndarray:
    """Packets in wire format from native arrays. ``header`` holds job, worker, step,
    packet_id, shadow, slot, flags, exponent (each shape (N,)); values is (N, k)."""
    N, k = values.shape
    out = np.empty(N, dtype=packet_dtype(k))
    for name in ("job", "worker", "step", "packet_id", "flags", "exponent"):
        out[name] = header[name]
    out["pool"] = (np.asarray(header["shadow"], np.uint16) << 15) | np.asarray(
        header["slot"], np.uint16
    )
    out["count"] = header.get("count", k)
    out["values"] = values
    return out


def decode(packets: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Native header arrays and (N, k) int32 values from wire-format packets."""
    header = {
        name: packets[name].astype(dtype)
        for name, dtype in (
            ("job", np.int32),
            ("worker", np.int32),
            ("step", np.int64),
            ("packet_id", np.int64),
            ("flags", np.int32),
            ("exponent", np.int32),
            ("count", np.int32),
        )
    }
    pool = packets["pool"].astype(np.int32)
    header["shadow"] = pool >> 15
    header["slot"] = pool & 0x7FFF
    return header, packets["values"].astype(np.int32)
