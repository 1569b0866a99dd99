"""One dispatcher kept connected: its TLS endpoint (guarded like every link), the ClientService
whose retry policy keeps the original's timing, and what the relay tells that dispatcher."""

from __future__ import annotations

from twisted.application.internet import ClientService
from twisted.internet import defer, endpoints
from twisted.internet.interfaces import IStreamClientEndpoint
from zope.interface import implementer

from mediaproxy.datatypes import Endpoint
from mediaproxy.net.tls import ClientContextFactory
from mediaproxy.relay.link import LinkFactory
from mediaproxy.runtime.log import Logger

log = Logger(namespace="relay")

# a link that lasted this long was a working one: the first retry after it waits the full delay
LONG_ENOUGH_CONNECTION = 5


@implementer(IStreamClientEndpoint)
class _DispatcherEndpoint:
    """The TLS endpoint of one dispatcher, guarded like every link, telling its connector of each
    failed attempt (ClientService only retries them)."""

    def __init__(self, connector: DispatcherConnector, endpoint: IStreamClientEndpoint) -> None:
        self.connector = connector
        self.endpoint = endpoint

    def connect(self, factory) -> defer.Deferred:
        # the guard goes outside ClientService's protocol proxy, so the TLS layer sees a handshake listener
        attempt = self.endpoint.connect(self.connector.relay.guard(factory))
        # an endpoint answers with the protocol that the given factory built, inside the guard
        return attempt.addCallbacks(lambda guarded: guarded.wrappedProtocol, self.connector.connect_failed)

    def __repr__(self) -> str:  # how ClientService names it when it schedules a retry
        return f"dispatcher {self.connector.name}"


class DispatcherConnector:
    """Keeps one dispatcher connected through a ClientService. The retry policy keeps the
    original's timing after a link is lost (at most 1 s after a link that was up for a while,
    reconnect_delay after a short one), but a dispatcher that cannot be reached at all is tried
    again after 1, 2, 4… s up to reconnect_delay: when both programs restart together (a package
    upgrade), the relay is back within seconds, not a full delay after the dispatcher."""

    def __init__(self, relay, endpoint: Endpoint, host: str, port: int) -> None:  # the RelayService it connects
        self.relay = relay
        self.endpoint = endpoint  # as configured; host:port is what it resolved to
        self.name = str(endpoint)
        self.key = (host, port)
        self.host, self.port = host, port
        self.link = None
        self.retired = False
        self._connected_at: float | None = None
        self._lasted: float = 0.0  # how long the last link was up: the next attempt's delay
        self._unreached = 0  # attempts in a row that reached no dispatcher (refused, unreachable)
        self.tried = False  # the first attempt has an outcome (for the relay's readiness)
        source = relay.config.link_source_ip
        tls = endpoints.SSL4ClientEndpoint(
            relay.reactor, host, port, ClientContextFactory(relay.credentials), timeout=10, bindAddress=(source, 0) if source else None
        )
        self.client = ClientService(_DispatcherEndpoint(self, tls), LinkFactory(self), retryPolicy=self._delay, clock=relay.reactor)

    @property
    def name_to_verify(self) -> str | None:
        """The DNS name the dispatcher's certificate must be for, when the relay checks names."""
        if not self.relay.config.verify_dispatcher_name or self.endpoint.is_ip:
            return None
        return self.endpoint.host

    def _delay(self, failed_attempts: int) -> float:
        delay = self.relay.config.reconnect_delay
        if self._unreached:
            return min(delay, 2 ** min(self._unreached - 1, 16))
        # ClientService counts a lost link as the first failed attempt; a dispatcher that took the
        # connection and dropped it (a handshake refused, a short link) waits the full delay
        if failed_attempts == 1 and self._lasted >= LONG_ENOUGH_CONNECTION:
            return min(delay, 1)
        return delay

    def _outcome(self) -> None:
        if not self.tried:
            self.tried = True
            self.relay._check_ready()

    def connect(self) -> None:
        self.client.startService()

    def link_up(self, link) -> None:
        self.link = link
        self._unreached = 0
        self._connected_at = self.relay.reactor.seconds()
        log.info("Connected to dispatcher {name} ({host}:{port})", name=self.name, host=self.host, port=self.port)
        held = self.relay.held.take(self.key)
        if held:
            log.info("Sending dispatcher {name} the {count} sessions that expired meanwhile", name=self.name, count=len(held))
        for statistics in held:
            link.send_expired(statistics)
        self._outcome()

    def expired(self, statistics: dict) -> None:
        """A session of this dispatcher's expired: tell it now, or when the link is back."""
        if self.link is not None:
            self.link.send_expired(statistics)
            return
        lost = self.relay.held.hold(self.key, statistics)
        if lost is not None:
            log.error(
                "Statistics of expired session {call_id} are lost: {count} wait for dispatcher {name} already",
                call_id=lost.get("call_id"),
                count=self.relay.held.limit,
                name=self.name,
            )
        log.warn(
            "Session {call_id} expired while dispatcher {name} is not connected; reported when it is back",
            call_id=statistics.get("call_id"),
            name=self.name,
        )

    def link_down(self, link, reason) -> None:
        """Any connection ended (a link, or a TLS handshake that failed); ClientService reconnects."""
        self._lasted = 0.0
        self._unreached = 0
        if self.link is link:
            self.link = None
            self._lasted = self.relay.reactor.seconds() - self._connected_at
            log.info("Lost the connection to dispatcher {name}: {reason}", name=self.name, reason=reason.getErrorMessage())
        self._outcome()
        if self.retired:
            self.relay.connector_closed(self)

    def connect_failed(self, reason):  # the Failure, passed on to ClientService
        self._lasted = 0.0
        if self.retired:
            return reason  # the attempt was cancelled by retire(): nothing failed
        self._unreached += 1
        log.warn(
            "Cannot connect to dispatcher {name} ({host}:{port}): {reason}; retrying in {delay}s",
            name=self.name,
            host=self.host,
            port=self.port,
            reason=reason.getErrorMessage(),
            delay=self._delay(1),
        )
        self._outcome()
        return reason

    def retire(self) -> None:
        """Stop connecting and close the link; the relay hears when it is closed."""
        self.retired = True
        if self.link is not None:
            self.link.transport.loseConnection()
        self.client.stopService().addBoth(self._stopped)

    def _stopped(self, _: object) -> None:
        if self.link is None:
            self.relay.connector_closed(self)
        # else the link is closing: link_down reports it
