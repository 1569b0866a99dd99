"""The relay's session manager: the registry of calls, and the one place where model and plane meet.

Commands (update, remove) and what the plane notices (a packet that changed something, a kernel
entry that timed out, a deadline, an idle substream) go into the model; the events the model
queues in the session's outbox come back out here and are carried out on the plane: kernel
entries, sockets and ports, the state file, logs and refusal counters.
"""

from __future__ import annotations

import itertools

from mediaproxy.net.ratelimit import Refusals
from mediaproxy.relay import eventlog
from mediaproxy.relay.deadlines import Deadlines
from mediaproxy.relay.keeping import Keeping, take_counts
from mediaproxy.relay.model import events, serialize
from mediaproxy.relay.model.media import Substream
from mediaproxy.relay.model.paths import KERNEL, LAPSED, USERSPACE
from mediaproxy.relay.model.policy import MediaPolicy
from mediaproxy.relay.model.session import NoPorts, Session, UpdateError
from mediaproxy.relay.model.sides import CALLEE, CALLER
from mediaproxy.relay.model.stream import Stream
from mediaproxy.relay.plane.choice import NoKernelForwarding
from mediaproxy.relay.plane.conntrack import Flow
from mediaproxy.relay.plane.ports import PortPool, PortsExhausted
from mediaproxy.relay.registry import SessionRegistry
from mediaproxy.runtime.log import Logger
from mediaproxy.wire import statistics as records
from mediaproxy.wire.headers import REMOVE_REQUIRED, UPDATE_REQUIRED
from mediaproxy.wire.update import UpdateReply

log = Logger(namespace="relay.session")
media_log = Logger(namespace="relay.media")

__all__ = ["Halting", "SessionManager", "UpdateError"]


class Halting(Exception):
    """The relay is draining: no new sessions."""


def flow(substream: Substream) -> Flow:
    """What the kernel entry of a substream does, both parties learnt."""
    return Flow(
        caller_remote=substream.caller.remote,
        caller_local=substream.local(CALLER),
        callee_remote=substream.callee.remote,
        callee_local=substream.local(CALLEE),
    )


def take_back(saved: dict, serial: int, policy: MediaPolicy, clock, pool: PortPool, binder, forwarder) -> Session:  # IBinder, IForwarder
    """A kept session, its live streams' ports claimed and bound again and its kernel entries
    (those the forwarder kept at start) taken back."""
    session = serialize.load_session(saved, serial, policy, clock)
    claimed: list[tuple] = []  # (port, endpoints) bound so far, undone if a later one fails
    try:
        for stream in session.streams:
            if not stream.alive:
                continue
            caller_ip, callee_ip = stream.local_ips
            caller = pool.claim(stream.caller_port, lambda port, ip=caller_ip: binder(ip, port))
            claimed.append(caller)
            callee = pool.claim(stream.callee_port, lambda port, ip=callee_ip: binder(ip, port))
            claimed.append(callee)
            stream.attach(caller[1], callee[1])
    except Exception:
        for port, endpoints in claimed:
            for endpoint in endpoints:
                endpoint.close()
            pool.release(port)
        raise
    for stream in session.streams:
        if stream.alive:
            for substream in (stream.rtp, stream.rtcp):
                _adopt(substream, forwarder)
    session.outbox.clear()  # nothing to carry out: this is how it was
    return session


def _adopt(substream: Substream, forwarder) -> None:  # an IForwarder
    if substream.caller.remote is None or substream.callee.remote is None:
        return
    if forwarder.adopt(substream, flow(substream)):
        substream.adopted()
    elif substream.path == KERNEL:
        substream.path = LAPSED  # the entry lapsed while the relay was away: media that comes now goes back


class SessionManager:
    def __init__(
        self, clock, config, binder, on_expired, relay_ip: str, forwarder=None, bind_addresses=None, idle_timeout: int = 120
    ) -> None:
        self.clock = clock
        self.policy = MediaPolicy.from_config(config)
        self.idle_timeout = idle_timeout
        self.pool = PortPool(config.port_range)
        self._binder = None
        self.binder = binder
        self.on_expired = on_expired
        self.relay_ip = relay_ip
        self.refusals = Refusals(clock)
        self._forwarder = None
        self.forwarder = forwarder or NoKernelForwarding()
        both = (relay_ip, relay_ip)  # one tuple for every stream
        self.bind_addresses = bind_addresses or (lambda signaling: both)
        self.deadlines = Deadlines(clock, self._deadline_due)
        self.registry = SessionRegistry()
        self.sessions = self.registry.sessions  # by key, in creation order: the hot paths read it directly
        self.serials = itertools.count(1)
        self.halting = False
        self.started = clock.seconds()
        self.closed_bytes = 0
        self.closed_packets = 0
        self.ended: dict[str, int] = {}  # sessions ended since the start, by end reason
        self.keeping = Keeping(clock, self.sessions, lambda substream: self._forwarder.checkpoint(substream))
        self._handlers = {
            events.Changed: lambda event: self.keeping.changed(event.session),
            events.OldCseq: eventlog.old_cseq,
            events.Learnt: eventlog.learnt,
            events.Offload: self._on_offload,
            events.Unload: self._on_unload,
            events.PathChanged: lambda event: eventlog.path_changed(event, self._forwarder),
            events.HoldChanged: eventlog.hold_changed,
            events.Moved: eventlog.moved,
            events.Relearning: eventlog.relearning,
            events.IceUnselected: eventlog.ice_unselected,
            events.StreamEnded: self._on_stream_ended,
            events.SessionExpired: lambda event: self.session_expired(event.session, event.reason),
            events.Refused: lambda event: eventlog.refused(event, self.refusals),
        }

    @property
    def binder(self):  # a plane.interfaces.IBinder
        return self._binder

    @binder.setter
    def binder(self, binder) -> None:
        self._binder = binder
        binder.sink = self.drain

    @property
    def forwarder(self):  # a plane.interfaces.IForwarder
        return self._forwarder

    @forwarder.setter
    def forwarder(self, forwarder) -> None:
        self._forwarder = forwarder
        forwarder.on_gone = self._kernel_entry_gone

    def live_counters(self, substream: Substream) -> tuple | None:
        return self._forwarder.counters(substream)

    # -- commands

    def update(self, headers: dict, dispatcher: object = None) -> str:
        missing = [name for name in UPDATE_REQUIRED if name not in headers]
        if missing:
            raise UpdateError("update without " + ", ".join(missing))
        session = self.registry.find(headers["call_id"], headers["from_tag"], headers.get("to_tag"))
        if session is not None:
            return self._update(session, headers)
        if self.halting:
            raise Halting()
        if headers["type"] == "reply" and headers.get("media") is None:
            return UpdateReply(None).format()
        return self._new_session(headers, dispatcher)

    def _update(self, session: Session, headers: dict) -> str:
        answered = session.start_time is not None
        try:
            return session.update(headers, self._open_stream)
        finally:
            self.drain(session)
            self._watch(session)
            self.keeping.keep(session)
            if not answered and session.start_time is not None:
                log.info("Session {call_id} answered ({streams} streams)", call_id=session.call_id, streams=len(session.streams))

    def _new_session(self, headers: dict, dispatcher: object) -> str:
        session = Session(headers, dispatcher, next(self.serials), self.policy, self.clock)
        try:
            reply = session.update(headers, self._open_stream)
        except Exception:
            session.end(records.BYE)
            self.drain(session)
            raise
        self.registry.add(session)
        self.drain(session)
        self._watch(session)
        self.keeping.keep(session)
        log.info("New session {call_id} ({streams} streams)", call_id=session.call_id, streams=len(session.streams))
        return reply

    def remove(self, headers: dict) -> dict:
        missing = [name for name in REMOVE_REQUIRED if name not in headers]
        if missing:
            raise UpdateError("remove without " + ", ".join(missing))
        session = self.registry.find(headers["call_id"], headers["from_tag"], headers.get("to_tag"))
        if session is None:
            raise UpdateError(f"remove for unknown session {headers['call_id']}")
        return self._close(session, records.BYE)

    def _close(self, session: Session, reason: str) -> dict:
        session.end(reason)
        self.drain(session)
        self.registry.discard(session)
        self.keeping.forget(session)
        packets, bytes_ = session.relayed()
        self.closed_packets += packets
        self.closed_bytes += bytes_
        self.ended[reason] = self.ended.get(reason, 0) + 1
        record = session.statistics()
        log.info(
            "Session {call_id} {how} ({reason}) after {duration}s; {traffic}",
            call_id=session.call_id,
            how="ended" if reason in (records.BYE, records.RELAY_SHUTDOWN) else "expired",
            reason=reason,
            duration=record.duration,
            traffic=record.traffic(),
        )
        return record.as_json()

    def session_expired(self, session: Session, reason: str) -> None:
        if session.key not in self.sessions:
            return
        statistics = self._close(session, reason)
        self.on_expired(session, statistics)

    def expire_all(self) -> None:
        """The relay stops: every session ends, and its record says so."""
        for session in list(self.sessions.values()):
            self.session_expired(session, records.RELAY_SHUTDOWN)

    def _open_stream(self, session: Session, media_type: str) -> Stream:
        local_ips = self.bind_addresses(session.signaling)
        caller_ip, callee_ip = local_ips
        try:
            caller = self.pool.allocate(lambda port: self.binder(caller_ip, port))
            try:
                callee = self.pool.allocate(lambda port: self.binder(callee_ip, port))
            except PortsExhausted:
                for endpoint in caller[1]:
                    endpoint.close()
                self.pool.release(caller[0])
                raise
        except PortsExhausted as error:
            raise NoPorts(str(error)) from None
        stream = Stream(session, media_type, (caller[0], callee[0]), local_ips)
        stream.attach(caller[1], callee[1])
        return stream

    # -- what the plane noticed

    def drain(self, session: Session) -> None:
        """Carry out the events the model queued for ``session``, in order."""
        while queued := session.take_events():
            for event in queued:
                self._handlers[type(event)](event)

    def _watch(self, session: Session) -> None:
        for stream in session.streams:
            if stream.alive:
                self.deadlines.watch(stream)

    def _deadline_due(self, stream: Stream, now: float) -> None:
        stream.deadlines_due(now)
        self.drain(stream.session)
        self.deadlines.watch(stream)

    def _kernel_entry_gone(self, substream: Substream, counts: tuple, timeout_wait: int) -> None:
        substream.kernel_entry_gone(counts, timeout_wait)
        self.drain(substream.stream.session)

    @property
    def idle_check_interval(self) -> int:
        """How often :meth:`check_idle` runs: a quarter of the idle timeout, 1 to 5 s."""
        return max(1, min(5, self.idle_timeout // 4))

    def check_idle(self) -> None:
        """Expire substreams forwarded in userspace that stopped, as the kernel does for its entries;
        settle the sides whose latch is final (Side.settle)."""
        now = self.clock.seconds()
        for session in list(self.sessions.values()):
            for stream in list(session.streams):
                if stream.alive:
                    # and settle the latches that are past their window (and those a restart reopened)
                    stream.rtp.settle(now)
                    stream.rtcp.settle(now)
                    stream.rtcp.check_idle(now, self.idle_timeout)
                    stream.rtp.check_idle(now, self.idle_timeout)
            self.drain(session)

    # -- the model's events (those that only say something in the log: relay/eventlog.py)

    def _on_offload(self, event: events.Offload) -> None:
        substream = event.substream
        if not substream.stream.alive or substream.path == KERNEL:
            return
        substream.set_path(KERNEL if self._forwarder.offload(substream, flow(substream)) else USERSPACE)

    def _on_unload(self, event: events.Unload) -> None:
        final = self._forwarder.remove(event.substream)
        if final is not None:
            event.substream.add_kernel_counts(*final)

    def _on_stream_ended(self, event: events.StreamEnded) -> None:
        stream = event.stream
        for endpoint in stream.endpoints():
            endpoint.close()
        self.pool.release(stream.caller_port)
        self.pool.release(stream.callee_port)
        self.deadlines.forget(stream)
        eventlog.stream_ended(stream)

    # -- kept across restarts (relay/keeping.py)

    def restore(self, state, kept: dict) -> int:  # a statefile.StateFile
        """Take back the sessions ``kept`` (what ``state`` loaded; their kernel entries those the
        forwarder kept), then keep every change to them in ``state``; returns how many came back."""
        ports: set[int] = set()
        for saved in kept.values():
            try:
                ports |= serialize.kept_ports(saved)
            except (KeyError, TypeError, ValueError, AttributeError):
                continue  # the session itself says what is wrong with it below
        self.pool.reserve(ports)
        for key, saved in kept.items():
            try:
                session = take_back(saved, next(self.serials), self.policy, self.clock, self.pool, self.binder, self._forwarder)
            except (OSError, PortsExhausted, KeyError, TypeError, ValueError, AttributeError) as error:
                log.error("Cannot take back session {key} kept from the last run: {error}", key=key, error=error)
                continue
            self.registry.add(session)
            self._watch(session)
        self.pool.unreserve()
        self.keeping.open(state)
        return len(self.sessions)

    def suspend(self) -> None:
        """The relay stops and will start again: keep everything, close the sockets, end nothing."""
        if not self._forwarder.keeps_entries:
            # worker processes end with the relay: what they counted goes into the kept state
            for session in self.sessions.values():
                take_counts(session, self._forwarder.remove)
        self.keeping.close()  # the whole state, written once more
        self.deadlines.stop()
        for session in self.sessions.values():
            for stream in session.streams:
                for endpoint in stream.endpoints():
                    endpoint.close()
