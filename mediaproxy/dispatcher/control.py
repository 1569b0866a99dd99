"""The UNIX stream socket the SIP proxy's mediaproxy module talks to."""

from __future__ import annotations

from collections import deque

from twisted.internet import defer, protocol

from mediaproxy.net.ratelimit import Refusals
from mediaproxy.runtime.log import Logger
from mediaproxy.wire.control import ProxyRequest, RequestError, RequestFramer

log = Logger(namespace="dispatcher.control")

# Kamailio sends one request at a time; a client that piles up more than this is broken
MAX_QUEUED_REQUESTS = 256


class ControlProtocol(protocol.Protocol):
    """One proxy process's connection; replies go out one line per request, in request order."""

    def __init__(self, factory: ControlFactory) -> None:
        self.factory = factory
        self.framer = RequestFramer()
        self.queue: deque = deque()
        self.busy = False
        self.closing = False

    def connectionMade(self) -> None:  # noqa: N802
        self.factory.connections.add(self)

    def connectionLost(self, reason) -> None:  # noqa: N802
        self.factory.connections.discard(self)
        self.queue.clear()
        self.factory.connection_idle()

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if self.closing:
            return
        self.queue.extend(self.framer.feed(data))
        if len(self.queue) > MAX_QUEUED_REQUESTS:
            log.error(
                "A proxy connection sent more than {limit} requests without waiting for replies; closing it", limit=MAX_QUEUED_REQUESTS
            )
            self.queue.clear()
            self.transport.loseConnection()
            self.closing = True
            return
        self._next()

    def _next(self) -> None:
        while not self.busy and self.queue:
            item = self.queue.popleft()
            if isinstance(item, RequestError):
                self.factory.refusals.count("bad_request")
                log.warn("Malformed request from the proxy: {error}; answering error", error=str(item))
                self._write("error")
                continue
            self.busy = True
            self.factory.dispatcher.handle(item).addBoth(self._answer, item)
        if not self.busy and self.closing and not self.framer.pending:
            self.transport.loseConnection()

    def _answer(self, reply: str, request: ProxyRequest) -> None:
        self.busy = False
        if self.transport is not None and self.connected:
            self._write(reply if isinstance(reply, str) else "error")
        self._next()
        self.factory.connection_idle()

    def _write(self, line: str) -> None:
        self.transport.write(line.encode("utf-8", "surrogateescape") + b"\r\n")

    @property
    def idle(self) -> bool:
        return not self.busy and not self.queue

    def close_when_idle(self) -> None:
        self.closing = True
        if self.idle:
            self.transport.loseConnection()


class ControlFactory(protocol.Factory):
    noisy = False

    def __init__(self, dispatcher, refusals: Refusals | None = None) -> None:
        self.dispatcher = dispatcher
        self.refusals = refusals or Refusals(dispatcher.clock)
        self.connections: set[ControlProtocol] = set()
        self._drained: defer.Deferred | None = None

    def buildProtocol(self, addr) -> ControlProtocol:  # noqa: N802
        return ControlProtocol(self)

    def drain(self) -> defer.Deferred:
        """Close idle connections now and busy ones once their current request is answered."""
        self._drained = defer.Deferred()
        for connection in list(self.connections):
            connection.close_when_idle()
        self.connection_idle()
        return self._drained

    def connection_idle(self) -> None:
        if self._drained is not None and not any(not c.idle for c in self.connections):
            drained, self._drained = self._drained, None
            drained.callback(None)
