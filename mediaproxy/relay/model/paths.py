"""The path a substream's packets take, each an object with its own ``received``: learning (a
party not known yet), userspace and kernel (both known; the kernel's entry forwards, or this
process does), and lapsed (a held stream whose kernel entry timed out; its next media goes back).

Each path is one object, a ``str`` of its name (what the statistics, the logs and the kept state
show), compared by identity. A packet from a party's latched address takes the fast path of
``received``: forwarded at once, with nothing queued for the session manager. Everything else
(a new source, STUN, first media, a hand-over to the kernel) goes on to the substream.
"""

from __future__ import annotations

# conntrack counts whole IP packets; userspace counts the same way so both paths report alike
IP_UDP_OVERHEAD = 28


class Path(str):
    __slots__ = ()

    def received(self, substream, side, other, data: bytes, source: tuple[str, int]):  # Substream, its two Sides; Session | None
        """A packet from ``source`` reached ``side``'s socket. Returns the session when the packet
        queued events in its outbox, None when it was only forwarded or dropped (the usual case)."""
        substream.activity += 1
        if side.remote != source:
            return substream.new_source(side, other, data, source)
        if not side.in_use:
            return None  # the party's obsolete address after it moved
        if (
            side.got_rtp
            and other.in_use
            and other.latch[0]  # NO_FIT (0): a provisional latch, see Side.trusted
            and substream.every_packet
            and not other.asymmetric
            and data
            and data[0] >= 0x80
        ):
            # the steady state, every packet of a call forwarded in userspace: keep it short
            # (RTP and RTCP start with version 2, 0b10, so this is never STUN)
            other.endpoint.send(data, other.remote)
            side.packets += 1
            side.bytes += len(data) + IP_UDP_OVERHEAD
            return None
        return substream.known_source(side, other, data, source)

    def resumes(self, substream) -> bool:  # a Substream
        """Whether media on this path hands the substream to the kernel (again) now that it flows."""
        return False


class Learning(Path):
    __slots__ = ()

    def resumes(self, substream) -> bool:
        # both parties spoke, but a provisional latch held the hand-over back: it may have matured since
        caller, callee = substream.caller, substream.callee
        return caller.got_rtp and callee.got_rtp and caller.in_use and callee.in_use


class Lapsed(Path):
    __slots__ = ()

    def received(self, substream, side, other, data: bytes, source: tuple[str, int]):
        substream.activity += 1
        if side.remote != source:
            return substream.new_source(side, other, data, source)
        if not side.in_use:
            return None
        return substream.known_source(side, other, data, source)  # no fast path: its media goes back to the kernel

    def resumes(self, substream) -> bool:
        return substream.caller.in_use and substream.callee.in_use


LEARNING, USERSPACE, KERNEL, LAPSED = Learning("learning"), Path("userspace"), Path("kernel"), Lapsed("lapsed")
PATHS = (LEARNING, USERSPACE, KERNEL, LAPSED)
