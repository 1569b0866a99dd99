"""A media stream of a session: what each party's SDP said, its RTP and RTCP substreams, its
ports, and its life: offered → active ⇄ on hold → ended (its status says why)."""

from __future__ import annotations

from mediaproxy.relay.model import events
from mediaproxy.relay.model.media import ALIVE, KERNEL, LEARNING, USERSPACE, LiveCounters, Substream, _no_kernel, address_text
from mediaproxy.relay.model.policy import MediaPolicy
from mediaproxy.relay.model.sides import CALLEE, CALLER, NO_TRAFFIC, ON_HOLD_TIMEOUT, Party, Side
from mediaproxy.wire.statistics import StreamRecord


class Stream:
    __slots__ = (
        "session", "media_type", "caller", "callee", "status", "timeout_wait", "create_time", "start_time",
        "end_time", "first_media_time", "caller_port", "callee_port", "local_ips", "rtp", "rtcp",
    )  # fmt: skip

    def __init__(self, session, media_type: str, ports: tuple[int, int], local_ips: tuple[str, str]) -> None:  # a Session
        self.session = session  # whose policy and clock are the stream's: thousands of streams, two slots less each
        self.media_type = media_type
        # what each party's SDP said (slots of the stream's own: an object holding the two cost 48 bytes)
        self.caller = Party()
        self.callee = Party()
        self.status = "active"
        self.timeout_wait = 0
        self.create_time = session.clock.seconds()
        self.start_time: float | None = None
        self.end_time: float | None = None
        self.first_media_time: float | None = None
        self.caller_port, self.callee_port = ports
        self.local_ips = local_ips
        self.rtp = Substream(self, "rtp")
        self.rtcp = Substream(self, "rtcp")
        policy = session.policy
        deadline = self.create_time + policy.stream_timeout
        for side in self.all_sides():
            side.set_timer(deadline, policy.stream_timeout, NO_TRAFFIC)

    def __str__(self) -> str:
        return f"{self.media_type} stream of {self.session.call_id} ({self.caller_port}/{self.callee_port})"

    @property
    def policy(self) -> MediaPolicy:
        return self.session.policy

    @property
    def clock(self):  # an IReactorTime
        return self.session.clock

    def party(self, party: str) -> Party:
        """What ``party``'s SDP said (CALLER or CALLEE)."""
        if party == CALLER:
            return self.caller
        if party == CALLEE:
            return self.callee
        raise KeyError(party)

    def attach(self, caller_endpoints: tuple, callee_endpoints: tuple) -> None:
        """Give the stream its sockets (RTP, RTCP) facing each party; their packets come in here."""
        for substream, caller, callee in zip((self.rtp, self.rtcp), caller_endpoints, callee_endpoints):
            substream.caller.endpoint, substream.callee.endpoint = caller, callee
            caller.receiver, callee.receiver = substream.caller, substream.callee

    def endpoints(self) -> list:
        return [side.endpoint for side in self.all_sides() if side.endpoint is not None]

    @property
    def alive(self) -> bool:
        return self.status in ALIVE

    @property
    def next_deadline(self) -> float | None:
        pending = [side.deadline for side in self.all_sides() if side.deadline is not None]
        return min(pending) if pending and self.alive else None

    def deadlines_due(self, now: float) -> None:
        """Time passed: the sides whose timers ran out lapse."""
        for side in self.all_sides():
            if side.deadline is not None and side.deadline <= now:
                side.deadline = None
                side.substream.lapse(*side.timer)

    @property
    def uses_ice(self) -> bool:
        return self.caller.uses_ice and self.callee.uses_ice

    @property
    def on_hold(self) -> bool:
        return self.caller.on_hold or self.callee.on_hold

    def all_sides(self) -> list[Side]:
        return [*self.rtp.sides, *self.rtcp.sides]

    def local(self, party: str) -> tuple[str, int]:
        """The relay's RTP address facing ``party``."""
        if party == CALLER:
            return self.local_ips[0], self.caller_port
        return self.local_ips[1], self.callee_port

    def matches(self, party: str, entry) -> bool:
        sdp = self.party(party).sdp
        if sdp is None or entry.media_type != self.media_type:
            return False
        ip, port = sdp
        return (
            (ip, port) == (entry.ip, entry.port)
            or (port == entry.port and "0.0.0.0" in (ip, entry.ip))
            or (ip == entry.ip and entry.port == 0)
        )

    def describe_party(self, party: str, entry, signaling_ip: str | None = None) -> None:
        was_on_hold = self.on_hold
        self.party(party).describe(entry, signaling_ip)
        self.set_asymmetric(party, entry.asymmetric)
        self._hold_changed(was_on_hold)

    def set_asymmetric(self, party: str, asymmetric: bool) -> None:
        for substream in (self.rtp, self.rtcp):
            side = substream.side(party)
            if asymmetric and not side.asymmetric and substream.path == KERNEL:
                substream._unload(USERSPACE)
            side.asymmetric = asymmetric

    def _hold_changed(self, was_on_hold: bool) -> None:
        if not self.alive or self.on_hold == was_on_hold:
            return
        now = self.clock.seconds()
        if self.on_hold:
            self.status = "on hold"
            deadline = now + self.policy.on_hold_timeout
            for side in self.all_sides():
                side.set_timer(deadline, self.policy.on_hold_timeout, ON_HOLD_TIMEOUT)
        else:
            self.status = "active"
            for side in self.all_sides():
                side.cancel_timer()
                if not side.in_use:
                    side.start_timer(now, self.policy.stream_timeout, NO_TRAFFIC)
        self.session.outbox.append(events.HoldChanged(self, self.on_hold))

    def answer(self, party: str, entry, signaling_ip: str | None = None) -> None:
        """Apply the answering party's SDP for this stream."""
        old = self.party(party).sdp
        self.describe_party(party, entry, signaling_ip)
        if old is None or old[0] == "0.0.0.0":
            return
        if entry.port != old[1] or (entry.ip != old[0] and entry.ip != "0.0.0.0"):
            self.session.outbox.append(events.Moved(self, party, (entry.ip, entry.port)))
            now = self.clock.seconds()
            for substream in (self.rtp, self.rtcp):
                substream._unload(LEARNING)
                substream.side(party).reset(now, self.policy.stream_timeout)

    def close(self, status: str = "closed", timeout_wait: int = 0) -> None:
        if not self.alive:
            return
        self.status = status
        self.timeout_wait = timeout_wait
        self.end_time = self.clock.seconds()
        for substream in (self.rtp, self.rtcp):
            substream._unload(substream.path if substream.path != KERNEL else USERSPACE)
        for side in self.all_sides():
            side.cancel_timer()
            side.stun_queue = None
        self.session.outbox += (events.StreamEnded(self), events.Changed(self.session))

    def counters(self, party: str, live: LiveCounters = _no_kernel) -> tuple[int, int]:
        rtp_packets, rtp_bytes = self.rtp.counters(party, live)
        rtcp_packets, rtcp_bytes = self.rtcp.counters(party, live)
        return rtp_packets + rtcp_packets, rtp_bytes + rtcp_bytes

    def statistics(self, session_start: float | None, duration: int, live: LiveCounters = _no_kernel) -> StreamRecord:
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
        caller_packets, caller_bytes = self.counters(CALLER, live)
        callee_packets, callee_bytes = self.counters(CALLEE, live)
        return StreamRecord(
            media_type=self.media_type,
            status=self.status,
            timeout_wait=self.timeout_wait,
            caller_codec=self.rtp.caller.codec or "Unknown",
            callee_codec=self.rtp.callee.codec or "Unknown",
            start_time=start,
            end_time=end,
            post_dial_delay=None if self.first_media_time is None else self.first_media_time - self.create_time,
            caller_bytes=caller_bytes,
            callee_bytes=callee_bytes,
            caller_packets=caller_packets,
            callee_packets=callee_packets,
            caller_local=address_text(self.local(CALLER)),
            callee_local=address_text(self.local(CALLEE)),
            caller_remote=address_text(self.rtp.caller.remote),
            callee_remote=address_text(self.rtp.callee.remote),
            path=self.path_taken(),
        )

    def path_taken(self) -> str | None:
        """The path this alive stream's RTP takes (learning, userspace, kernel) or on hold; None once it ended."""
        if not self.alive:
            return None
        return "on hold" if self.on_hold else self.rtp.path
