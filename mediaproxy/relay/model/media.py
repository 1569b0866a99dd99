"""Media streams' parts: parties, sides and substreams (RTP/RTCP), with latching and expiry
(the stream that holds them: model/stream.py).

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
from mediaproxy.relay.model.shared import SharedValues
from mediaproxy.wire.statistics import UNSELECTED_ICE

if TYPE_CHECKING:  # a substream's stream holds it: the two modules cannot import each other at run time
    from mediaproxy.relay.model.stream import Stream

CALLER, CALLEE = "caller", "callee"
ALIVE = ("active", "on hold")
# a stream's status when a timer or the kernel ended it (the original's words)
NO_TRAFFIC, ON_HOLD_TIMEOUT, CONNTRACK_TIMEOUT = "no-traffic timeout", "on hold timeout", "conntrack timeout"
# how well a source fits what signalling says about a party (Party.match): a latch's level
NO_FIT, IP_FIT, EXACT_FIT = 0, 1, 2

# (caller packets, caller bytes, callee packets, callee bytes) of a substream's live kernel entry
LiveCounters = Callable[["Substream"], "tuple[int, int, int, int] | None"]


def _no_kernel(substream: Substream) -> None:
    return None


_NO_LATCH = (0, 0.0)
_NO_COUNTS = (0, 0)
_NO_TIMER = ("", 0)
# (reason, seconds) of side timers: a few reasons times the configured timeouts (bounded should
# kept state bring odd values)
_TIMERS = SharedValues(64)


class TuplePart:
    """A field that an object keeps as one place of a tuple in another attribute, read and set by
    name (the kept state's loader sets fields by name); ``share`` holds the new tuples once."""

    __slots__ = ("attribute", "index", "share")

    def __init__(self, attribute: str, index: int, share: SharedValues | None = None) -> None:
        self.attribute, self.index, self.share = attribute, index, share

    def __get__(self, owner: object, kind: type | None = None):  # the part's value
        if owner is None:
            return self
        return getattr(owner, self.attribute)[self.index]

    def __set__(self, owner: object, value: object) -> None:
        parts = list(getattr(owner, self.attribute))
        parts[self.index] = value
        whole = tuple(parts)
        setattr(owner, self.attribute, whole if self.share is None else self.share(whole))


class Party:
    """What one party's latest SDP said about a stream."""

    __slots__ = ("ip", "port", "direction", "uses_ice", "seen", "signaling_ip", "asymmetric")

    def __init__(self) -> None:
        self.ip: str | None = None
        self.port = 0
        self.direction = "sendrecv"
        self.uses_ice = False
        self.seen = False
        self.signaling_ip: str | None = None  # where the party's SIP message came from
        self.asymmetric = False  # it receives at its SDP address, whatever address it sends from

    @property
    def sdp(self) -> tuple[str, int] | None:
        return (self.ip, self.port) if self.ip is not None else None

    @property
    def on_hold(self) -> bool:
        return self.seen and (self.direction in ("sendonly", "inactive") or self.ip == "0.0.0.0")

    def describe(self, entry, signaling_ip: str | None = None) -> None:  # a MediaEntry
        self.ip, self.port, self.direction, self.uses_ice, self.seen = entry.ip, entry.port, entry.direction, entry.uses_ice, True
        self.asymmetric = entry.asymmetric
        if signaling_ip is not None:
            self.signaling_ip = signaling_ip

    def match(self, source: tuple[str, int], rtcp: bool) -> int:
        """How well ``source`` fits what signalling says about this party: 2 for its SDP address
        and port, 1 for its SDP or signalling IP, 0 for anything else (see :meth:`Substream.received`)."""
        ip = source[0]
        if ip == self.ip:
            return EXACT_FIT if source[1] == self.port + rtcp else IP_FIT
        return IP_FIT if ip == self.signaling_ip else NO_FIT


class Side:
    """One party's view of one substream: the relay socket facing it and what was learnt from it.

    A relay holds four per stream, so what is set rarely and always together (a timer's reason
    and length, a latch's level and time, a gone kernel entry's counts) is one shared tuple per
    side, not two slots each, and the party is told by the substream: 32 bytes a side.
    """

    __slots__ = (
        "substream",
        "endpoint",
        "remote",
        "in_use",
        "got_rtp",
        "got_stun_probing",
        "deadline",
        "timer",
        "packets",
        "bytes",
        "send_counter",
        "stun_queue",
        "latch",
        "kernel",
        "codec",
        "asymmetric",
        "other",
    )

    def __init__(self, substream: Substream) -> None:
        self.substream = substream
        self.other: Side | None = None  # the side facing the other party, where its packets go out
        self.endpoint = None  # a plane.interfaces.IEndpoint, attached by whoever binds the port
        self.remote: tuple[str, int] | None = None
        self.in_use = False
        self.got_rtp = False
        self.got_stun_probing = False
        self.deadline: float | None = None  # when this side's no-traffic / on-hold timeout fires
        self.timer = _NO_TIMER  # (reason, seconds) of the timer that sets the deadline
        self.packets = 0  # relayed in userspace
        self.bytes = 0
        self.send_counter = 0
        self.stun_queue: list[bytes] | None = None  # STUN waiting for this side's address; rare, so made on demand
        # (level, time) of the latch: how well the latched source fits the party's signalling (Party.match)
        self.latch = _NO_LATCH
        self.kernel = _NO_COUNTS  # (packets, bytes) the kernel relayed from this side in entries now gone
        self.codec: str | None = None
        self.asymmetric = False  # its party's: packets to it go to the SDP address, not to the latched one

    @property
    def party(self) -> str:
        return CALLER if self.substream.caller is self else CALLEE

    # the fields of the shared tuples by name, as the kept state has them
    timer_reason = TuplePart("timer", 0, _TIMERS)
    timer_seconds = TuplePart("timer", 1, _TIMERS)
    latch_level = TuplePart("latch", 0)
    latched_at = TuplePart("latch", 1)
    kernel_packets = TuplePart("kernel", 0)
    kernel_bytes = TuplePart("kernel", 1)

    def received(self, data: bytes, source: tuple[str, int]):  # Session | None
        """A packet from ``source`` reached this side's socket (its endpoint's receiver is the side
        itself: thousands of sides, so no bound method each)."""
        substream = self.substream
        return substream.path.received(substream, self, self.other, data, source)

    def trusted(self, now: float, latch_window: int) -> bool:
        """Whether media may go to the latched source: at once for one that fits the party's
        SDP or signalling address, else (a stranger, perhaps) only once ``latch_window`` seconds
        passed without a better one taking the side (RTP Bleed: a blind sprayer gets nothing)."""
        level, latched_at = self.latch
        return level != NO_FIT or now - latched_at > latch_window

    def start_timer(self, now: float, seconds: int, reason: str) -> None:
        self.set_timer(now + seconds, seconds, reason)

    def set_timer(self, deadline: float, seconds: int, reason: str) -> None:
        """Time out at ``deadline`` (the sides of a stream share one: a float object each is 24 bytes)."""
        self.deadline = deadline
        self.timer = _TIMERS((reason, seconds))

    def cancel_timer(self) -> None:
        self.deadline = None

    def settle(self, now: float, latch_window: int) -> None:
        """Once no other source can take this side over (see Substream._takes_over: an exact fit,
        or a fit of the IP past ``latch_window``), its socket takes packets from the latched
        source alone. The kernel then drops the rest before they cost the relay a read, and a
        packet sent to the party goes without an address or a route lookup (on loopback 0.8× the
        cost of an addressed send). What the party's signalling changes later unsettles it (reset,
        forget)."""
        endpoint = self.endpoint
        if endpoint is None or not self.in_use or endpoint.peer is self.remote:
            return
        level, latched_at = self.latch
        if level == EXACT_FIT or (level == IP_FIT and now - latched_at > latch_window):
            endpoint.fix(self.remote)

    def unsettle(self) -> None:
        """Packets from anywhere reach the socket again: the side is to be learnt afresh."""
        endpoint = self.endpoint
        if endpoint is not None and endpoint.peer is not None:
            endpoint.unfix()

    def reset(self, now: float, stream_timeout: int) -> None:
        """The party announced a new address: ignore the old one and wait for media again."""
        self.unsettle()
        self.start_timer(now, stream_timeout, NO_TRAFFIC)
        self.in_use = False
        self.got_rtp = False
        self.got_stun_probing = False
        self.send_counter = 0
        self.stun_queue = None

    def forget(self) -> None:
        self.unsettle()
        self.remote = None
        self.in_use = False
        self.got_rtp = False
        self.send_counter = 0
        self.stun_queue = None

    def queue_stun(self, data: bytes, max_packets: int, max_bytes: int) -> bool:
        """Keep a STUN packet for when this side's address is known; False (dropped) when full."""
        queue = self.stun_queue
        if queue is None:
            queue = self.stun_queue = []
        elif len(queue) >= max_packets or sum(map(len, queue)) + len(data) > max_bytes:
            return False
        queue.append(data)
        return True


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
            self._flush_stun(other, destination)
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
        now, window = self.stream.clock.seconds(), self.stream.policy.latch_window
        return self.caller.trusted(now, window) and self.callee.trusted(now, window)

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
            self._flush_stun(side, source)

    def settle(self, now: float) -> None:
        """Settle each side whose latch nobody can take any more (Side.settle)."""
        window = self.stream.policy.latch_window
        self.caller.settle(now, window)
        self.callee.settle(now, window)

    @staticmethod
    def _flush_stun(side: Side, destination: tuple[str, int]) -> None:
        queue, side.stun_queue = side.stun_queue or (), None
        for packet in queue:
            side.endpoint.send(packet, destination)

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
        if side.in_use and (side.latch[0] != NO_FIT or side.trusted(self.stream.clock.seconds(), self.stream.policy.latch_window)):
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
