"""The wire format: scapy layer and numpy dtype agree byte for byte, both ways."""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import IP, UDP

from innet.protocol import InnetAgg, decode, encode, flag, packet_dtype
from innet.protocol.pcap import read_pcap, write_pcap

headers = st.fixed_dictionaries({
    "job": st.integers(0, 255), "worker": st.integers(0, 255),
    "step": st.integers(0, 2**32 - 1), "packet_id": st.integers(0, 2**32 - 1),
    "shadow": st.integers(0, 1), "slot": st.integers(0, 2**15 - 1),
    "flags": st.integers(0, 255), "exponent": st.integers(-128, 127),
})


@given(h=headers, k=st.sampled_from([1, 64, 256]), seed=st.integers(0, 2**32 - 1))
def test_numpy_encoding_equals_scapy_both_ways(h, k, seed):
    values = np.random.default_rng(seed).integers(-(2**31), 2**31, size=k, dtype=np.int64)
    values = values.astype(np.int32)
    scapy_bytes = bytes(InnetAgg(**h, values=[int(v) for v in values]))
    arr = encode({key: np.array([v]) for key, v in h.items()}, values[None])
    assert arr.dtype.itemsize == 16 + 4 * k
    assert arr.tobytes() == scapy_bytes
    parsed = InnetAgg(scapy_bytes)
    dh, dv = decode(np.frombuffer(scapy_bytes, dtype=packet_dtype(k)))
    for key, value in h.items():
        assert getattr(parsed, key) == value == int(dh[key][0])
    assert parsed.count == k == int(dh["count"][0])
    assert list(parsed.values) == values.tolist() == dv[0].tolist()


def test_layer_binds_to_the_udp_port_range():
    pkt = IP(bytes(IP() / UDP(dport=0xBEE7) / InnetAgg(worker=2, values=[1, 2])))
    assert InnetAgg in pkt and pkt[InnetAgg].worker == 2
    assert flag("RESULT", "OVERFLOW") == 0b11000


def test_pcap_round_trip(tmp_path):
    k = 8
    h = {"job": np.array([1, 1]), "worker": np.array([0, 3]), "step": np.array([5, 5]),
         "packet_id": np.array([0, 1]), "shadow": np.array([0, 1]), "slot": np.array([0, 1]),
         "flags": np.array([0, flag("RETRANSMIT")]), "exponent": np.array([-2, 4])}
    packets = encode(h, np.arange(16, dtype=np.int32).reshape(2, k))
    write_pcap(str(tmp_path / "a.pcap"), packets)
    assert read_pcap(str(tmp_path / "a.pcap"), k).tobytes() == packets.tobytes()


def test_one_field_list_declares_the_header():
    """FIELDS is the only place a header field is named: scapy's layer, the numpy
    record and the sizes all come from it."""
    from innet.protocol import header

    scapy_names = [f.name for f in InnetAgg.fields_desc]
    declared = [n for f in header.FIELDS for n in ([p for p, _ in f.parts] or [f.name])]
    assert scapy_names == declared + ["values"]
    dtype = packet_dtype(3)
    assert list(dtype.names) == [f.name for f in header.FIELDS] + ["values"]
    assert dtype.itemsize == header.HEADER_BYTES + 12 == 16 + 12
    assert header.NATIVE == tuple(declared)
    from p4_models.switchml_sum import HEADER_BYTES

    assert HEADER_BYTES == header.HEADER_BYTES
    assert "packet_id" in header.__doc__ and "shadow set" in header.__doc__


def test_the_shipped_wireshark_dissector_is_generated_from_the_header():
    """tools/innet.lua is wireshark_lua()'s output (regenerate it when FIELDS change),
    names every field of FIELDS, and — where tshark is installed — dissects a pcap of
    real packets."""
    import shutil
    import subprocess
    from pathlib import Path

    import pytest

    from innet.protocol.header import FIELDS, wireshark_lua

    shipped = Path(__file__).resolve().parent.parent / "tools" / "innet.lua"
    assert shipped.read_text() == wireshark_lua()
    for field in FIELDS:
        for name in [p for p, _ in field.parts] or [field.name]:
            assert f'"innet.{name}"' in shipped.read_text()
    if shutil.which("tshark") is None:
        pytest.skip("tshark is not installed here: the dissector is checked as text only")
    import tempfile

    import numpy as np

    from innet.protocol import encode
    from innet.protocol.pcap import write_pcap

    pk = encode({"job": [1], "worker": [2], "step": [3], "packet_id": [4], "shadow": [1],
                 "slot": [5], "flags": [8], "exponent": [-3]}, np.arange(4, dtype=np.int32)[None])
    with tempfile.TemporaryDirectory() as tmp:
        write_pcap(f"{tmp}/x.pcap", pk)
        out = subprocess.run(["tshark", "-X", f"lua_script:{shipped}", "-r", f"{tmp}/x.pcap",
                              "-V"], capture_output=True, text=True, timeout=60).stdout
    assert "packet_id: 4" in out and "RESULT" in out


def test_pcap_frames_have_real_directions_hosts_and_header_only_preambles(tmp_path):
    """Packets to the switch go worker → switch, RESULT packets switch → worker, each
    host with its own IP and MAC; the exponent preamble's frames carry the header only;
    modelled timestamps increase."""
    import numpy as np
    from scapy.layers.inet import IP
    from scapy.layers.l2 import Ether
    from scapy.utils import rdpcap

    from host.switch_allreduce import SwitchAllreduce
    from innet.protocol import HEADER_BYTES, flag
    from innet.protocol.pcap import SWITCH_IP, SWITCH_MAC, host_of

    ar = SwitchAllreduce(3, 8, 4, wire=True, capture=10_000)
    ar.allreduce(np.random.default_rng(0).normal(size=(3, 50)).astype(np.float32))
    packets = ar.captured()
    write_pcap(str(tmp_path / "c.pcap"), packets)
    frames = rdpcap(str(tmp_path / "c.pcap"))
    assert len(frames) == len(packets)
    times = [float(f.time) for f in frames]
    assert all(b > a for a, b in zip(times, times[1:]))
    for rec, frame in zip(packets, frames):
        ip, mac = host_of(int(rec["worker"]))
        if int(rec["flags"]) & flag("RESULT"):
            assert (frame[IP].src, frame[IP].dst, frame[Ether].src) == (SWITCH_IP, ip, SWITCH_MAC)
        else:
            assert (frame[IP].src, frame[IP].dst, frame[Ether].src) == (ip, SWITCH_IP, mac)
        preamble = int(rec["flags"]) & flag("PHASE")
        assert len(frame) == 14 + 20 + 8 + HEADER_BYTES + (0 if preamble else 4 * 8)
    assert read_pcap(str(tmp_path / "c.pcap"), 8).tobytes() == packets.tobytes()
