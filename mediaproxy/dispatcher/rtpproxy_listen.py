"""The sockets the rtpproxy module talks to: UDP (a cookie per command, retransmissions answered
from a cache) and a UNIX stream socket (one command per connection, no cookie).

Kamailio blocks a SIP worker while it waits and disables the proxy for a minute after five
unanswered sends, so every command is answered, a refusal included; a retransmission of a
command still being done waits for that reply instead of doing the work twice.
"""

from __future__ import annotations

from collections import OrderedDict

from twisted.internet import protocol

from mediaproxy import datatypes
from mediaproxy.dispatcher.rtpproxy import RtpproxyFrontEnd
from mediaproxy.net.ratelimit import Refusals
from mediaproxy.runtime.log import Logger
from mediaproxy.wire import rtpproxy
from mediaproxy.wire.rtpproxy import CommandError

log = Logger(namespace="dispatcher.rtpproxy")

# the module retransmits for rtpproxy_retr × rtpproxy_tout (5 s by default); a reply is kept
# longer than any retransmission of it can come
REPLY_WINDOW = 30.0
MAX_REPLIES = 16384  # about 1 MB; the oldest go first
MAX_IN_FLIGHT = 2048  # commands being done at once; more is no SIP proxy but a flood
_PENDING = object()


class ReplyCache:
    """Replies by (peer, cookie): the same cookie from the same peer gets the same reply."""

    def __init__(self, clock, window: float = REPLY_WINDOW, limit: int = MAX_REPLIES) -> None:
        self.clock = clock
        self.window = window
        self.limit = limit
        self._replies: OrderedDict[tuple, tuple[float, object]] = OrderedDict()
        self.pending = 0

    def get(self, key: tuple) -> object:
        """The reply's bytes, :data:`_PENDING` while it is being done, or None for a new command."""
        item = self._replies.get(key)
        if item is None or self.clock.seconds() - item[0] > self.window:
            return None
        return item[1]

    def start(self, key: tuple) -> None:
        self._forget_old()
        self._replies[key] = (self.clock.seconds(), _PENDING)
        self._replies.move_to_end(key)
        self.pending += 1

    def done(self, key: tuple, data: bytes) -> None:
        self.pending -= 1
        self._replies[key] = (self.clock.seconds(), data)

    def _forget_old(self) -> None:
        now = self.clock.seconds()
        while self._replies:
            key, (when, data) = next(iter(self._replies.items()))
            if len(self._replies) < self.limit and now - when <= self.window:
                break
            if data is _PENDING and len(self._replies) < self.limit:
                break  # still being done: its reply must find its entry
            self._replies.popitem(last=False)
            if data is _PENDING:
                self.pending -= 1  # forgotten under a flood; its reply goes out uncached


class RtpproxyDatagram(protocol.DatagramProtocol):
    """Commands over UDP, from the proxies in ``allowed`` (networks) only: a datagram from
    anywhere else is dropped unanswered (a reply could go to a forged source)."""

    def __init__(self, front: RtpproxyFrontEnd, clock, refusals: Refusals, allowed: tuple = datatypes.LOOPBACK_NETWORKS) -> None:
        self.front = front
        self.cache = ReplyCache(clock)
        self.refusals = refusals
        self.allowed = allowed

    def datagramReceived(self, data: bytes, address: tuple) -> None:  # noqa: N802
        peer = address[0]
        if not datatypes.address_in(peer, self.allowed):
            self.refusals.refuse(
                "rtpproxy_not_allowed", peer, log, "rtpproxy datagram from {peer} dropped: not in [Dispatcher] rtpproxy_allow"
            )
            return
        try:
            cookie, text = rtpproxy.split_cookie(data)
        except CommandError as error:
            self.refusals.refuse("rtpproxy_bad_datagram", peer, log, "rtpproxy datagram from {peer} dropped: {error}", error=str(error))
            return
        key = (address, cookie)
        cached = self.cache.get(key)
        if cached is _PENDING:
            return  # a retransmission of a command being done: its reply answers both
        if cached is not None:
            self._send(cached, address)
            return
        if self.cache.pending >= MAX_IN_FLIGHT:
            self.refusals.refuse(
                "rtpproxy_busy", peer, log, "rtpproxy command from {peer} refused: {limit} commands in progress", limit=MAX_IN_FLIGHT
            )
            self._send(rtpproxy.framed(cookie, rtpproxy.error(rtpproxy.SOFTWARE)), address)
            return
        self.cache.start(key)
        self.front.execute(text, peer).addCallback(self._answer, key, cookie, address)

    def _answer(self, reply: str, key: tuple, cookie: str, address: tuple) -> None:
        data = rtpproxy.framed(cookie, reply)
        if self.cache.get(key) is _PENDING:
            self.cache.done(key, data)
        self._send(data, address)

    def _send(self, data: bytes, address: tuple) -> None:
        if self.transport is None:
            return
        try:
            self.transport.write(data, address)
        except OSError as error:
            log.warn("Cannot send an rtpproxy reply to {peer}: {error}", peer=address[0], error=error)


class RtpproxyStream(protocol.Protocol):
    """One command on its own connection: the module writes it whole and reads one reply."""

    def __init__(self, factory: RtpproxyStreamFactory) -> None:
        self.factory = factory
        self.done = False

    def connectionMade(self) -> None:  # noqa: N802
        self.factory.connections += 1
        if self.factory.connections > MAX_IN_FLIGHT:
            log.error("More than {limit} rtpproxy connections at once; closing the new one", limit=MAX_IN_FLIGHT)
            self.done = True
            self.transport.loseConnection()

    def connectionLost(self, reason) -> None:  # noqa: N802
        self.factory.connections -= 1

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if self.done:
            return
        self.done = True
        try:
            text = rtpproxy.split_cookie(b"- " + data)[1]  # the same checks as a datagram's, minus a cookie
        except CommandError as error:
            log.warn("rtpproxy command on the UNIX socket refused: {error}", error=str(error))
            self._reply(rtpproxy.error(rtpproxy.SYNTAX))
            return
        self.factory.front.execute(text, "unix").addCallback(self._reply)

    def _reply(self, reply: str) -> None:
        if self.transport is not None and self.connected:
            self.transport.write(rtpproxy.framed(None, reply))
            self.transport.loseConnection()


class RtpproxyStreamFactory(protocol.Factory):
    noisy = False

    def __init__(self, front: RtpproxyFrontEnd) -> None:
        self.front = front
        self.connections = 0

    def buildProtocol(self, addr) -> RtpproxyStream:  # noqa: N802
        return RtpproxyStream(self)
