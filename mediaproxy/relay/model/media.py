"""A media stream's substreams (RTP/RTCP): latching, forwarding, the kernel hand-over and
expiry (their parties and sides: model/sides.py; the stream that holds them: model/stream.py).

A stream lives offered → active ⇄ on hold → ended (its status says why). Each of its two
substreams takes a *path*: learning (a party not known yet) → userspace or kernel (both known;
the kernel when it takes the entry) → lapsed (the kernel dropped the entry of a held stream;
the next media goes back to it). Every expiry, whatever noticed it (a side's deadline, the
kernel's entry timeout, the userspace idle check), enters through :meth:`Substream.lapse`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from mediaproxy.relay.model import events, packets
from mediaproxy.relay.model.paths import IP_UDP_OVERHEAD, KERNEL, LAPSED, LEARNING, USERSPACE
from mediaproxy.relay.model.sides import (
    CALLER,
    CONNTRACK_TIMEOUT,
    NO_FIT,
    Side,
)
from mediaproxy.wire.statistics import UNSELECTED_ICE

if TYPE_CHECKING:  # a substream's stream holds it: the two modules cannot import each other at run time
    from mediaproxy.relay.model.stream import Stream

ALIVE = ("active", "on hold")

# (caller packets, caller bytes, callee packets, callee bytes) of a substream's live kernel entry
LiveCounters = Callable[["Substream"], "tuple[int, int, int, int] | None"]


def _no_kernel(substream: Substream) -> None:
    return None


def _flush_stun(side: Side, destination: tuple[str, int]) -> None:
    """The STUN that waited for ``side``'s party goes to it now."""
    queue, side.stun_queue = side.stun_queue or (), None
    for packet in queue:
        side.endpoint.send(packet, destination)


class Substream:
    """RTP or RTCP of one stream: packets from one side go out of the other side's socket."""

    __slots__ = ("stream", "kind", "caller", "callee", "path", "activity", "every_packet", "idle_since")

    def __init__(self, stream: Stream, kind: str) -> None:
        self.stream = stream
        self.kind = kind
        self.caller = Side(self)
        self.callee = Side(self)
        self.caller.other, self.callee.other = self.callee, self.caller
        self.path = LEARNING
        self.activity = 0  # packets seen in userspace, for the idle check
        self.every_packet = stream.policy.transmit_every == 1
        self.idle_since: float | None = None

    def __str__(self) -> str:
        return f"{self.kind} of {self.stream}"

    @property
    def sides(self) -> tuple[Side, Side]:
        return self.caller, self.callee

    def side(self, party: str) -> Side:
        return self.caller if party == CALLER else self.callee

    def local(self, party: str) -> tuple[str, int]:
        """The relay's address of this substream facing ``party``."""
        ip, port = self.stream.local(party)
        return ip, port + (self.kind == "rtcp")

    # -- what the path's received (model/paths.py) hands on

    def new_source(self, side: Side, other: Side, data: bytes, source: tuple[str, int]):  # Session
        """A packet from elsewhere than ``side``'s latched address: it may take the side (or be refused)."""
        if side.in_use and not self._takes_over(side, source):
            return self.stream.session  # refused: counted and logged
        self._latch(side, source)
        return self.known_source(side, other, data, source)

    def known_source(self, side: Side, other: Side, data: bytes, source: tuple[str, int]):  # Session
        """A packet from ``side``'s party that the fast path did not forward: STUN, its first
        media, media that hands the substream to the kernel, or one to send in userspace."""
        if packets.is_stun(data):
            return self._stun(side, other, data, source)
        offload = self._first_media(side, data) if not side.got_rtp else self.path.resumes(self)
        if offload and not self._both_trusted():
            # the kernel (or a worker) would forward to the latched addresses: not to a stranger's
            offload = False
        if offload and (side.asymmetric or other.asymmetric):
            # a kernel entry forwards between two learnt addresses; an asymmetric party receives
            # elsewhere than it sends from, so its streams stay in userspace
            offload = False
            self.set_path(USERSPACE)
        self._forward(side, other, data)
        session = self.stream.session
        if offload:
            # queued after the send: the packet left before the entry exists, so the two cannot clash
            session.outbox.append(events.Offload(self))
        return session

    def _stun(self, side: Side, other: Side, data: bytes, source: tuple[str, int]):  # Session
        policy = self.stream.policy
        if packets.is_stun_binding_request(data):
            side.got_stun_probing = True
        if not other.queue_stun(data, policy.stun_queue_packets, policy.stun_queue_bytes):
            self.stream.session.outbox.append(events.Refused("stun_queue_full", source[0], self))
        destination = self.destination(other)
        if destination is not None:
            _flush_stun(other, destination)
        return self.stream.session

    def _forward(self, side: Side, other: Side, data: bytes) -> None:
        """Send ``data`` on in userspace, where ``other`` has a destination (1 in ``transmit_every``)."""
        destination = self.destination(other)
        if destination is not None:
            every = self.stream.policy.transmit_every
            if every == 1 or other.send_counter % every == 0:
                other.endpoint.send(data, destination)
                side.packets += 1
                side.bytes += len(data) + IP_UDP_OVERHEAD
            other.send_counter += 1

    def _takes_over(self, side: Side, source: tuple[str, int]) -> bool:
        """Whether ``source`` may replace the latched address of ``side``.

        The first packet latches a side, whoever sent it. A later source that fits the party's
        signalling better (Party.match) takes over: from a source that fits nothing at any time,
        from one that fits the IP only within ``latch_window`` seconds of the latch. So a third
        party that sprays relay ports cannot keep a stream unless it spoofs the party's address.
        """
        stream = self.stream
        level = stream.party(side.party).match(source, self.kind == "rtcp")
        latch_level, latched_at = side.latch
        if level > latch_level and (latch_level == 0 or stream.clock.seconds() - latched_at <= stream.policy.latch_window):
            self._unload(LEARNING)
            side.got_rtp = False
            side.send_counter = 0
            return True
        stream.session.outbox.append(events.Refused("latch_refused", source[0], self, side.party))
        return False

    def _both_trusted(self) -> bool:
        clock, window = self.stream.clock, self.stream.policy.latch_window
        return self.caller.trusted(clock, window) and self.callee.trusted(clock, window)

    def _latch(self, side: Side, source: tuple[str, int]) -> None:
        stream = self.stream
        replaced = side.remote if side.in_use else None
        side.unsettle()  # (a side that is settled takes no other source; this is not for the usual case)
        side.remote = source
        side.in_use = True
        now = stream.clock.seconds()
        side.latch = (stream.party(side.party).match(source, self.kind == "rtcp"), now)
        side.settle(now, stream.policy.latch_window)
        stream.session.outbox += (events.Changed(stream.session), events.Learnt(self, side.party, source, replaced))
        if side.stun_queue and side.latch[0] != NO_FIT:
            # connectivity checks that waited for this party can go now, not at its next check
            _flush_stun(side, source)

    def settle(self, now: float) -> None:
        """Settle each side whose latch nobody can take any more (Side.settle)."""
        window = self.stream.policy.latch_window
        self.caller.settle(now, window)
        self.callee.settle(now, window)

    def _first_media(self, side: Side, data: bytes) -> bool:
        """Note the side's first media packet; True when the substream can now go to the kernel."""
        side.got_rtp = True
        side.cancel_timer()
        stream = self.stream
        stream.session.outbox.append(events.Changed(stream.session))
        if self.kind == "rtp":
            side.codec = packets.codec_name(data)
        if stream.first_media_time is None:
            stream.first_media_time = stream.clock.seconds()
        return self.caller.got_rtp and self.callee.got_rtp and self.caller.in_use and self.callee.in_use

    def destination(self, side: Side) -> tuple[str, int] | None:
        """Where media for ``side``'s party goes: its latched address once trusted; an asymmetric
        party's SDP address; else (not learnt, or held provisional) the SDP address where it is
        reachable (a stranger there would be the party itself), else nowhere."""
        if side.asymmetric:
            return self._signalled(side)
        if side.in_use and side.trusted(self.stream.clock, self.stream.policy.latch_window):
            return side.remote
        if self.kind == "rtp":
            party = self.stream.party(side.party)
            if party.ip is not None and party.port and self.stream.policy.routable(party.ip):
                return party.ip, party.port
        return None

    def _signalled(self, side: Side) -> tuple[str, int] | None:
        party = self.stream.party(side.party)
        if party.ip is None or party.ip == "0.0.0.0" or not party.port:
            return None
        return party.ip, party.port + (self.kind == "rtcp")

    # -- the path, as the kernel forwarder reports it

    def set_path(self, path: str) -> None:
        if path != self.path:
            old, self.path = self.path, path
            session = self.stream.session
            session.outbox += (events.PathChanged(self, old, path), events.Changed(session))

    def _unload(self, then: str) -> None:
        """Leave the kernel (the entry is removed when the event is carried out) for path ``then``."""
        if self.path == KERNEL:
            self.stream.session.outbox.append(events.Unload(self))
        self.set_path(then)

    def adopted(self) -> None:
        """The kernel still had this substream's entry from before a restart: both sides sent media."""
        for side in self.sides:
            side.in_use = side.got_rtp = True
            side.deadline = None
        self.path = KERNEL

    def add_kernel_counts(self, caller_packets: int, caller_bytes: int, callee_packets: int, callee_bytes: int) -> None:
        """The last counters of a kernel entry that is gone: the kernel's part of the totals."""
        caller, callee = self.caller, self.callee
        caller.kernel = (caller.kernel[0] + caller_packets, caller.kernel[1] + caller_bytes)
        callee.kernel = (callee.kernel[0] + callee_packets, callee.kernel[1] + callee_bytes)

    def kernel_entry_gone(self, counts: tuple[int, int, int, int], timeout_wait: int) -> None:
        """The kernel dropped the entry after ``timeout_wait`` seconds without packets."""
        self.add_kernel_counts(*counts)
        if self.path == KERNEL:
            self.set_path(USERSPACE)  # no Unload: there is no entry left to remove
        self.lapse(CONNTRACK_TIMEOUT, timeout_wait)

    def counters(self, party: str, live: LiveCounters = _no_kernel) -> tuple[int, int]:
        """(packets, bytes) received from ``party`` and relayed, over both paths."""
        side = self.side(party)
        kernel_packets, kernel_bytes = side.kernel
        packets_, bytes_ = side.packets + kernel_packets, side.bytes + kernel_bytes
        if self.path == KERNEL:
            counts = live(self)
            if counts is not None:
                offset = 0 if party == CALLER else 2
                packets_, bytes_ = packets_ + counts[offset], bytes_ + counts[offset + 1]
        return packets_, bytes_

    @property
    def media_started(self) -> bool:
        return self.caller.got_rtp or self.callee.got_rtp

    # -- expiry: every source comes through lapse()

    def check_idle(self, now: float, idle_timeout: int) -> None:
        """The userspace twin of the kernel entry's timeout: lapse after ``idle_timeout`` s without packets."""
        if self.path == KERNEL or not self.media_started or self.stream.on_hold:
            self.idle_since = None
            return
        if self.activity or self.idle_since is None:
            self.activity = 0
            self.idle_since = now
            return
        if now - self.idle_since >= idle_timeout:
            self.idle_since = None
            self.lapse(CONNTRACK_TIMEOUT, idle_timeout)

    def lapse(self, reason: str, timeout_wait: int) -> None:
        """No media for a while (``reason``: a stream status): RTCP is learnt afresh, a held
        stream's kernel entry waits for media to resume, anything else ends the stream."""
        stream = self.stream
        if not stream.alive:
            return
        if reason == CONNTRACK_TIMEOUT and stream.on_hold:
            # a held call may send nothing for a long time: the on-hold timer decides, and media
            # that resumes goes back to the kernel
            self._unload(LAPSED)
            return
        for side in self.sides:
            side.cancel_timer()
        self._unload(LEARNING)
        outbox = stream.session.outbox
        if self.kind == "rtcp":
            # RTCP going quiet is normal (some phones never send it); start over rather than end the call
            for side in self.sides:
                side.forget()
            outbox.append(events.Relearning(self, reason))
            return
        if stream.uses_ice:
            outbox.append(events.IceUnselected(stream, self.caller.got_stun_probing or self.callee.got_stun_probing))
            reason = UNSELECTED_ICE
        stream.close(reason, timeout_wait)
        stream.session.stream_expired(stream)


def address_text(address: tuple[str, int] | None) -> str:
    return "Unknown" if address is None else f"{address[0]}:{address[1]}"
