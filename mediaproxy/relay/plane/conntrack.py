"""Conntrack NAT entries over netlink, with pyroute2: create, read counters, delete, watch DESTROY.

One entry forwards one substream in the kernel. Its original tuple is what the caller sends
(caller_remote -> relay caller-side socket); DNAT sends it on to callee_remote and SNAT makes it
come from the relay's callee-side socket. The reply tuple given to the kernel must be the plain
inverse of the original; the kernel derives the translated reply from the NAT attributes.
"""

from __future__ import annotations

import errno
import socket
import struct
from dataclasses import dataclass

NETLINK_NETFILTER = 12
NFNLGRP_CONNTRACK_DESTROY = 3
NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_DELETE = 2
NLMSG_HEADER = struct.Struct("=IHHII")
Address = tuple[str, int]


class ConntrackError(Exception):
    pass


@dataclass(frozen=True)
class Flow:
    """What one kernel entry does: packets from caller_remote to caller_local go to callee_remote from callee_local."""

    caller_remote: Address
    caller_local: Address
    callee_remote: Address
    callee_local: Address

    @property
    def key(self) -> tuple[Address, Address]:
        return self.caller_remote, self.caller_local


@dataclass(frozen=True)
class Counters:
    orig_packets: int = 0
    orig_bytes: int = 0
    reply_packets: int = 0
    reply_bytes: int = 0


def _tuple(source: Address, destination: Address):
    from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple  # noqa: PLC0415 - pyroute2 only with kernel forwarding

    return NFCTAttrTuple(saddr=source[0], daddr=destination[0], proto=socket.IPPROTO_UDP, sport=source[1], dport=destination[1])


def _nat(address: Address) -> dict:
    ip, port = address
    return {
        "attrs": [
            ("CTA_NAT_V4_MINIP", ip),
            ("CTA_NAT_V4_MAXIP", ip),
            ("CTA_NAT_PROTO", {"attrs": [("CTA_PROTONAT_PORT_MIN", port), ("CTA_PROTONAT_PORT_MAX", port)]}),
        ]
    }


def _counters(message) -> Counters:
    def read(name: str) -> tuple[int, int]:
        nested = message.get_attr(name)
        if nested is None:
            return 0, 0
        return nested.get_attr("CTA_COUNTERS_PACKETS") or 0, nested.get_attr("CTA_COUNTERS_BYTES") or 0

    (orig_packets, orig_bytes), (reply_packets, reply_bytes) = read("CTA_COUNTERS_ORIG"), read("CTA_COUNTERS_REPLY")
    return Counters(orig_packets, orig_bytes, reply_packets, reply_bytes)


def _orig_key(message) -> tuple[Address, Address] | None:
    tuple_orig = message.get_attr("CTA_TUPLE_ORIG")
    if tuple_orig is None:
        return None
    ip, proto = tuple_orig.get_attr("CTA_TUPLE_IP"), tuple_orig.get_attr("CTA_TUPLE_PROTO")
    if ip is None or proto is None or proto.get_attr("CTA_PROTO_NUM") != socket.IPPROTO_UDP:
        return None
    return (
        (ip.get_attr("CTA_IP_V4_SRC"), proto.get_attr("CTA_PROTO_SRC_PORT")),
        (ip.get_attr("CTA_IP_V4_DST"), proto.get_attr("CTA_PROTO_DST_PORT")),
    )


def _is_missing(error: Exception) -> bool:
    return getattr(error, "code", None) == errno.ENOENT


def _exists(error: Exception) -> bool:
    return getattr(error, "code", None) == errno.EEXIST


class Conntrack:
    """Synchronous netlink requests on the relay's own conntrack table (each takes well under a millisecond)."""

    CREATE_ATTEMPTS = 3

    def __init__(self, mark: int) -> None:
        try:
            from pyroute2 import NFCTSocket  # noqa: PLC0415
        except ImportError:
            raise ConntrackError("pyroute2 is not installed (Debian: python3-pyroute2)") from None
        self.mark = mark
        try:
            self.socket = NFCTSocket()
        except OSError as error:
            raise ConntrackError(f"cannot open a conntrack netlink socket: {error.strerror or error}") from None

    def create(self, flow: Flow, timeout: int) -> None:
        """Replace the entries the kernel made for the userspace sockets by one NAT entry for the flow.

        Packets keep arriving while this happens and may re-create an automatic entry in the
        moment between deleting it and adding ours; the add then fails with EEXIST and is retried.
        """
        for attempt in range(self.CREATE_ATTEMPTS):
            for source, destination in ((flow.caller_remote, flow.caller_local), (flow.callee_remote, flow.callee_local)):
                self._delete(source, destination)
            original = _tuple(flow.caller_remote, flow.caller_local)
            try:
                self.socket.entry(
                    "add",
                    timeout=timeout,
                    mark=self.mark,
                    tuple_orig=original,
                    tuple_reply=original.reverse(),
                    CTA_NAT_DST=_nat(flow.callee_remote),
                    CTA_NAT_SRC=_nat(flow.callee_local),
                )
                return
            except Exception as error:  # noqa: BLE001 - pyroute2 raises NetlinkError and others
                if _exists(error) and attempt + 1 < self.CREATE_ATTEMPTS:
                    continue
                raise ConntrackError(f"cannot create the conntrack entry: {error}") from None

    def _entry(self, operation: str, source: Address, destination: Address, doing: str) -> Counters | None:
        """``get`` or ``del`` the entry of ``source -> destination``: its counters, or None when the
        kernel has no such entry (any other failure is a ConntrackError saying what was being done)."""
        try:
            replies = self.socket.entry(operation, tuple_orig=_tuple(source, destination))
        except Exception as error:  # noqa: BLE001
            if _is_missing(error):
                return None
            raise ConntrackError(f"cannot {doing}: {error}") from None
        return _counters(replies[0]) if replies else None

    def _delete(self, source: Address, destination: Address) -> Counters | None:
        return self._entry("del", source, destination, f"delete the conntrack entry {source} -> {destination}")

    def read(self, flow: Flow) -> Counters | None:
        return self._entry("get", flow.caller_remote, flow.caller_local, "read the conntrack entry")

    def remove(self, flow: Flow) -> Counters | None:
        """Delete the flow's entry; its last counters, or None when the kernel had already dropped it."""
        final = self.read(flow)
        self._delete(flow.caller_remote, flow.caller_local)
        return final

    def snapshot(self) -> dict[tuple[Address, Address], Counters]:
        """Counters of all our entries, in one dump."""
        try:
            return {key: _counters(entry) for entry in self.socket.dump(mark=self.mark) if (key := _orig_key(entry)) is not None}
        except Exception as error:  # noqa: BLE001
            raise ConntrackError(f"cannot list the conntrack entries: {error}") from None

    def flush_ours(self, keep: frozenset = frozenset()) -> tuple[set, int]:
        """Delete every entry with our mark but those whose keys are in ``keep`` (the entries of
        sessions kept across a restart); returns the keys kept and how many were deleted."""
        kept, deleted = set(), 0
        for key in self.snapshot():
            if key in keep:
                kept.add(key)
            else:
                self._delete(*key)
                deleted += 1
        return kept, deleted

    def close(self) -> None:
        self.socket.close()


def destroy_socket() -> socket.socket:
    """A non-blocking netlink socket receiving conntrack DESTROY events."""
    events = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    events.bind((0, 1 << (NFNLGRP_CONNTRACK_DESTROY - 1)))
    events.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
    events.setblocking(False)
    return events


def destroyed(data: bytes, mark: int) -> list[tuple[tuple[Address, Address], Counters]]:
    """The (original key, final counters) of each entry with our mark in a datagram of DESTROY events."""
    from pyroute2.netlink.nfnetlink.nfctsocket import nfct_msg  # noqa: PLC0415

    found = []
    offset = 0
    while offset + NLMSG_HEADER.size <= len(data):
        length, kind, _flags, _sequence, _pid = NLMSG_HEADER.unpack_from(data, offset)
        if length < NLMSG_HEADER.size:
            break
        if kind == (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE:
            message = nfct_msg(data[offset : offset + length])
            message.decode()
            if message.get_attr("CTA_MARK") == mark and (key := _orig_key(message)) is not None:
                found.append((key, _counters(message)))
        offset += (length + 3) & ~3
    return found
