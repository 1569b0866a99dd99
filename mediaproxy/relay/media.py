"""Media streams on the relay: sides, substreams (RTP/RTCP) and streams, with latching and timers.

Pure logic: sockets are *endpoints* handed in by the session manager (anything with ``send``,
``close``, ``local`` and a ``receiver`` attribute), time comes from an injected clock.
"""

from __future__ import annotations

from twisted.logger import Logger

from mediaproxy.relay import packets
from mediaproxy.wire.statistics import UNSELECTED_ICE

log = Logger(namespace="relay.media")

CALLER, CALLEE = "caller", "callee"
ALIVE = ("active", "on hold")
# conntrack counts whole IP packets; userspace counts the same way so both paths report alike
IP_UDP_OVERHEAD = 28


class Party:
    """What one party's latest SDP said about a stream."""

    __slots__ = ("ip", "port", "direction", "uses_ice", "seen", "signaling_ip")

    def __init__(self) -> None:
        self.ip: str | None = None
        self.port = 0
        self.direction = "sendrecv"
        self.uses_ice = False
        self.seen = False
        self.signaling_ip: str | None = None  # where the party's SIP message came from

    @property
    def sdp(self) -> tuple[str, int] | None:
        return (self.ip, self.port) if self.ip is not None else None

    @property
    def on_hold(self) -> bool:
        return self.seen and (self.direction in ("sendonly", "inactive") or self.ip == "0.0.0.0")

    def describe(self, entry, signaling_ip: str | None = None) -> None:  # noqa: ANN001 - a MediaEntry
        self.ip, self.port, self.direction, self.uses_ice, self.seen = entry.ip, entry.port, entry.direction, entry.uses_ice, True
        if signaling_ip is not None:
            self.signaling_ip = signaling_ip

    def match(self, source: tuple[str, int], rtcp: bool) -> int:
        """How well ``source`` fits what signalling says about this party: 2 for its SDP address
        and port, 1 for its SDP or signalling IP, 0 for anything else (see :meth:`Substream.received`)."""
        ip = source[0]
        if ip == self.ip:
            return 2 if source[1] == self.port + rtcp else 1
        return 1 if ip == self.signaling_ip else 0


class Side:
    """One party's view of one substream: the relay socket facing it and what was learnt from it."""

    __slots__ = (
        "substream",
        "party",
        "endpoint",
        "remote",
        "in_use",
        "got_rtp",
        "got_stun_probing",
        "deadline",
        "timer_reason",
        "timer_seconds",
        "packets",
        "bytes",
        "send_counter",
        "stun_queue",
        "latch_level",
        "latched_at",
        "kernel_packets",
        "kernel_bytes",
        "codec",
    )

    def __init__(self, substream: Substream, party: str, endpoint) -> None:  # noqa: ANN001
        self.substream = substream
        self.party = party
        self.endpoint = endpoint
        self.remote: tuple[str, int] | None = None
        self.in_use = False
        self.got_rtp = False
        self.got_stun_probing = False
        self.deadline: float | None = None  # when this side's no-traffic / on-hold timeout fires
        self.timer_reason = ""
        self.timer_seconds = 0
        self.packets = 0
        self.bytes = 0
        self.send_counter = 0
        self.stun_queue: list[bytes] | None = None  # STUN waiting for this side's address; rare, so made on demand
        self.latch_level = 0  # how well the latched source fits the party's signalling (Party.match)
        self.latched_at = 0.0
        self.kernel_packets = 0  # what removed kernel entries counted from this side
        self.kernel_bytes = 0
        self.codec: str | None = None

    def start_timer(self, seconds: int, reason: str) -> None:
        stream = self.substream.stream
        self.deadline = stream.clock.seconds() + seconds
        self.timer_reason, self.timer_seconds = reason, seconds
        stream.schedule(self.deadline)

    def cancel_timer(self) -> None:
        self.deadline = None  # the stream's timer finds nothing due and moves on

    def reset(self, stream_timeout: int) -> None:
        """The party announced a new address: ignore the old one and wait for media again."""
        self.start_timer(stream_timeout, "no-traffic timeout")
        self.in_use = False
        self.got_rtp = False
        self.got_stun_probing = False
        self.send_counter = 0
        self.stun_queue = None

    def forget(self) -> None:
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

    __slots__ = ("stream", "kind", "caller", "callee", "kernel", "reoffload", "activity", "every_packet", "idle_since")

    def __init__(self, stream: Stream, kind: str, caller_endpoint, callee_endpoint) -> None:  # noqa: ANN001
        self.stream = stream
        self.kind = kind
        self.caller = Side(self, CALLER, caller_endpoint)
        self.callee = Side(self, CALLEE, callee_endpoint)
        self.kernel = None  # handle of the kernel forwarding entry, when there is one
        self.reoffload = False  # the kernel entry lapsed while on hold: hand back to the kernel on media
        self.activity = 0  # packets seen in userspace, for the idle check
        self.every_packet = stream.manager.transmit_every == 1
        self.idle_since: float | None = None
        caller_endpoint.receiver = self._from_caller
        callee_endpoint.receiver = self._from_callee

    @property
    def sides(self) -> tuple[Side, Side]:
        return self.caller, self.callee

    def side(self, party: str) -> Side:
        return self.caller if party == CALLER else self.callee

    def _from_caller(self, data: bytes, source: tuple[str, int]) -> None:
        self.received(self.caller, self.callee, data, source)

    def _from_callee(self, data: bytes, source: tuple[str, int]) -> None:
        self.received(self.callee, self.caller, data, source)

    def received(self, side: Side, other: Side, data: bytes, source: tuple[str, int]) -> None:
        self.activity += 1
        if side.remote == source:
            if not side.in_use:
                return  # the party's obsolete address after it moved
            if side.got_rtp and other.in_use and self.every_packet and not self.reoffload and data and data[0] >= 0x80:
                # the steady state, every packet of a call forwarded in userspace: keep it short
                # (RTP and RTCP start with version 2, 0b10, so this is never STUN)
                other.endpoint.send(data, other.remote)
                side.packets += 1
                side.bytes += len(data) + IP_UDP_OVERHEAD
                return
        elif side.in_use and not self._takes_over(side, source):
            return  # someone else than the latched party
        else:
            self._latch(side, source)
        if packets.is_stun(data):
            if packets.is_stun_binding_request(data):
                side.got_stun_probing = True
            manager = self.stream.manager
            if not other.queue_stun(data, manager.stun_queue_packets, manager.stun_queue_bytes):
                manager.refusals.refuse(
                    "stun_queue_full",
                    source[0],
                    log,
                    "STUN from {peer} for {stream} dropped: the queue waiting for the other party is full",
                    stream=str(self.stream),
                )
            destination = self.destination(other)
            if destination is not None:
                self._flush_stun(other, destination)
            return
        offload = False
        if not side.got_rtp:
            offload = self._first_media(side, data)
        elif self.reoffload and self.caller.in_use and self.callee.in_use:
            self.reoffload = False
            offload = True
        destination = self.destination(other)
        if destination is not None:
            every = self.stream.manager.transmit_every
            if every == 1 or other.send_counter % every == 0:
                other.endpoint.send(data, destination)
                side.packets += 1
                side.bytes += len(data) + IP_UDP_OVERHEAD
            other.send_counter += 1
        if offload:
            # after the packet left: its own send must not clash with the new entry's tuples
            self.stream.manager.forwarder.offload(self)
            self.stream.manager.changed(self.stream.session)

    def _takes_over(self, side: Side, source: tuple[str, int]) -> bool:
        """Whether ``source`` may replace the latched address of ``side``.

        The first packet latches a side, whoever sent it. A later source that fits the party's
        signalling better (Party.match) takes over: from a source that fits nothing at any time,
        from one that fits the IP only within ``latch_window`` seconds of the latch. So a third
        party that sprays relay ports cannot keep a stream unless it spoofs the party's address.
        """
        level = self.stream.parties[side.party].match(source, self.kind == "rtcp")
        manager = self.stream.manager
        if level > side.latch_level and (side.latch_level == 0 or self.stream.clock.seconds() - side.latched_at <= manager.latch_window):
            self.remove_kernel_entry()
            side.got_rtp = False
            side.send_counter = 0
            return True
        manager.refusals.refuse(
            "latch_refused",
            source[0],
            log,
            "Packets from {peer} to {stream} ignored: the {party} is latched to {latched}",
            level="info",
            stream=str(self.stream),
            party=side.party,
            latched=_address(side.remote),
        )
        return False

    def _latch(self, side: Side, source: tuple[str, int]) -> None:
        self.stream.manager.changed(self.stream.session)
        replaced = side.remote if side.in_use else None
        side.remote = source
        side.in_use = True
        side.latch_level = self.stream.parties[side.party].match(source, self.kind == "rtcp")
        side.latched_at = self.stream.clock.seconds()
        # taking a stream from another source is worth an operator's attention; learning is not
        (log.info if replaced else log.debug)(
            "{kind} {party} of {stream} learnt at {ip}:{port}{replacing}",
            kind=self.kind,
            party=side.party,
            stream=self.stream,
            ip=source[0],
            port=source[1],
            replacing=f", replacing {_address(replaced)} that fits the signalling less" if replaced else "",
        )
        if side.stun_queue:
            # connectivity checks that waited for this party can go now, not at its next check
            self._flush_stun(side, source)

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
        stream.manager.changed(stream.session)
        if self.kind == "rtp":
            side.codec = packets.codec_name(data)
        if stream.first_media_time is None:
            stream.first_media_time = stream.clock.seconds()
        return self.caller.got_rtp and self.callee.got_rtp and self.caller.in_use and self.callee.in_use

    def destination(self, side: Side) -> tuple[str, int] | None:
        if side.in_use:
            return side.remote
        if self.kind == "rtp":
            party = self.stream.parties[side.party]
            if party.ip is not None and party.port and self.stream.manager.routable(party.ip):
                return party.ip, party.port
        return None

    def remove_kernel_entry(self) -> None:
        if self.kernel is not None:
            self.stream.manager.forwarder.remove(self)
            self.stream.manager.changed(self.stream.session)

    def counters(self, party: str) -> tuple[int, int]:
        """(packets, bytes) received from ``party`` and relayed, over both paths."""
        side = self.side(party)
        kernel_packets, kernel_bytes = side.kernel_packets, side.kernel_bytes
        if self.kernel is not None:
            live_packets, live_bytes = self.stream.manager.forwarder.counters(self, party)
            kernel_packets, kernel_bytes = kernel_packets + live_packets, kernel_bytes + live_bytes
        return side.packets + kernel_packets, side.bytes + kernel_bytes

    @property
    def media_started(self) -> bool:
        return self.caller.got_rtp or self.callee.got_rtp

    def kernel_entry_expired(self, timeout_wait: int) -> None:
        """The kernel dropped this substream's entry after ``timeout_wait`` seconds without packets."""
        if self.stream.alive and self.stream.on_hold:
            # a held call may send nothing for a long time: the on-hold timer decides, and media
            # that resumes goes back to the kernel
            self.reoffload = True
            return
        self.expire("conntrack timeout", timeout_wait)

    def check_idle(self, now: float, idle_timeout: int) -> None:
        """The userspace twin of the kernel entry's timeout: expire after ``idle_timeout`` s without packets."""
        if self.kernel is not None or not self.media_started or self.stream.on_hold:
            self.idle_since = None
            return
        if self.activity or self.idle_since is None:
            self.activity = 0
            self.idle_since = now
            return
        if now - self.idle_since >= idle_timeout:
            self.idle_since = None
            self.expire("conntrack timeout", idle_timeout)

    def expire(self, reason: str, timeout_wait: int) -> None:
        stream = self.stream
        if stream.status not in ALIVE:
            return
        for side in self.sides:
            side.cancel_timer()
        self.remove_kernel_entry()
        if self.kind == "rtcp":
            # RTCP going quiet is normal (some phones never send it); start over rather than end the call
            for side in self.sides:
                side.forget()
            log.debug("RTCP of {stream} expired ({reason}); will learn it afresh", stream=stream, reason=reason)
            return
        if stream.uses_ice:
            if not (self.caller.got_stun_probing or self.callee.got_stun_probing):
                log.info("ICE stream {stream} expired and neither side sent a STUN binding request", stream=stream)
            reason = UNSELECTED_ICE
        stream.close(reason, timeout_wait)
        stream.session.stream_expired(stream)


class Stream:
    __slots__ = (
        "session", "manager", "clock", "media_type", "parties", "status", "timeout_wait", "create_time", "start_time", "end_time",
        "first_media_time", "_timer", "_timer_at", "caller_port", "callee_port", "rtp", "rtcp",
    )  # fmt: skip

    def __init__(self, session, media_type: str, ports, manager) -> None:  # noqa: ANN001
        self.session = session
        self.manager = manager
        self.clock = manager.clock
        self.media_type = media_type
        self.parties = {CALLER: Party(), CALLEE: Party()}
        self.status = "active"
        self.timeout_wait = 0
        self.create_time = self.clock.seconds()
        self.start_time: float | None = None
        self.end_time: float | None = None
        self.first_media_time: float | None = None
        # one timer per stream serves the deadlines of its four sides (a DelayedCall each cost KiBs)
        self._timer = None
        self._timer_at = 0.0
        (self.caller_port, caller_endpoints), (self.callee_port, callee_endpoints) = ports
        self.rtp = Substream(self, "rtp", caller_endpoints[0], callee_endpoints[0])
        self.rtcp = Substream(self, "rtcp", caller_endpoints[1], callee_endpoints[1])
        for side in self.all_sides():
            side.start_timer(manager.stream_timeout, "no-traffic timeout")

    def __str__(self) -> str:
        return f"{self.media_type} stream of {self.session.call_id} ({self.caller_port}/{self.callee_port})"

    @property
    def alive(self) -> bool:
        return self.status in ALIVE

    def schedule(self, deadline: float) -> None:
        delay = max(deadline - self.clock.seconds(), 0)
        if self._timer is None or not self._timer.active():
            self._timer = self.clock.callLater(delay, self._deadlines_due)
        elif deadline < self._timer_at:
            self._timer.reset(delay)
        else:
            return
        self._timer_at = deadline

    def _deadlines_due(self) -> None:
        self._timer = None
        now = self.clock.seconds() + 1e-6  # the reactor may wake a hair before a float deadline
        for side in self.all_sides():
            if side.deadline is not None and side.deadline <= now:
                side.deadline = None
                side.substream.expire(side.timer_reason, side.timer_seconds)
        if self.alive:
            pending = [side.deadline for side in self.all_sides() if side.deadline is not None]
            if pending:
                self.schedule(min(pending))

    @property
    def uses_ice(self) -> bool:
        return self.parties[CALLER].uses_ice and self.parties[CALLEE].uses_ice

    @property
    def on_hold(self) -> bool:
        return self.parties[CALLER].on_hold or self.parties[CALLEE].on_hold

    def all_sides(self) -> list[Side]:
        return [*self.rtp.sides, *self.rtcp.sides]

    def local(self, party: str) -> tuple[str, int]:
        return self.rtp.side(party).endpoint.local

    def matches(self, party: str, entry) -> bool:  # noqa: ANN001
        sdp = self.parties[party].sdp
        if sdp is None or entry.media_type != self.media_type:
            return False
        ip, port = sdp
        return (
            (ip, port) == (entry.ip, entry.port)
            or (port == entry.port and "0.0.0.0" in (ip, entry.ip))
            or (ip == entry.ip and entry.port == 0)
        )

    def describe_party(self, party: str, entry, signaling_ip: str | None = None) -> None:  # noqa: ANN001
        was_on_hold = self.on_hold
        self.parties[party].describe(entry, signaling_ip)
        self._hold_changed(was_on_hold)

    def _hold_changed(self, was_on_hold: bool) -> None:
        if not self.alive or self.on_hold == was_on_hold:
            return
        if self.on_hold:
            self.status = "on hold"
            for side in self.all_sides():
                side.start_timer(self.manager.on_hold_timeout, "on hold timeout")
            log.info("{stream} is on hold", stream=self)
        else:
            self.status = "active"
            for side in self.all_sides():
                side.cancel_timer()
                if not side.in_use:
                    side.start_timer(self.manager.stream_timeout, "no-traffic timeout")
            log.info("{stream} is off hold", stream=self)

    def answer(self, party: str, entry, signaling_ip: str | None = None) -> None:  # noqa: ANN001
        """Apply the answering party's SDP for this stream."""
        old = self.parties[party].sdp
        self.describe_party(party, entry, signaling_ip)
        if old is None or old[0] == "0.0.0.0":
            return
        if entry.port != old[1] or (entry.ip != old[0] and entry.ip != "0.0.0.0"):
            log.info("{party} of {stream} moved to {ip}:{port}", party=party, stream=self, ip=entry.ip, port=entry.port)
            for substream in (self.rtp, self.rtcp):
                substream.remove_kernel_entry()
                substream.side(party).reset(self.manager.stream_timeout)

    def close(self, status: str = "closed", timeout_wait: int = 0) -> None:
        if not self.alive:
            return
        self.status = status
        self.timeout_wait = timeout_wait
        self.end_time = self.clock.seconds()
        for substream in (self.rtp, self.rtcp):
            substream.remove_kernel_entry()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        for side in self.all_sides():
            side.cancel_timer()
            side.stun_queue = None
            side.endpoint.close()
        self.manager.release_ports(self)
        self.manager.changed(self.session)
        if status not in ("closed", "rejected"):
            log.info("{stream} ended: {status}", stream=self, status=status)

    def suspend(self) -> None:
        """The relay process stops and a new one takes over: sockets and timer go, the state stays."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self.alive:
            for side in self.all_sides():
                side.endpoint.close()

    def counters(self, party: str) -> tuple[int, int]:
        rtp_packets, rtp_bytes = self.rtp.counters(party)
        rtcp_packets, rtcp_bytes = self.rtcp.counters(party)
        return rtp_packets + rtcp_packets, rtp_bytes + rtcp_bytes

    def statistics(self, session_start: float | None, duration: int) -> dict:
        if session_start is None or self.start_time is None:
            start = end = 0
        else:
            start = max(int(self.start_time - session_start), 0)
            if self.status == "rejected":
                end = start
            elif self.alive:
                end = duration
            else:
                end = min(int((self.end_time or self.clock.seconds()) - session_start), duration)
        caller_packets, caller_bytes = self.counters(CALLER)
        callee_packets, callee_bytes = self.counters(CALLEE)
        return {
            "media_type": self.media_type,
            "status": self.status,
            "timeout_wait": self.timeout_wait,
            "caller_codec": self.rtp.caller.codec or "Unknown",
            "callee_codec": self.rtp.callee.codec or "Unknown",
            "start_time": start,
            "end_time": end,
            "post_dial_delay": None if self.first_media_time is None else self.first_media_time - self.create_time,
            "caller_bytes": caller_bytes,
            "callee_bytes": callee_bytes,
            "caller_packets": caller_packets,
            "callee_packets": callee_packets,
            "caller_local": _address(self.local(CALLER)),
            "callee_local": _address(self.local(CALLEE)),
            "caller_remote": _address(self.rtp.caller.remote),
            "callee_remote": _address(self.rtp.callee.remote),
        }


def _address(address: tuple[str, int] | None) -> str:
    return "Unknown" if address is None else f"{address[0]}:{address[1]}"
