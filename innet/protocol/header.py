"""Aggregation packet header, after UDP on ports 0xBEE0–0xBEEF (SwitchML's range,
REFERENCE §4.1).

:data:`FIELDS` is the one declaration of the header: the scapy layer
(:class:`InnetAgg`: specification, pretty-printer, pcap), the numpy record of the hot
path (:func:`packet_dtype`), :data:`HEADER_BYTES`, :func:`encode` / :func:`decode`
and the table below are all generated from it, so a field is named once. All
multi-byte fields are big-endian (network order); tests check the numpy record
byte-for-byte against scapy both ways.

"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scapy.fields import (
    BitField,
    ByteField,
    FieldLenField,
    FieldListField,
    FlagsField,
    IntField,
    ShortField,
    SignedByteField,
    SignedIntField,
)
from scapy.layers.inet import UDP
from scapy.packet import Packet, bind_layers

PORT_MIN, PORT_MAX = 0xBEE0, 0xBEEF
FLAGS = ("FIRST", "LAST", "RETRANSMIT", "RESULT", "OVERFLOW", "FALLBACK", "PHASE", "SPARE")


@dataclass(frozen=True)
class Field:
    """One header field: ``bits`` wide (8, 16 or 32), unsigned unless ``signed``;
    ``parts`` splits a word into bit fields (most significant first); ``flags`` names
    its bits; ``count_of`` makes it the length of the int32 payload."""

    name: str
    bits: int
    doc: str
    signed: bool = False
    parts: tuple[tuple[str, int], ...] = ()
    flags: tuple[str, ...] = ()
    count_of: str = ""

    @property
    def numpy(self) -> str:
        kind = "i" if self.signed else "u"
        return f"{'' if self.bits == 8 else '>'}{kind}{self.bits // 8}"


#: the header, in wire order
FIELDS = (
    Field("job", 8, "job id (selects the slot pool)"),
    Field("worker", 8, "worker id, 0..31 (one bit of the 32-bit bitmap)"),
    Field("step", 32, "training step"),
    Field("packet_id", 32, "chunk number within the step (offset = id·k)"),
    Field("pool", 16, "bit 15: shadow set; bits 0..14: slot (pool index)",
          parts=(("shadow", 1), ("slot", 15))),
    Field("flags", 8, " | ".join(FLAGS[:-1]), flags=FLAGS),
    Field("exponent", 8, "block exponent (2^e bounds |x|), maxed by the switch", signed=True),
    Field("count", 16, "number of int32 values that follow", count_of="values"),
)
#: the payload after the header: int32 values, big-endian
PAYLOAD = ("values", ">i4")
HEADER_BYTES = sum(f.bits for f in FIELDS) // 8
#: the native (host) fields encode() takes and decode() gives: parts replace their word
NATIVE = tuple(name for f in FIELDS for name in ([p for p, _ in f.parts] or [f.name]))


def part_bits(name: str) -> int:
    """Width in bits of header field (or bit-field part) ``name``."""
    for f in FIELDS:
        if f.name == name and not f.parts:
            return f.bits
        for part, width in f.parts:
            if part == name:
                return width
    raise KeyError(f"no header field {name!r}")


def flag(*names: str) -> int:
    """Bit mask of the named flags, e.g. ``flag('RESULT', 'OVERFLOW')``."""
    return sum(1 << FLAGS.index(n) for n in names)


def edge_flags(packet_id: np.ndarray, chunks: int, preamble: np.ndarray | bool = False
               ) -> np.ndarray:
    """FIRST on the packet of a stream's first chunk, LAST on its last chunk's (one
    packet may carry both); none on the exponent preamble's header-only packets."""
    pid = np.asarray(packet_id, np.int64)
    out = np.where(pid == 0, flag("FIRST"), 0) | np.where(pid == chunks - 1, flag("LAST"), 0)
    return np.where(preamble, 0, out)


def _scapy_fields(field: Field) -> list:
    if field.parts:
        return [BitField(name, 0, width) for name, width in field.parts]
    if field.flags:
        return [FlagsField(field.name, 0, field.bits, list(field.flags))]
    if field.count_of:
        return [FieldLenField(field.name, None, count_of=field.count_of,
                              fmt={8: "!B", 16: "!H", 32: "!I"}[field.bits])]
    kinds = {(8, False): ByteField, (8, True): SignedByteField, (16, False): ShortField,
             (32, False): IntField, (32, True): SignedIntField}
    return [kinds[(field.bits, field.signed)](field.name, 0)]


class InnetAgg(Packet):
    """The aggregation header and its int32 payload (scapy layer, from FIELDS)."""

    name = "InnetAgg"
    fields_desc = [f for field in FIELDS for f in _scapy_fields(field)] + [
        FieldListField(PAYLOAD[0], [], SignedIntField("", 0),
                       count_from=lambda pkt: pkt.count, max_count=65535)]


for _port in range(PORT_MIN, PORT_MAX + 1):
    bind_layers(UDP, InnetAgg, dport=_port)


def packet_dtype(k: int) -> np.dtype:
    """numpy record of one packet with k values, in wire byte order (packed)."""
    return np.dtype([(f.name, f.numpy) for f in FIELDS] + [(PAYLOAD[0], PAYLOAD[1], (k,))])


def encode(header: dict[str, np.ndarray], values: np.ndarray) -> np.ndarray:
    """Packets in wire format from native arrays. ``header`` holds every field of
    :data:`NATIVE` (each shape (N,); ``count`` defaults to k); values is (N, k)."""
    N, k = values.shape
    out = np.empty(N, dtype=packet_dtype(k))
    for field in FIELDS:
        if field.parts:
            word = np.zeros(N, dtype=np.uint64)
            shift = field.bits
            for name, width in field.parts:
                shift -= width
                part = np.asarray(header[name], dtype=np.uint64) & ((1 << width) - 1)
                word |= part << np.uint64(shift)
            out[field.name] = word
        elif field.count_of:
            out[field.name] = header.get(field.name, k)
        else:
            out[field.name] = header[field.name]
    out[PAYLOAD[0]] = values
    return out


def decode(packets: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Native header arrays (int32, or int64 for 32-bit unsigned fields) and the
    (N, k) int32 values of wire-format packets."""
    header = {}
    for field in FIELDS:
        native = np.int64 if field.bits == 32 and not field.signed else np.int32
        word = packets[field.name].astype(np.int64 if field.parts else native)
        if field.parts:
            shift = field.bits
            for name, width in field.parts:
                shift -= width
                header[name] = ((word >> shift) & ((1 << width) - 1)).astype(np.int32)
        else:
            header[field.name] = word
    return header, packets[PAYLOAD[0]].astype(np.int32)


def describe() -> str:
    """The header as a table (offset, field, type, meaning), from FIELDS."""
    rows, offset = [], 0
    for field in FIELDS:
        size = field.bits // 8
        where = f"{offset}" if size == 1 else f"{offset}..{offset + size - 1}"
        kind = f"{'i' if field.signed else 'u'}{field.bits}"
        rows.append(f"    {where:<8}{field.name:<16}{kind:<6}{field.doc}")
        offset += size
    rows.append(f"    {f'{offset}..':<8}{PAYLOAD[0]:<16}{'i32[count]':<12}big-endian")
    return "\n".join(rows)


__doc__ += describe() + "\n"


def wireshark_lua() -> str:
    """A Wireshark dissector for the header (Lua), generated from :data:`FIELDS`:
    ``innet pcap`` captures (or real traffic on UDP 0xBEE0–0xBEEF) show every field,
    the flags by name and the int32 values. Shipped as ``tools/innet.lua``; load it
    with ``wireshark -X lua_script:tools/innet.lua`` (or copy it to the plugins folder)."""
    types = {(8, False): "uint8", (8, True): "int8", (16, False): "uint16",
             (32, False): "uint32", (32, True): "int32"}
    lines = ["-- innet aggregation header: generated from innet.protocol.header.FIELDS",
             "-- (python -c 'from innet.protocol.header import wireshark_lua; "
             "print(wireshark_lua())'); do not edit by hand.",
             'local innet = Proto("innet", "innet aggregation")', "local f = innet.fields"]
    names = []
    for field in FIELDS:
        kind = types[(field.bits, field.signed)]
        if field.parts:
            shift = field.bits
            for part, width in field.parts:
                shift -= width
                mask = ((1 << width) - 1) << shift
                lines.append(f'f.{part} = ProtoField.{kind}("innet.{part}", "{part}", '
                             f'base.DEC, nil, 0x{mask:0{field.bits // 4}X})')
            names.append((field, [p for p, _ in field.parts]))
            continue
        lines.append(f'f.{field.name} = ProtoField.{kind}("innet.{field.name}", '
                     f'"{field.name}", base.{"HEX" if field.flags else "DEC"})')
        for bit, flag_name in enumerate(field.flags):
            lines.append(f'f.flag_{flag_name.lower()} = ProtoField.bool("innet.flags.'
                         f'{flag_name.lower()}", "{flag_name}", {field.bits}, nil, '
                         f'0x{1 << bit:02X})')
        names.append((field, [field.name]))
    lines.append('f.values = ProtoField.int32("innet.value", "value", base.DEC)')
    lines += ["function innet.dissector(buf, pinfo, tree)",
              f"  if buf:len() < {HEADER_BYTES} then return 0 end",
              '  pinfo.cols.protocol = "innet"',
              '  local t = tree:add(innet, buf(), "innet aggregation")', "  local o = 0"]
    offset, at = 0, {}
    for field, parts in names:
        size = field.bits // 8
        at[field.name] = (offset, size)
        offset += size
        if field.flags:  # the byte, with one line per named bit under it
            lines.append(f"  local ft = t:add(f.{field.name}, buf(o, {size}))")
            lines += [f"  ft:add(f.flag_{n.lower()}, buf(o, {size}))" for n in field.flags]
        else:
            lines += [f"  t:add(f.{part}, buf(o, {size}))" for part in parts]
        if field.count_of:
            lines.append(f"  local count = buf(o, {size}):uint()")
        lines.append(f"  o = o + {size}")
    lines += ["  local vt = t:add(innet, buf(o), string.format(\"%d int32 values\", count))",
              "  for i = 0, count - 1 do",
              "    if o + 4 > buf:len() then break end",
              "    vt:add(f.values, buf(o, 4))", "    o = o + 4", "  end",
              "  pinfo.cols.info = string.format(\"job %d worker %d step %d id %d\", "
              + ", ".join(f"buf({at[n][0]}, {at[n][1]}):uint()"
                          for n in ("job", "worker", "step", "packet_id")) + ")",
              "  return o", "end",
              'local udp = DissectorTable.get("udp.port")',
              f"for port = 0x{PORT_MIN:X}, 0x{PORT_MAX:X} do udp:add(port, innet) end", ""]
    return "\n".join(lines)
