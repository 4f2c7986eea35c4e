"""Batched UDP I/O for innet packets: ``recvmmsg``/``sendmmsg`` through ctypes into and
out of preallocated numpy buffers, so a batch of up to ``batch`` datagrams costs one
system call and no Python per packet (Linux only).

:class:`BatchSocket` wraps a bound UDP socket. :meth:`BatchSocket.recv` fills a ring
of fixed-size rows and returns (frames as a strided structured view of
``packet_dtype(k)`` for the rows of the right length, the sources' addresses as 64-bit
keys, how many frames of another length were dropped). :meth:`BatchSocket.send`
sends rows of a contiguous packet array to addresses given as keys. An address key is
``ip << 16 | port`` (IPv4, host order), so address tables are plain int64 arrays.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import select
import socket

import numpy as np

from innet.protocol.header import HEADER_BYTES, packet_dtype

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
MSG_DONTWAIT = 0x40
SOL_UDP, UDP_SEGMENT, UDP_GRO = 17, 103, 104
MSG_TRUNC = 0x20
CONTROL = 64  # bytes of ancillary data per message (one UDP_GRO cmsg)
GSO_SEGMENTS = 64  #: datagrams one UDP GSO message may carry (the kernel's limit)
#: struct mmsghdr on x86-64 / aarch64 Linux: msghdr (56 bytes) then msg_len
MMSGHDR = np.dtype({
    "names": ["name", "namelen", "iov", "iovlen", "control", "controllen", "flags", "len"],
    "formats": [np.uint64, np.uint32, np.uint64, np.uint64, np.uint64, np.uint64, np.int32,
                np.uint32],
    "offsets": [0, 8, 16, 24, 32, 40, 48, 56],
    "itemsize": 64,
})
IOVEC = np.dtype({"names": ["base", "len"], "formats": [np.uint64, np.uint64],
                  "offsets": [0, 8], "itemsize": 16})
SOCKADDR = 16  # struct sockaddr_in


def address_key(host: str, port: int) -> int:
    """The int64 key of an IPv4 address: ip << 16 | port."""
    ip = int.from_bytes(socket.inet_aton(socket.gethostbyname(host)), "big")
    return (ip << 16) | int(port)


def key_address(key: int) -> tuple[str, int]:
    return socket.inet_ntoa(int(key >> 16).to_bytes(4, "big")), int(key & 0xFFFF)


def _sockaddrs(keys: np.ndarray) -> np.ndarray:
    """struct sockaddr_in rows (AF_INET, port and address in network order)."""
    keys = np.asarray(keys, np.int64)
    out = np.zeros((len(keys), SOCKADDR), np.uint8)
    out[:, 0:2] = np.frombuffer(np.uint16(socket.AF_INET).tobytes(), np.uint8)
    port = (keys & 0xFFFF).astype(">u2")
    ip = (keys >> 16).astype(">u4")
    out[:, 2:4] = port.view(np.uint8).reshape(-1, 2)
    out[:, 4:8] = ip.view(np.uint8).reshape(-1, 4)
    return out


def _keys_of(names: np.ndarray) -> np.ndarray:
    """Address keys of received sockaddr_in rows."""
    port = names[:, 2:4].copy().view(">u2").reshape(-1).astype(np.int64)
    ip = names[:, 4:8].copy().view(">u4").reshape(-1).astype(np.int64)
    return (ip << 16) | port


class BatchSocket:
    """A UDP socket bound to (host, port) (port 0: any free port, see :attr:`port`)
    that receives and sends innet packets of k values in batches."""

    def __init__(self, k: int, host: str = "127.0.0.1", port: int = 0, batch: int = 1024,
                 rcvbuf: int = 8 << 20, gso: bool = True):
        self.k, self.batch = k, batch
        self.dtype = packet_dtype(k)
        self.size = self.dtype.itemsize
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for opt, value in ((socket.SO_RCVBUF, rcvbuf), (socket.SO_SNDBUF, rcvbuf)):
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, opt, value)
            except OSError:  # pragma: no cover - a kernel that refuses the size
                pass
        self.sock.bind((host, port))
        self.sock.setblocking(False)
        self.fd = self.sock.fileno()
        self.host, self.port = self.sock.getsockname()
        self.key = address_key(self.host, self.port)
        # receive side: UDP GRO lets the kernel hand over up to 64 datagrams of one
        # flow in one buffer (with their size in a control message), so a ring row
        # holds 64 packets; a datagram of another size (or a GRO train of another
        # segment size) is malformed. Rows are a multiple of the packet size, so every
        # packet in the ring lies at a multiple of it: frames are one gather.
        self.gro = False
        if gso:
            try:
                self.sock.setsockopt(SOL_UDP, UDP_GRO, 1)
                self.gro = True
            except OSError:  # pragma: no cover - an older kernel
                pass
        self.per_row = GSO_SEGMENTS if self.gro else 1
        # a quarter as many rows as datagrams per call: 64 packets each when senders
        # coalesce, still batch / 4 per call when they do not
        rows = max(16, batch // 4) if self.gro else batch
        self.rows = rows
        self.row = self.size * self.per_row + (0 if self.gro else self.size)
        self.ring = np.zeros((rows, self.row), np.uint8)
        self.names = np.zeros((rows, SOCKADDR), np.uint8)
        self.controls = np.zeros((rows, CONTROL), np.uint8)
        self._riov = np.zeros(rows, IOVEC)
        self._riov["base"] = self.ring.ctypes.data + np.arange(rows) * self.row
        self._riov["len"] = self.row if self.gro else self.size + 1
        self._rmsg = np.zeros(rows, MMSGHDR)
        self._rmsg["name"] = self.names.ctypes.data + np.arange(rows) * SOCKADDR
        self._rmsg["iov"] = self._riov.ctypes.data + np.arange(rows) * IOVEC.itemsize
        self._rmsg["iovlen"] = 1
        self._rmsg["control"] = self.controls.ctypes.data + np.arange(rows) * CONTROL
        # every packet slot of the ring, as packets (a row of size·64 bytes is 64 of them)
        self._slots = (np.ndarray((rows * self.row // self.size,), dtype=self.dtype,
                                  buffer=self.ring) if self.gro else None)
        # send side: headers and iovecs rebuilt per call (vectorised), names per address
        self._smsg = np.zeros(batch, MMSGHDR)
        self._siov = np.zeros(batch, IOVEC)
        self._saddr: dict[int, np.ndarray] = {}
        self.sent = self.received = self.malformed = 0
        #: UDP GSO: up to 64 packets to one destination leave as one message that the
        #: kernel cuts into datagrams of the packet size (Linux >= 4.18), so a send
        #: costs one message per destination and 64 packets instead of one per packet
        self.gso = False
        if gso:
            try:
                self.sock.setsockopt(SOL_UDP, UDP_SEGMENT, self.size)
                self.gso = True
            except OSError:  # pragma: no cover - an older kernel: one datagram each
                pass

    def close(self) -> None:
        self.sock.close()

    def fileno(self) -> int:
        return self.fd

    # -- receive -----------------------------------------------------------------------
    def wait(self, timeout: float) -> bool:
        """Whether a datagram is ready within ``timeout`` seconds."""
        return bool(select.select([self.fd], [], [], max(timeout, 0.0))[0])

    def recv(self) -> tuple[np.ndarray, np.ndarray, int]:
        """One recvmmsg, not waiting: (the packets of the right size — a view into the
        ring, or a gather of it, valid until the next call; their sources' address
        keys; datagrams of another size, dropped)."""
        self._rmsg["namelen"] = SOCKADDR
        self._rmsg["controllen"] = CONTROL if self.gro else 0
        n = _libc.recvmmsg(self.fd, ctypes.c_void_p(self._rmsg.ctypes.data),
                           ctypes.c_uint(self.rows), ctypes.c_int(MSG_DONTWAIT), None)
        if n < 0:
            err = ctypes.get_errno()
            if err in (11, 4):  # EAGAIN, EINTR: nothing there
                return self._empty()
            raise OSError(err, os.strerror(err))
        lengths = self._rmsg["len"][:n].astype(np.int64)
        keys = _keys_of(self.names[:n])
        if not self.gro:
            good = np.flatnonzero(lengths == self.size)
            short = np.flatnonzero(lengths == HEADER_BYTES)
            bad = n - len(good) - len(short)
            self.received += n
            self.malformed += bad
            frames = np.ndarray((n,), dtype=self.dtype, buffer=self.ring,
                                strides=(self.row,))
            if len(short):
                heads = self._header_only(short * self.row)
                return (np.concatenate([frames[good], heads]).astype(self.dtype),
                        np.concatenate([keys[good], keys[short]]), bad)
            return (frames[good], keys[good], bad) if bad else (frames, keys, 0)
        # the segment size of a coalesced row: its UDP_GRO control message, else the
        # whole datagram
        ctl = self.controls[:n]
        clen = self._rmsg["controllen"][:n]
        level = ctl[:, 8:12].copy().view(np.int32).reshape(-1)
        ctype = ctl[:, 12:16].copy().view(np.int32).reshape(-1)
        seg = ctl[:, 16:20].copy().view(np.int32).reshape(-1).astype(np.int64)
        has = (clen >= 20) & (level == SOL_UDP) & (ctype == UDP_GRO)
        seg = np.where(has, seg, lengths)
        truncated = (self._rmsg["flags"][:n] & MSG_TRUNC) != 0
        datagrams = np.where(seg > 0, -(-lengths // np.maximum(seg, 1)), 1)
        # (GRO may end a train of full packets with one shorter datagram: a header-only
        # tail is kept, any other tail makes the row malformed)
        tail = (seg == self.size) & (lengths % self.size == HEADER_BYTES) & ~truncated
        ok = (seg == self.size) & ((lengths % self.size == 0) | tail) & ~truncated
        short = (seg == HEADER_BYTES) & (lengths % HEADER_BYTES == 0) & ~truncated
        count = np.where(ok, lengths // self.size, 0)
        bad = int(datagrams[~(ok | short)].sum())
        total = int(count.sum())
        n_short = int(np.where(short, lengths // HEADER_BYTES, 0).sum()) + int(tail.sum())
        self.received += total + n_short + bad
        self.malformed += bad
        if total + n_short == 0:
            return self._empty()[0], self._empty()[1], bad
        if (count == 1).all():
            idx = np.arange(n) * self.per_row
        else:
            idx = np.repeat(np.arange(n) * self.per_row, count) + (
                np.arange(total) - np.repeat(np.cumsum(count) - count, count))
        frames, frame_keys = self._slots[idx], np.repeat(keys, count)
        if n_short:  # header-only packets (the exponent preamble): no payload follows
            rows = np.flatnonzero(short)
            per = lengths[rows] // HEADER_BYTES
            start = (np.repeat(rows * self.row, per) + HEADER_BYTES * (
                np.arange(int(per.sum())) - np.repeat(np.cumsum(per) - per, per)))
            tails = np.flatnonzero(tail)
            start = np.concatenate([start, tails * self.row + count[tails] * self.size])
            heads = self._header_only(start)
            frames = np.concatenate([frames, heads]).astype(self.dtype)
            frame_keys = np.concatenate([frame_keys, np.repeat(keys[rows], per), keys[tails]])
        return frames, frame_keys, bad

    def _header_only(self, start: np.ndarray) -> np.ndarray:
        """Packets whose header bytes start at ``start`` in the ring, payload zero."""
        out = np.zeros(len(start), self.dtype)
        raw = out.view(np.uint8).reshape(len(start), self.size)
        raw[:, :HEADER_BYTES] = self.ring.reshape(-1)[start[:, None] + np.arange(HEADER_BYTES)]
        return out

    def _empty(self):
        return np.zeros(0, self.dtype), np.zeros(0, np.int64), 0

    # -- send --------------------------------------------------------------------------
    def _name_of(self, keys: np.ndarray) -> np.ndarray:
        """Pointers to sockaddr_in rows of the destinations, cached per address."""
        uniq = np.unique(keys)
        for key in uniq.tolist():
            if key not in self._saddr:
                self._saddr[key] = _sockaddrs(np.array([key]))[0].copy()
        table = {key: self._saddr[key].ctypes.data for key in uniq.tolist()}
        ptrs = np.array([table[k] for k in uniq.tolist()], np.uint64)
        return ptrs[np.searchsorted(uniq, keys)]

    def send(self, packets: np.ndarray, dest: np.ndarray, rows: np.ndarray | None = None) -> int:
        """Send packets[rows[i]] (all rows by default) to address dest[i]; packets must
        be a contiguous array of ``packet_dtype(k)``. Returns datagrams sent (a full
        socket buffer drops the rest, as a real NIC would: counted by the caller)."""
        packets = np.ascontiguousarray(packets)
        dest = np.asarray(dest, np.int64)
        rows = np.arange(len(dest)) if rows is None else np.asarray(rows, np.int64)
        if len(rows) != len(dest):
            raise ValueError("rows and dest disagree in length")
        if len(dest) == 0:
            return 0
        base = packets.ctypes.data
        # a packet with count 0 (the exponent preamble) is header-only on the wire
        short = np.asarray(packets["count"])[rows] == 0
        if self.gso:  # group by destination (order kept within one), 64 per message;
            # header-only packets go one per message (GSO needs equal segments)
            group = np.where(short, -1 - np.arange(len(dest)), dest)
            order = np.lexsort((np.arange(len(dest)), short, dest))
            dest, rows, short, group = dest[order], rows[order], short[order], group[order]
            start = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
            run = np.diff(np.r_[start, len(dest)])
            first = np.concatenate([s + np.arange(0, r, GSO_SEGMENTS) for s, r in
                                    zip(start.tolist(), run.tolist())])
            count = np.minimum(GSO_SEGMENTS, np.r_[first[1:], len(dest)] - first)
        else:
            first = np.arange(len(dest))
            count = np.ones(len(dest), np.int64)
        names = self._name_of(dest[first])
        if len(self._siov) < len(rows):
            self._siov = np.zeros(len(rows), IOVEC)
        iov = self._siov[:len(rows)]
        iov["base"] = base + rows.astype(np.uint64) * self.size
        iov["len"] = np.where(short, HEADER_BYTES, self.size)
        iov_base = self._siov.ctypes.data
        done = 0
        for lo in range(0, len(first), self.batch):
            m = min(self.batch, len(first) - lo)
            msg = self._smsg[:m]
            msg["name"] = names[lo:lo + m]
            msg["namelen"] = SOCKADDR
            msg["iov"] = iov_base + first[lo:lo + m].astype(np.uint64) * IOVEC.itemsize
            msg["iovlen"] = count[lo:lo + m]
            sent = 0
            while sent < m:
                r = _libc.sendmmsg(self.fd, ctypes.c_void_p(msg.ctypes.data + sent * 64),
                                   ctypes.c_uint(m - sent), ctypes.c_int(0))
                if r < 0:
                    err = ctypes.get_errno()
                    if err in (11, 4):  # EAGAIN: the buffer is full; wait for room
                        select.select([], [self.fd], [], 0.01)
                        continue
                    if err == 111:  # ECONNREFUSED: the peer is gone
                        break
                    raise OSError(err, os.strerror(err))
                sent += r
            done += int(count[lo:lo + sent].sum())
        self.sent += done
        return done

    def kernel_drops(self) -> int:
        """Datagrams the kernel dropped on this socket for want of buffer space
        (/proc/net/udp's ``drops`` column): not emulated loss."""
        try:
            with open("/proc/net/udp") as fh:
                next(fh)
                hexport = f"{self.port:04X}"
                for line in fh:
                    cols = line.split()
                    if cols[1].endswith(":" + hexport):
                        return int(cols[-1])
        except OSError:  # pragma: no cover - no procfs
            pass
        return 0
