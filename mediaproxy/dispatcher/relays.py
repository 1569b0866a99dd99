"""Relays connected to the dispatcher: the TLS link, per-command timeouts, relay states."""

from __future__ import annotations

import random
import time

from twisted.internet import defer, protocol
from twisted.internet.interfaces import IHandshakeListener
from zope.interface import implementer

from mediaproxy.net.lineprotocol import BoundedLineReceiver
from mediaproxy.runtime.log import Logger
from mediaproxy.wire import relaylink, statistics
from mediaproxy.wire.lines import OverlongLine

log = Logger(namespace="dispatcher.relays")

# a bound on one listing: pages hold at least one session each, and no relay has this many
MAX_PAGES = 100_000


class RelayError(Exception):
    """The relay answered ``error``."""


class RelayHalting(RelayError):
    """The relay is draining and takes no new sessions."""


class RelayTimeout(RelayError):
    """No answer within relay_timeout."""


class RelayDisconnected(RelayError):
    """The link went away before the answer came."""


@implementer(IHandshakeListener)
class RelayLink(BoundedLineReceiver):
    MAX_LENGTH = relaylink.MAX_RELAY_LINE

    def __init__(self, registry: RelayRegistry) -> None:
        self.registry = registry
        self.ip: str | None = None
        self.seq = 0
        # seq → (its Deferred, when it times out, when it went out): in the order sent, which is
        # the order of the deadlines (one timeout for all), so one timer serves every command
        self.pending: dict[int, tuple[defer.Deferred, float, float]] = {}
        self._expiry = None  # the timer for the oldest command's deadline
        self.round_trip: float | None = None  # seconds from command to answer, the latest
        self.halting = False
        self.timedout = False
        self.accepted = False
        self._recover_timer = None

    @property
    def active(self) -> bool:
        return self.accepted and not self.halting and not self.timedout

    def connectionMade(self) -> None:  # noqa: N802
        self.ip = self.transport.getPeer().host

    def handshakeCompleted(self) -> None:  # noqa: N802
        if self.registry.verifier.accept(self.transport):
            self.accepted = True
            self.registry.relay_connected(self)

    def connectionLost(self, reason) -> None:  # noqa: N802
        self.registry.verifier.forget(self.transport)
        self._cancel_recover_timer()
        pending, self.pending = self.pending, {}
        if self._expiry is not None and self._expiry.active():
            self._expiry.cancel()
        self._expiry = None
        for deferred, _, _ in pending.values():
            deferred.errback(RelayDisconnected("relay disconnected"))
        if self.accepted:
            self.registry.relay_lost(self)

    def lineTooLong(self, line: OverlongLine) -> None:  # noqa: N802
        if not self.accepted:
            return
        head = line.head.decode("utf-8", "replace")
        seq = relaylink.parse_seq(head.partition(" ")[0])
        entry = self.pending.pop(seq, None) if seq is not None else None
        log.error(
            "Relay {ip} sent a line longer than {limit} bytes ({head!r}...); skipped it", ip=self.ip, limit=line.limit, head=head[:40]
        )
        if entry is not None:
            entry[0].errback(RelayError(f"the answer was longer than {line.limit} bytes"))

    def lineReceived(self, raw: bytes) -> None:  # noqa: N802
        if not self.accepted:
            return
        line = raw.decode("utf-8", "replace")
        message = relaylink.parse_relay_line(line)
        if isinstance(message, relaylink.Ping):
            self._recovered()
            self.sendLine(b"pong")
        elif isinstance(message, relaylink.Reply):
            self._reply(message)
        elif isinstance(message, relaylink.Expired):
            self.registry.expired_received(self.ip, message.statistics_json)
        else:
            log.warn("Relay {ip} sent an unexpected line {line!r}: {reason}", ip=self.ip, line=message.line[:200], reason=message.reason)

    def send_command(self, command: str, header_block: bytes = b"") -> defer.Deferred:
        seq = self.seq
        self.seq += 1
        deferred = defer.Deferred()
        clock, timeout = self.registry.clock, self.registry.relay_timeout
        self.pending[seq] = (deferred, clock.seconds() + timeout, time.perf_counter())
        if self._expiry is None:
            self._expiry = clock.callLater(timeout, self._expire)
        self.transport.write(relaylink.format_command(command, seq, header_block))
        return deferred

    @defer.inlineCallbacks
    def fetch_sessions(
        self, call_id: str | None = None, each_record=None, each_page=None
    ):  # a Deferred firing with a statistics.SessionList
        """All the relay's sessions, or those of call ``call_id``: page by page from a relay of
        ours, in one answer from the original (which lists everything; filtered here). With
        ``each_record``, each record goes to it as it is read, ``each_page()`` is called at the
        end of each page, and the listing stays empty: a listing of every call, or even a page of
        it, is never in memory at once (see statistics.scan_sessions)."""
        listing = statistics.SessionList()
        take = each_record if each_record is not None else listing.records.append
        if call_id is not None:
            wanted, take = take, lambda record: record.call_id == call_id and wanted(record)
        position = 0
        for _ in range(MAX_PAGES):
            request = relaylink.SessionsRequest(position, call_id)
            following = statistics.scan_sessions((yield self.send_command("sessions", request.header_block())), take)
            if each_page is not None:
                each_page()
            if following is None:
                return listing
            if following <= position:
                raise RelayError(f"the relay's pages of sessions go back from {position} to {following}")
            position = following
        raise RelayError(f"the relay's sessions took more than {MAX_PAGES} pages")

    def _reply(self, message: relaylink.Reply) -> None:
        entry = self.pending.pop(message.seq, None)
        if entry is None:
            log.warn("Relay {ip} answered unknown sequence number {seq}", ip=self.ip, seq=message.seq)
            return
        deferred, _, sent = entry
        self.round_trip = time.perf_counter() - sent
        if message.payload == "error":
            deferred.errback(RelayError("relay answered error"))
        elif message.payload == "halting":
            if not self.halting:
                log.info("Relay {ip} is halting; it takes no new sessions", ip=self.ip)
            self.halting = True
            deferred.errback(RelayHalting("relay is halting"))
        else:
            deferred.callback(message.payload)

    def _expire(self) -> None:
        """Time out the commands past their deadline (the oldest first), then wait for the next."""
        self._expiry = None
        clock = self.registry.clock
        now = clock.seconds()
        due = []
        for seq, (_, deadline, _) in self.pending.items():
            if deadline > now:
                break
            due.append(seq)
        for seq in due:
            if seq in self.pending:
                self._timeout(seq)  # its callbacks may send more: the table is not walked now
        if self._expiry is not None:  # set for a command sent from a callback: the oldest may be due sooner
            self._expiry.cancel()
            self._expiry = None
        if self.pending:
            oldest = next(iter(self.pending.values()))[1]
            self._expiry = clock.callLater(max(0.0, oldest - now), self._expire)

    def _timeout(self, seq: int) -> None:
        deferred, _, _ = self.pending.pop(seq)
        if not self.timedout:
            log.warn(
                "Relay {ip} did not answer within {timeout}s; not using it for new calls until it pings",
                ip=self.ip,
                timeout=self.registry.relay_timeout,
            )
        self.timedout = True
        if self._recover_timer is None:
            self._recover_timer = self.registry.clock.callLater(self.registry.relay_recover_interval, self._give_up)
        deferred.errback(RelayTimeout("relay timed out"))

    def _recovered(self) -> None:
        if self.timedout:
            log.info("Relay {ip} is answering again", ip=self.ip)
        self.timedout = False
        self._cancel_recover_timer()

    def _give_up(self) -> None:
        self._recover_timer = None
        log.warn(
            "Relay {ip} did not recover within {interval}s; disconnecting it", ip=self.ip, interval=self.registry.relay_recover_interval
        )
        self.transport.abortConnection()

    def _cancel_recover_timer(self) -> None:
        if self._recover_timer is not None and self._recover_timer.active():
            self._recover_timer.cancel()
        self._recover_timer = None


class RelayFactory(protocol.Factory):
    noisy = False

    def __init__(self, registry: RelayRegistry) -> None:
        self.registry = registry

    def buildProtocol(self, addr) -> RelayLink:  # noqa: N802
        return RelayLink(self.registry)


class RelayRegistry:
    """Which relay is connected from which IP; the dispatcher core reacts to its events."""

    def __init__(self, clock, verifier, relay_timeout: int, relay_recover_interval: int, rng: random.Random | None = None) -> None:
        self.clock = clock
        self.verifier = verifier
        self.relay_timeout = relay_timeout
        self.relay_recover_interval = relay_recover_interval
        self.relays: dict[str, RelayLink] = {}
        self.drained: set[str] = set()  # relays given no new calls (by the operator), connected or not
        self.rng = rng or random.Random()
        self.listener = None  # the dispatcher core: relay_up(ip), relay_down(ip), expired(ip, text)

    def relay_connected(self, link: RelayLink) -> None:
        old = self.relays.get(link.ip)
        self.relays[link.ip] = link
        if old is not None and old is not link:
            log.info("Relay {ip} reconnected; replacing its old link", ip=link.ip)
            old.accepted = False  # its pending commands fail when the abort completes
            old.transport.abortConnection()
        else:
            log.info("Relay {ip} connected", ip=link.ip)
        if self.listener is not None:
            self.listener.relay_up(link.ip)

    def relay_lost(self, link: RelayLink) -> None:
        if self.relays.get(link.ip) is link:
            del self.relays[link.ip]
            log.info("Relay {ip} disconnected", ip=link.ip)
            if self.listener is not None:
                self.listener.relay_down(link.ip)

    def expired_received(self, ip: str, text: str) -> None:
        if self.listener is not None:
            self.listener.expired(ip, text)

    def get(self, ip: str) -> RelayLink | None:
        return self.relays.get(ip)

    def accepted(self) -> list[RelayLink]:
        """The relays whose link passed the TLS checks (halting or slow ones too: they still answer)."""
        return [link for link in self.relays.values() if link.accepted]

    def candidates(self, preferred: str | None) -> list[RelayLink]:
        """Active relays in the order a new call should try them."""
        others = [link for ip, link in self.relays.items() if link.active and ip != preferred and ip not in self.drained]
        self.rng.shuffle(others)
        if preferred:
            link = self.relays.get(preferred)
            if link is not None and link.active and preferred not in self.drained:
                return [link, *others]
            log.warn("Preferred relay {ip} is not available; choosing another", ip=preferred)
        return others

    def disconnect_all(self) -> None:
        for link in list(self.relays.values()):
            link.transport.loseConnection()
