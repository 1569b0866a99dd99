"""In-memory fakes and helpers for driving MediaProxy without sockets (used by our own tests too).

- :class:`FakeEndpoint` / :class:`FakeBinder`: relay sockets that record what was sent.
- :func:`capture_requests`: the proxy requests recorded in a Kamailio capture file.
- :class:`ProxyClient`: speaks the proxy protocol exactly as Kamailio's module does
  (one request at a time per connection, one reply line each).
"""

from __future__ import annotations

import ast
import re
from collections import deque
from dataclasses import dataclass

from twisted.internet import defer, protocol
from twisted.protocols.basic import LineOnlyReceiver
from zope.interface import implementer

from mediaproxy.relay.plane.interfaces import IBinder, IEndpoint
from mediaproxy.wire import headers as wire_headers


@implementer(IEndpoint)
class FakeEndpoint:
    def __init__(self, ip: str, port: int, binder: FakeBinder) -> None:
        self.local = (ip, port)
        self.receiver = None
        self.sent: list[tuple[bytes, tuple[str, int]]] = []
        self.closed = False
        self.binder = binder
        self.peer: tuple[str, int] | None = None

    def send(self, data: bytes, destination: tuple[str, int]) -> None:
        self.sent.append((data, destination))

    def fix(self, peer: tuple[str, int]) -> None:
        self.peer = peer

    def unfix(self) -> None:
        self.peer = None

    def close(self) -> None:
        self.closed = True
        self.binder.open.discard(self)

    def deliver(self, data: bytes, source: tuple[str, int]) -> None:
        """A packet arrives at this relay socket from ``source``."""
        assert not self.closed, f"packet for closed socket {self.local}"
        if self.peer is not None and source != self.peer:
            return  # a fixed socket's: the kernel drops what comes from elsewhere
        touched = self.receiver.received(data, source)
        if touched is not None:
            self.binder.sink(touched)


class InOrder:
    """A PortPool chooser that hands out pairs in ascending order, so tests can name the ports."""

    @staticmethod
    def randrange(count: int) -> int:
        return count - 1


@implementer(IBinder)
class FakeBinder:
    """Stands in for UDP binding; ``refuse`` holds ports that fail to bind."""

    def __init__(self) -> None:
        self.open: set[FakeEndpoint] = set()
        self.refuse: set[int] = set()
        self.by_port: dict[int, FakeEndpoint] = {}
        self.sink = lambda owner: None  # set by the session manager that takes this binder

    def __call__(self, ip: str, port: int) -> tuple[FakeEndpoint, FakeEndpoint]:
        if port in self.refuse:
            raise OSError(f"port {port} refused")
        endpoints = FakeEndpoint(ip, port, self), FakeEndpoint(ip, port + 1, self)
        for endpoint in endpoints:
            self.open.add(endpoint)
            self.by_port[endpoint.local[1]] = endpoint
        return endpoints


def headers(text: str) -> dict:
    """Decode header lines the way the relay does (for tests written as literal requests)."""
    return wire_headers.typed(wire_headers.split([line for line in text.splitlines() if line.strip() and not line.endswith(": ")]))


@dataclass
class CapturedRequest:
    time: float
    connection: int
    data: bytes


_RECV = re.compile(r"^(\d+\.\d+) \S+ RECV conn=(\d+) .*?bytes=\d+ (b'.*')$")


def capture_requests(path: str) -> list[CapturedRequest]:
    """Every complete proxy request Kamailio sent in a capture, in time order, split per request."""
    requests = []
    pending: dict[int, bytes] = {}
    with open(path, encoding="utf-8") as stream:
        for line in stream:
            match = _RECV.match(line.rstrip("\n"))
            if not match:
                continue
            connection = int(match.group(2))
            buffer = pending.get(connection, b"") + ast.literal_eval(match.group(3))
            while b"\r\n\r\n" in buffer:
                request, buffer = buffer.split(b"\r\n\r\n", 1)
                requests.append(CapturedRequest(float(match.group(1)), connection, request + b"\r\n\r\n"))
            pending[connection] = buffer
    return requests


def capture_replies(path: str) -> list[bytes]:
    replies = []
    with open(path, encoding="utf-8") as stream:
        for line in stream:
            match = re.match(r"^\S+ \S+ SEND conn=\d+ .*?(b'.*')$", line.rstrip("\n"))
            if match:
                replies.append(ast.literal_eval(match.group(1)))
    return replies


class _ProxyLine(LineOnlyReceiver):
    delimiter = b"\r\n"

    def __init__(self, client: ProxyClient) -> None:
        self.client = client

    def connectionMade(self) -> None:  # noqa: N802
        self.client.connected.callback(self.client)

    def lineReceived(self, line: bytes) -> None:  # noqa: N802
        if self.client.waiting:
            self.client.waiting.popleft().callback(line.decode())
        else:
            self.client.unsolicited.append(line.decode())

    def connectionLost(self, reason) -> None:  # noqa: N802
        while self.client.waiting:
            self.client.waiting.popleft().errback(reason)


class ProxyClient(protocol.ClientFactory):
    """One proxy process's connection to the dispatcher's UNIX socket."""

    noisy = False

    def __init__(self) -> None:
        self.waiting: deque = deque()
        self.unsolicited: list[str] = []
        self.connected = defer.Deferred()
        self.line: _ProxyLine | None = None

    def buildProtocol(self, addr) -> _ProxyLine:  # noqa: N802
        self.line = _ProxyLine(self)
        return self.line

    def clientConnectionFailed(self, connector, reason) -> None:  # noqa: N802
        self.connected.errback(reason)

    @classmethod
    def connect(cls, reactor, path: str) -> defer.Deferred:
        client = cls()
        reactor.connectUNIX(path, client)
        return client.connected

    def request(self, data: bytes) -> defer.Deferred:
        """Send raw bytes; fires with the next reply line."""
        deferred = defer.Deferred()
        self.waiting.append(deferred)
        self.line.transport.write(data)
        return deferred

    def close(self) -> None:
        self.line.transport.loseConnection()


def update(
    call_id: str, from_tag: str, to_tag: str = "", kind: str = "request", cseq: int = 1, media: str | None = None, **extra: str
) -> bytes:
    """An update exactly as Kamailio formats it (empty values as ``name: ``)."""
    values = {
        "type": kind,
        "dialog_id": extra.get("dialog_id", "1:1"),
        "call_id": call_id,
        "cseq": str(cseq),
        "from_uri": extra.get("from_uri", "alice@example.com"),
        "to_uri": extra.get("to_uri", "bob@example.com"),
        "from_tag": from_tag,
        "to_tag": to_tag,
        "user_agent": extra.get("user_agent", "test-agent"),
        "signaling_ip": extra.get("signaling_ip", "127.0.0.1"),
        "media_relay": extra.get("media_relay", ""),
    }
    lines = ["update", *(f"{name}: {value}" for name, value in values.items())]
    if media is not None:
        lines.append(f"media: {media}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def remove(call_id: str, from_tag: str, to_tag: str = "") -> bytes:
    return f"remove\r\ncall_id: {call_id}\r\nfrom_tag: {from_tag}\r\nto_tag: {to_tag}\r\n\r\n".encode()
