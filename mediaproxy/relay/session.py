"""The relay's call sessions: SDP offer/answer per (caller cseq, callee cseq), replies, statistics.

Pure, clock-injected logic; the session manager is given a ``binder`` that opens the relay's
sockets for a port pair and a ``forwarder`` for the kernel path.
"""

from __future__ import annotations

import itertools

from twisted.internet import task
from twisted.logger import Logger

from mediaproxy import __version__
from mediaproxy.ratelimit import Refusals
from mediaproxy.relay import persist
from mediaproxy.relay.media import ALIVE, CALLEE, CALLER, Stream
from mediaproxy.relay.packets import Routability
from mediaproxy.relay.ports import PortPool, PortsExhausted
from mediaproxy.wire import statistics as records
from mediaproxy.wire.headers import REMOVE_REQUIRED, UPDATE_REQUIRED, SignalingInfo, parse_signaling_ip

log = Logger(namespace="relay.session")

# how often sessions whose userspace counters moved are kept (a crash loses at most this much counting)
COUNTERS_INTERVAL = 60


class UpdateError(Exception):
    """The update cannot be applied; the relay answers ``error`` and logs the text."""


class Halting(Exception):
    """The relay is draining: no new sessions."""


class Session:
    __slots__ = (
        "manager", "clock", "dispatcher", "call_id", "caller_tag", "from_uri", "to_uri", "to_tag", "caller_ua", "callee_ua",
        "signaling", "created", "start_time", "end_time", "ended", "end_reason", "streams", "offers", "pair", "previous_pair",
        "serial", "dialog_id",
    )  # fmt: skip

    def __init__(self, manager: SessionManager, headers: dict, dispatcher: object) -> None:
        self.manager = manager
        self.clock = manager.clock
        self.dispatcher = dispatcher
        self.call_id = headers["call_id"]
        self.caller_tag = headers["from_tag"]
        self.from_uri = headers["from_uri"]
        self.to_uri = headers["to_uri"]
        self.to_tag: str | None = None
        self.caller_ua: str | None = None
        self.callee_ua: str | None = None
        self.signaling: SignalingInfo = parse_signaling_ip(headers["signaling_ip"])
        self.created = self.clock.seconds()
        self.start_time: float | None = None
        self.end_time: float | None = None
        self.pair = (0, 0)
        self.previous_pair: tuple[int, int] | None = None
        self.offers: dict[tuple[int, int], list[Stream]] = {}
        self.streams: list[Stream] = []
        self.ended = False
        self.end_reason: str | None = None
        self.serial = next(manager.serials)  # creation order, where a page of sessions starts
        self.dialog_id: str | None = headers.get("dialog_id")  # for a dispatcher that lost its call table

    @property
    def key(self) -> tuple[str, str]:
        return self.call_id, self.caller_tag

    def __str__(self) -> str:
        return self.call_id

    def update(self, headers: dict) -> str:
        from_tag = headers["from_tag"]
        is_caller = from_tag == self.caller_tag
        kind = headers["type"]
        downstream = (not is_caller) != (kind == "request")
        party = CALLER if downstream else CALLEE
        to_tag = headers.get("to_tag")
        if is_caller and to_tag and self.to_tag is None:
            self.to_tag = to_tag
        if self.dialog_id is None and headers.get("dialog_id"):
            self.dialog_id = headers["dialog_id"]
        if party == CALLER and self.caller_ua is None:
            self.caller_ua = headers["user_agent"]
        elif party == CALLEE and self.callee_ua is None:
            self.callee_ua = headers["user_agent"]
        cseq = headers["cseq"]
        pair = (cseq, self.pair[1]) if is_caller else (self.pair[0], cseq)
        media = headers.get("media")
        # where this message came from: the party's address as the proxy saw it, for latching
        source_ip = parse_signaling_ip(headers["signaling_ip"]).caller_ip
        if pair > self.pair:
            if media is not None:
                self._offer(pair, party, media, source_ip)
        elif pair == self.pair:
            self._answer(party, media, source_ip)
        else:
            log.info("Got old CSeq {cseq} for call {call_id}; ignoring its SDP", cseq=cseq, call_id=self.call_id)
        return self._reply(0 if is_caller else 1, cseq, downstream, media is not None)

    def _offer(self, pair: tuple[int, int], party: str, media: list, source_ip: str | None) -> None:
        current = [stream for stream in self.offers.get(self.pair, []) if stream.alive]
        offered: list[Stream] = []
        created: list[Stream] = []
        try:
            for entry in media:
                stream = next((s for s in current if s not in offered and s.matches(party, entry)), None)
                if stream is None:
                    stream = self.manager.create_stream(self, entry.media_type)
                    created.append(stream)
                stream.describe_party(party, entry, source_ip)
                if entry.port == 0:
                    stream.close("closed")
                offered.append(stream)
        except PortsExhausted as error:
            for stream in created:
                stream.close("closed")
            raise UpdateError(f"cannot relay call {self.call_id}: {error}") from None
        self.streams.extend(created)
        for stream in self.offers.get(self.previous_pair, []) if self.previous_pair is not None else []:
            if stream not in current and stream not in offered:
                stream.close("closed")
        self.previous_pair, self.pair = self.pair, pair
        self.offers[pair] = offered

    def _answer(self, party: str, media: list | None, source_ip: str | None) -> None:
        now = self.clock.seconds()
        if self.start_time is None:
            self.start_time = now
        offered = self.offers.get(self.pair, [])
        for stream in offered:
            if stream.start_time is None:
                stream.start_time = now
        if media is None:
            return  # a 200 OK without SDP confirms the offer as it stands
        for stream, entry in zip(offered, media):
            if stream.media_type != entry.media_type:
                raise UpdateError(f"answer for call {self.call_id} has a {entry.media_type} stream where the offer had {stream.media_type}")
        for stream in offered[len(media) :]:
            stream.close("rejected")
        for stream, entry in zip(offered, media):
            if not stream.alive:
                continue
            if entry.port == 0:
                stream.close("rejected")
            else:
                stream.answer(party, entry, source_ip)
        if self.previous_pair is not None:
            for stream in self.offers.get(self.previous_pair, []):
                if stream not in offered:
                    stream.close("closed")

    def _reply(self, position: int, cseq: int, downstream: bool, has_media: bool) -> str:
        streams = None
        for pair in reversed(self.offers):
            if pair[position] == cseq:
                streams = self.offers[pair]
                break
        if not streams:
            if has_media:
                raise UpdateError(f"no offer of call {self.call_id} matches cseq {cseq}")
            return "None"
        facing = CALLEE if downstream else CALLER
        ports = [str(stream.local(facing)[1]) if stream.status in ALIVE else "0" for stream in streams]
        ip = self.manager.advertised_ip or streams[0].local(facing)[0]
        return " ".join([ip, *ports])

    def alive_streams(self) -> list[Stream]:
        pairs = [self.pair] if self.previous_pair is None else [self.pair, self.previous_pair]
        return [stream for pair in pairs for stream in self.offers.get(pair, []) if stream.alive]

    def stream_expired(self, stream: Stream) -> None:
        if not self.alive_streams():
            self.manager.session_expired(self, records.stream_end_reason(stream.status) or records.NO_TRAFFIC)

    def end(self, reason: str) -> None:
        """Close every stream; the session keeps its statistics."""
        if self.ended:
            return
        self.ended = True
        self.end_reason = reason
        self.end_time = self.clock.seconds()
        for stream in self.streams:
            stream.close("closed")

    @property
    def duration(self) -> int:
        if self.start_time is None:
            return 0
        return int((self.end_time if self.end_time is not None else self.clock.seconds()) - self.start_time)

    def userspace_packets(self) -> int:
        return sum(side.packets for stream in self.streams for side in stream.all_sides())

    def suspend(self) -> None:
        """Close the sockets and timers, keeping the state: the process is going away, the call is not."""
        for stream in self.streams:
            stream.suspend()

    def relayed_bytes(self) -> int:
        return sum(stream.counters(CALLER)[1] + stream.counters(CALLEE)[1] for stream in self.streams)

    def statistics(self) -> dict:
        duration = self.duration
        answered = sorted((stream for stream in self.streams if stream.start_time is not None), key=lambda stream: stream.start_time)
        return {
            "call_id": self.call_id,
            "from_tag": self.caller_tag,
            "from_uri": self.from_uri,
            "to_tag": self.to_tag,
            "to_uri": self.to_uri,
            "start_time": self.start_time,
            "duration": duration,
            "caller_ua": self.caller_ua or "Unknown",
            "callee_ua": self.callee_ua or "Unknown",
            "username": self.signaling.username,
            "end_reason": self.end_reason,
            "dialog_id": self.dialog_id,
            "streams": [stream.statistics(self.start_time, duration) for stream in answered],
        }


class NoKernelForwarding:
    """The forwarder used when the kernel path is off: everything stays in userspace."""

    name = "userspace"
    kept: frozenset = frozenset()

    def start(self, keep: frozenset = frozenset()) -> None:
        pass

    def stop(self, keep_entries: bool = False) -> None:
        pass

    def adopt(self, substream) -> bool:  # noqa: ANN001
        return False

    def offload(self, substream) -> None:  # noqa: ANN001
        pass

    def remove(self, substream) -> None:  # noqa: ANN001
        substream.kernel = None

    def counters(self, substream, party: str) -> tuple[int, int]:  # noqa: ANN001
        return 0, 0


class SessionManager:
    def __init__(
        self, clock, config, binder, on_expired, relay_ip: str, forwarder=None, bind_addresses=None, idle_timeout: int = 120
    ) -> None:  # noqa: ANN001, PLR0913
        self.clock = clock
        self.idle_timeout = idle_timeout
        self._idle_loop: task.LoopingCall | None = None
        self.pool = PortPool(config.port_range)
        self.binder = binder
        self.on_expired = on_expired
        self.relay_ip = relay_ip
        self.advertised_ip = config.advertised_ip
        self.stream_timeout = config.stream_timeout
        self.on_hold_timeout = config.on_hold_timeout
        self.transmit_every = config.userspace_transmit_every
        self.stun_queue_packets = config.stun_queue_packets
        self.stun_queue_bytes = config.stun_queue_bytes
        self.latch_window = config.latch_window
        self.refusals = Refusals(clock)
        self.routable = Routability(config.routable_private_ranges)
        self.forwarder = forwarder or NoKernelForwarding()
        self.bind_addresses = bind_addresses or (lambda signaling: (relay_ip, relay_ip))
        self.sessions: dict[tuple[str, str], Session] = {}  # in creation order: ascending serials
        self.serials = itertools.count(1)
        self.halting = False
        self.started = clock.seconds()
        self.closed_bytes = 0
        self.state = None  # a statefile.StateFile keeping the sessions across restarts, once restored
        self._changed: set[tuple[str, str]] = set()
        self._kept_packets: dict[tuple[str, str], int] = {}
        self._save_loops: list[task.LoopingCall] = []
        self._keeping = None  # the call that keeps what changed in this reactor turn

    def find(self, call_id: str, from_tag: str, to_tag: str | None) -> Session | None:
        session = self.sessions.get((call_id, from_tag))
        if session is None and to_tag:
            session = self.sessions.get((call_id, to_tag))
        return session

    def update(self, headers: dict, dispatcher: object = None) -> str:
        missing = [name for name in UPDATE_REQUIRED if name not in headers]
        if missing:
            raise UpdateError("update without " + ", ".join(missing))
        session = self.find(headers["call_id"], headers["from_tag"], headers.get("to_tag"))
        if session is not None:
            try:
                return session.update(headers)
            finally:
                self.keep(session)
        if self.halting:
            raise Halting()
        if headers["type"] == "reply" and headers.get("media") is None:
            return "None"
        session = Session(self, headers, dispatcher)
        try:
            reply = session.update(headers)
        except Exception:
            session.end(records.BYE)
            raise
        self.sessions[session.key] = session
        self.keep(session)
        log.info("New session {call_id} ({streams} streams)", call_id=session.call_id, streams=len(session.streams))
        return reply

    def remove(self, headers: dict) -> dict:
        missing = [name for name in REMOVE_REQUIRED if name not in headers]
        if missing:
            raise UpdateError("remove without " + ", ".join(missing))
        session = self.find(headers["call_id"], headers["from_tag"], headers.get("to_tag"))
        if session is None:
            raise UpdateError(f"remove for unknown session {headers['call_id']}")
        return self._close(session, records.BYE)

    def _close(self, session: Session, reason: str) -> dict:
        session.end(reason)
        self.sessions.pop(session.key, None)
        self._changed.discard(session.key)
        self._kept_packets.pop(session.key, None)
        if self.state is not None:
            self.state.pop(persist.session_key(session))
        self.closed_bytes += session.relayed_bytes()
        return session.statistics()

    def session_expired(self, session: Session, reason: str) -> None:
        if session.key not in self.sessions:
            return
        statistics = self._close(session, reason)
        log.info("Session {call_id} expired ({reason})", call_id=session.call_id, reason=reason)
        self.on_expired(session, statistics)

    # -- kept across restarts

    def changed(self, session: Session) -> None:
        """Something no command made changed (a latch, first media, the kernel path): keep it at the
        end of this reactor turn, so a relay killed right after still finds it (and its kernel entry)."""
        if self.state is not None:
            self._changed.add(session.key)
            if self._keeping is None:
                self._keeping = self.clock.callLater(0, self.keep_changed)

    def keep(self, session: Session) -> None:
        if self.state is not None and self.sessions.get(session.key) is session:
            self.state.set(persist.session_key(session), persist.dump_session(session))
            self._changed.discard(session.key)
            self._kept_packets[session.key] = session.userspace_packets()

    def keep_changed(self) -> None:
        self._keeping = None
        changed, self._changed = self._changed, set()
        for key in changed:
            session = self.sessions.get(key)
            if session is not None:
                self.keep(session)

    def keep_counters(self) -> None:
        for key, session in self.sessions.items():
            if session.userspace_packets() != self._kept_packets.get(key):
                self.keep(session)

    def restore(self, state, kept: dict) -> int:  # noqa: ANN001 - a statefile.StateFile
        """Take back the sessions ``kept`` (what ``state`` loaded; their kernel entries those the
        forwarder kept), then keep every change to them in ``state``; returns how many came back."""
        for key, saved in kept.items():
            try:
                session = persist.load_session(self, saved)
            except (OSError, PortsExhausted, KeyError, TypeError, ValueError, AttributeError) as error:
                log.error("Cannot take back session {key} kept from the last run: {error}", key=key, error=error)
                continue
            self.sessions[session.key] = session
        self.state = state
        state.open(
            lambda: {persist.session_key(session): persist.dump_session(session) for session in self.sessions.values()},
            lambda: len(self.sessions),
        )
        for session in self.sessions.values():
            self._kept_packets[session.key] = session.userspace_packets()
        loop = task.LoopingCall(self.keep_counters)
        loop.clock = self.clock
        loop.start(COUNTERS_INTERVAL, now=False)
        self._save_loops.append(loop)
        return len(self.sessions)

    def suspend(self) -> None:
        """The relay stops and will start again: keep everything, close the sockets, end nothing."""
        self.close_state()  # the whole state, written once more
        for session in self.sessions.values():
            session.suspend()

    def close_state(self) -> None:
        self._stop_keeping()
        if self.state is not None:
            self.state.close()
            self.state = None

    def _stop_keeping(self) -> None:
        for loop in self._save_loops:
            if loop.running:
                loop.stop()
        if self._keeping is not None and self._keeping.active():
            self._keeping.cancel()
        self._keeping = None

    def start_idle_checks(self) -> None:
        """Expire substreams forwarded in userspace that stopped, as the kernel does for its entries."""
        self._idle_loop = task.LoopingCall(self.check_idle)
        self._idle_loop.clock = self.clock
        self._idle_loop.start(max(1, min(5, self.idle_timeout // 4)), now=False)

    def stop_idle_checks(self) -> None:
        if self._idle_loop is not None and self._idle_loop.running:
            self._idle_loop.stop()

    def check_idle(self) -> None:
        now = self.clock.seconds()
        for session in list(self.sessions.values()):
            for stream in list(session.streams):
                if stream.alive:
                    stream.rtcp.check_idle(now, self.idle_timeout)
                    stream.rtp.check_idle(now, self.idle_timeout)

    def expire_all(self) -> None:
        """The relay stops: every session ends, and its record says so."""
        for session in list(self.sessions.values()):
            self.session_expired(session, records.RELAY_SHUTDOWN)

    def create_stream(self, session: Session, media_type: str) -> Stream:
        caller_ip, callee_ip = self.bind_addresses(session.signaling)
        caller = self.pool.allocate(lambda port: self.binder(caller_ip, port))
        try:
            callee = self.pool.allocate(lambda port: self.binder(callee_ip, port))
        except PortsExhausted:
            for endpoint in caller[1]:
                endpoint.close()
            self.pool.release(caller[0])
            raise
        return Stream(session, media_type, (caller, callee), self)

    def release_ports(self, stream: Stream) -> None:
        self.pool.release(stream.caller_port)
        self.pool.release(stream.callee_port)

    def statistics(self) -> list[dict]:
        return [session.statistics() for session in self.sessions.values()]

    def stream_count(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for session in self.sessions.values():
            for stream in session.streams:
                if stream.alive:
                    counts[stream.media_type] = counts.get(stream.media_type, 0) + 1
        return counts

    def summary(self, bps_relayed: float) -> dict:
        return {
            "ip": self.relay_ip,
            "version": __version__,
            "status": "halting" if self.halting else "active",
            "uptime": int(self.clock.seconds() - self.started),
            "session_count": len(self.sessions),
            "stream_count": self.stream_count(),
            "bps_relayed": bps_relayed,
            "refused": self.refusals.snapshot(),
        }
