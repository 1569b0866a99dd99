"""What a substream knows of each party: what its SDP said (Party) and, for each of the
substream's two relay sockets, the side facing that party (Side): the address learnt from it,
how far that latch is trusted, its timer and counters."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mediaproxy.relay.model.shared import SharedValues

if TYPE_CHECKING:  # a side's substream holds it
    from mediaproxy.relay.model.media import Substream

CALLER, CALLEE = "caller", "callee"
# a stream's status when a timer or the kernel ended it (the original's words)
NO_TRAFFIC, ON_HOLD_TIMEOUT, CONNTRACK_TIMEOUT = "no-traffic timeout", "on hold timeout", "conntrack timeout"
# how well a source fits what signalling says about a party (Party.match): a latch's level
NO_FIT, IP_FIT, EXACT_FIT = 0, 1, 2

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

    def trusted(self, clock, latch_window: int) -> bool:  # an IReactorTime
        """Whether media may go to the latched source: at once for one that fits the party's
        SDP or signalling address, else (a stranger, perhaps) only once ``latch_window`` seconds
        passed without a better one taking the side (RTP Bleed: a blind sprayer gets nothing).
        The clock is read only for such a stranger."""
        level, latched_at = self.latch
        return level != NO_FIT or clock.seconds() - latched_at > latch_window

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
