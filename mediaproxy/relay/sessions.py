"""The relay's session manager: the registry of calls, and the one place where model and plane meet.

Commands (update, remove) and what the plane notices (a packet that changed something, a kernel
entry that timed out, a deadline, an idle substream) go into the model; the events the model
queues in the session's outbox come back out here and are carried out on the plane: kernel
entries, sockets and ports, the state file, logs and refusal counters.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterator

from mediaproxy import __version__
from mediaproxy.net.ratelimit import Refusals
from mediaproxy.relay.deadlines import Deadlines
from mediaproxy.relay.model import events, serialize
from mediaproxy.relay.model.media import CALLEE, CALLER, KERNEL, LAPSED, LEARNING, USERSPACE, Stream, Substream, address_text
from mediaproxy.relay.model.policy import MediaPolicy
from mediaproxy.relay.model.session import NoPorts, Session, UpdateError
from mediaproxy.relay.plane.choice import NoKernelForwarding
from mediaproxy.relay.plane.conntrack import Flow
from mediaproxy.relay.plane.ports import PortPool, PortsExhausted
from mediaproxy.runtime import heap
from mediaproxy.runtime.log import Logger
from mediaproxy.wire import statistics as records
from mediaproxy.wire.headers import REMOVE_REQUIRED, UPDATE_REQUIRED
from mediaproxy.wire.update import UpdateReply

log = Logger(namespace="relay.session")
media_log = Logger(namespace="relay.media")

# how often sessions whose userspace counters moved are kept (a crash loses at most this much counting)
COUNTERS_INTERVAL = 60

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
        self.sessions: dict[tuple[str, str], Session] = {}  # in creation order: ascending serials
        # for the dispatchers' listings: pages start at a serial, lookups name a call
        self._serials: list[int] = []  # ascending
        self._ordered: list[Session] = []  # the sessions of _serials, in the same order
        # call_id → its session, or for the rare call with several (forked), a dict of them by key:
        # a dict for every call would cost a few hundred bytes each
        self._by_call: dict[str, Session | dict[tuple[str, str], Session]] = {}
        self.serials = itertools.count(1)
        self.halting = False
        self.started = clock.seconds()
        self.closed_bytes = 0
        self.closed_packets = 0
        self.ended: dict[str, int] = {}  # sessions ended since the start, by end reason
        self.state = None  # a statefile.StateFile keeping the sessions across restarts, once restored
        self._changed: set[tuple[str, str]] = set()
        self._keeping = None  # the call that keeps what changed in this reactor turn
        self._handlers = {
            events.Changed: self._on_changed,
            events.OldCseq: self._on_old_cseq,
            events.Learnt: self._on_learnt,
            events.Offload: self._on_offload,
            events.Unload: self._on_unload,
            events.PathChanged: self._on_path_changed,
            events.HoldChanged: self._on_hold_changed,
            events.Moved: self._on_moved,
            events.Relearning: self._on_relearning,
            events.IceUnselected: self._on_ice_unselected,
            events.StreamEnded: self._on_stream_ended,
            events.SessionExpired: self._on_session_expired,
            events.Refused: self._on_refused,
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
            answered = session.start_time is not None
            try:
                return session.update(headers, self._open_stream)
            finally:
                self.drain(session)
                self._watch(session)
                self.keep(session)
                if not answered and session.start_time is not None:
                    log.info("Session {call_id} answered ({streams} streams)", call_id=session.call_id, streams=len(session.streams))
        if self.halting:
            raise Halting()
        if headers["type"] == "reply" and headers.get("media") is None:
            return UpdateReply(None).format()
        session = Session(headers, dispatcher, next(self.serials), self.policy, self.clock)
        try:
            reply = session.update(headers, self._open_stream)
        except Exception:
            session.end(records.BYE)
            self.drain(session)
            raise
        self._register(session)
        self.drain(session)
        self._watch(session)
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

    def _register(self, session: Session) -> None:
        replaced = self.sessions.get(session.key)
        if replaced is not None:
            self._unregister(replaced)
        self.sessions[session.key] = session
        self._serials.append(session.serial)  # serials only grow: the list stays sorted
        self._ordered.append(session)
        of_call = self._by_call.get(session.call_id)
        if of_call is None:
            self._by_call[session.call_id] = session
        elif isinstance(of_call, dict):
            of_call[session.key] = session
        else:
            self._by_call[session.call_id] = {of_call.key: of_call, session.key: session}

    def _unregister(self, session: Session) -> None:
        if self.sessions.pop(session.key, None) is None:
            return
        index = bisect.bisect_left(self._serials, session.serial)
        del self._serials[index]
        del self._ordered[index]
        of_call = self._by_call[session.call_id]
        if not isinstance(of_call, dict):
            del self._by_call[session.call_id]
            return
        del of_call[session.key]
        if len(of_call) == 1:
            (self._by_call[session.call_id],) = of_call.values()

    def listing(self, position: int, call_id: str | None = None) -> Iterator[Session]:
        """The sessions from serial ``position`` on, in serial order; only ``call_id``'s when given.
        Finds where to start without walking the sessions before it."""
        if call_id is not None:
            of_call = self._by_call.get(call_id)
            found = [] if of_call is None else of_call.values() if isinstance(of_call, dict) else [of_call]
            return (session for session in found if session.serial >= position)
        start = bisect.bisect_left(self._serials, position)
        return itertools.islice(self._ordered, start, None)

    def _close(self, session: Session, reason: str) -> dict:
        session.end(reason)
        self.drain(session)
        self._unregister(session)
        self._changed.discard(session.key)
        if self.state is not None:
            self.state.pop(session.key)
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

    # -- the model's events

    def _on_changed(self, event: events.Changed) -> None:
        self.changed(event.session)

    def _on_old_cseq(self, event: events.OldCseq) -> None:
        log.info("Got old CSeq {cseq} for call {call_id}; ignoring its SDP", cseq=event.cseq, call_id=event.session.call_id)

    def _on_learnt(self, event: events.Learnt) -> None:
        replaced = event.replaced
        # taking a stream from another source is worth an operator's attention; learning is not
        (media_log.info if replaced else media_log.debug)(
            "{substream} {party} learnt at {ip}:{port}{replacing}",
            substream=event.substream,
            party=event.party,
            ip=event.address[0],
            port=event.address[1],
            replacing=f", replacing {address_text(replaced)} that fits the signalling less" if replaced else "",
        )

    def _on_offload(self, event: events.Offload) -> None:
        substream = event.substream
        if not substream.stream.alive or substream.path == KERNEL:
            return
        substream.set_path(KERNEL if self._forwarder.offload(substream, flow(substream)) else USERSPACE)

    def _on_unload(self, event: events.Unload) -> None:
        final = self._forwarder.remove(event.substream)
        if final is not None:
            event.substream.add_kernel_counts(*final)

    def _on_path_changed(self, event: events.PathChanged) -> None:
        # the RTP's path is the stream's (one line per change); RTCP follows it
        (media_log.info if event.substream.kind == "rtp" else media_log.debug)(
            "{substream}: {old} → {new}", substream=event.substream, old=self.logged_path(event.old), new=self.logged_path(event.new)
        )

    def _on_hold_changed(self, event: events.HoldChanged) -> None:
        media_log.info("{stream} is {state}", stream=event.stream, state="on hold" if event.on_hold else "off hold")

    def _on_moved(self, event: events.Moved) -> None:
        ip, port = event.address
        media_log.info("{party} of {stream} moved to {ip}:{port}", party=event.party, stream=event.stream, ip=ip, port=port)

    def _on_relearning(self, event: events.Relearning) -> None:
        media_log.debug("{substream} expired ({reason}); will learn it afresh", substream=event.substream, reason=event.reason)

    def _on_ice_unselected(self, event: events.IceUnselected) -> None:
        if not event.probed:
            media_log.info("ICE stream {stream} expired and neither side sent a STUN binding request", stream=event.stream)

    def _on_stream_ended(self, event: events.StreamEnded) -> None:
        stream = event.stream
        for endpoint in stream.endpoints():
            endpoint.close()
        self.pool.release(stream.caller_port)
        self.pool.release(stream.callee_port)
        self.deadlines.forget(stream)
        if stream.status not in ("closed", "rejected"):
            media_log.info("{stream} ended: {status}", stream=stream, status=stream.status)

    def _on_session_expired(self, event: events.SessionExpired) -> None:
        self.session_expired(event.session, event.reason)

    def _on_refused(self, event: events.Refused) -> None:
        if event.kind == "stun_queue_full":
            self.refusals.refuse(
                event.kind,
                event.peer,
                media_log,
                "STUN from {peer} for {stream} dropped: the queue waiting for the other party is full",
                stream=str(event.substream.stream),
            )
        else:
            side = event.substream.side(event.detail)
            self.refusals.refuse(
                event.kind,
                event.peer,
                media_log,
                "Packets from {peer} to {stream} ignored: the {party} is latched to {latched}",
                level="info",
                stream=str(event.substream.stream),
                party=event.detail,
                latched=address_text(side.remote),
            )

    # -- kept across restarts

    def changed(self, session: Session) -> None:
        """Something no command made changed (a latch, first media, the kernel path): keep it at the
        end of this reactor turn, so a relay killed right after still finds it (and its kernel entry)."""
        if self.state is not None and session.key in self.sessions:
            self._changed.add(session.key)
            if self._keeping is None:
                self._keeping = self.clock.callLater(0, self.keep_changed)

    def keep(self, session: Session) -> None:
        if self.state is not None and self.sessions.get(session.key) is session:
            self.state.set(session.key, serialize.dump_session(session))
            self._changed.discard(session.key)
            session.kept_packets = session.userspace_packets()

    def keep_changed(self) -> None:
        self._keeping = None
        changed, self._changed = self._changed, set()
        for key in changed:
            session = self.sessions.get(key)
            if session is not None:
                self.keep(session)

    def keep_counters(self) -> None:
        """Keep the userspace counters that moved (every COUNTERS_INTERVAL: not worth a write a packet)."""
        if self.state is None:
            return
        checkpoint = self._forwarder.checkpoint
        for session in self.sessions.values():
            moved = self._take_counts(session, checkpoint)
            if moved or session.userspace_packets() != session.kept_packets:
                self.keep(session)
        self.state.squeeze()  # what the last minute's commands kept, deflated off their path
        heap.give_back()  # the texts squeezed and the last statistics listing's pages

    @staticmethod
    def _take_counts(session: Session, take) -> bool:  # the forwarder's checkpoint or remove
        """Fold what a forwarder that ends with the relay (userspace workers) counted into the
        substreams' own counts, so it is kept; True when anything moved."""
        moved = False
        for stream in session.streams:
            for substream in (stream.rtp, stream.rtcp):
                if substream.path == KERNEL:
                    counts = take(substream)
                    if counts is not None and any(counts):
                        substream.add_kernel_counts(*counts)
                        moved = True
        return moved

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
                session = self._take_back(saved)
            except (OSError, PortsExhausted, KeyError, TypeError, ValueError, AttributeError) as error:
                log.error("Cannot take back session {key} kept from the last run: {error}", key=key, error=error)
                continue
            self._register(session)
            self._watch(session)
        self.pool.unreserve()
        self.state = state
        state.open(
            lambda: {session.key: serialize.dump_session(session) for session in self.sessions.values()},
            lambda: len(self.sessions),
        )
        for session in self.sessions.values():
            session.kept_packets = session.userspace_packets()
        return len(self.sessions)

    def _take_back(self, saved: dict) -> Session:
        """A kept session, its live streams' ports claimed and bound again and its kernel entries
        (those the forwarder kept at start) taken back."""
        session = serialize.load_session(saved, next(self.serials), self.policy, self.clock)
        claimed: list[tuple] = []  # (port, endpoints) bound so far, undone if a later one fails
        try:
            for stream in session.streams:
                if not stream.alive:
                    continue
                caller_ip, callee_ip = stream.local_ips
                caller = self.pool.claim(stream.caller_port, lambda port, ip=caller_ip: self.binder(ip, port))
                claimed.append(caller)
                callee = self.pool.claim(stream.callee_port, lambda port, ip=callee_ip: self.binder(ip, port))
                claimed.append(callee)
                stream.attach(caller[1], callee[1])
        except Exception:
            for port, endpoints in claimed:
                for endpoint in endpoints:
                    endpoint.close()
                self.pool.release(port)
            raise
        for stream in session.streams:
            if stream.alive:
                for substream in (stream.rtp, stream.rtcp):
                    self._adopt(substream)
        session.outbox.clear()  # nothing to carry out: this is how it was
        return session

    def _adopt(self, substream: Substream) -> None:
        if substream.caller.remote is None or substream.callee.remote is None:
            return
        if self._forwarder.adopt(substream, flow(substream)):
            substream.adopted()
        elif substream.path == KERNEL:
            substream.path = LAPSED  # the entry lapsed while the relay was away: media that comes now goes back

    def suspend(self) -> None:
        """The relay stops and will start again: keep everything, close the sockets, end nothing."""
        if not self._forwarder.keeps_entries:
            # worker processes end with the relay: what they counted goes into the kept state
            for session in self.sessions.values():
                self._take_counts(session, self._forwarder.remove)
        self.close_state()  # the whole state, written once more
        self.deadlines.stop()
        for session in self.sessions.values():
            for stream in session.streams:
                for endpoint in stream.endpoints():
                    endpoint.close()

    def close_state(self) -> None:
        self._stop_keeping()
        if self.state is not None:
            self.state.close()
            self.state = None

    def _stop_keeping(self) -> None:
        if self._keeping is not None and self._keeping.active():
            self._keeping.cancel()
        self._keeping = None

    # -- reports

    def statistics(self) -> list[dict]:
        """Every session's record, in the JSON form of the relay link."""
        return [self.session_statistics(session).as_json() for session in self.sessions.values()]

    def session_statistics(self, session: Session) -> records.SessionRecord:
        record = session.statistics(self.live_counters)
        for stream in record.streams:
            stream.path = self.shown_path(stream.path)
        return record

    def logged_path(self, path: str) -> str:
        shown = self.shown_path(path)
        return f"{shown} worker" if path == KERNEL and shown != KERNEL else shown

    def shown_path(self, path: str | None) -> str | None:
        """What an operator is told of a path: an offloaded substream is "kernel" in the model, and
        "userspace" when userspace workers took it."""
        return self._forwarder.name if path == KERNEL else path

    def relayed_bytes(self) -> int:
        """Bytes relayed by the sessions alive now (the kernel's live counters included)."""
        return sum(session.relayed_bytes(self.live_counters) for session in self.sessions.values())

    def stream_count(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for session in self.sessions.values():
            for stream in session.streams:
                if stream.alive:
                    counts[stream.media_type] = counts.get(stream.media_type, 0) + 1
        return counts

    def metrics(self) -> dict:
        """Counts for monitoring (the summary's ``metrics``): alive streams by the path their RTP
        takes (or on hold), packets and bytes relayed since the start, sessions ended by reason,
        ports of ``port_range`` in use and free."""
        streams = {LEARNING: 0, USERSPACE: 0, KERNEL: 0, "on hold": 0}
        packets, bytes_ = self.closed_packets, self.closed_bytes
        for session in self.sessions.values():
            session_packets, session_bytes = session.relayed(self.live_counters)
            packets += session_packets
            bytes_ += session_bytes
            for stream in session.streams:
                path = self.shown_path(stream.path_taken())
                if path is not None:
                    streams[path if path in streams else LEARNING] += 1
        used = len(self.pool.in_use)
        return {
            "streams": streams,
            "packets_relayed": packets,
            "bytes_relayed": bytes_,
            "sessions_ended": dict(self.ended),
            "ports": {"used": used, "free": self.pool.total - used},
        }

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
            "metrics": self.metrics(),
        }
