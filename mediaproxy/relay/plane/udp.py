"""Userspace forwarding: one plain non-blocking UDP socket per relay port, read by the reactor.

A relay holds four sockets per stream, thousands at once, and every packet passes through here,
so an endpoint is a small slotted object registered with the reactor directly rather than a
Twisted ``udp.Port`` (which costs several KiB and a few calls more per datagram).
"""

from __future__ import annotations

import socket

from twisted.internet.interfaces import IReadDescriptor
from zope.interface import implementer

from mediaproxy.log import Logger
from mediaproxy.relay.plane.interfaces import IBinder, IEndpoint

log = Logger(namespace="relay.forwarding")

SO_MARK = getattr(socket, "SO_MARK", 36)
MAX_DATAGRAM = 65535  # the largest UDP payload; a datagram is forwarded whole, never cut
READS_PER_WAKEUP = 64  # bounded, so one flooded socket cannot starve the others


@implementer(IReadDescriptor, IEndpoint)
class UDPEndpoint:
    """A relay socket: hands packets to ``receiver(data, source)`` and sends for the other side.

    The receiver returns what a packet changed beyond forwarding (rarely), handed to ``sink``.
    """

    __slots__ = ("reactor", "socket", "local", "receiver", "sink", "_fileno")

    def __init__(self, reactor, sock: socket.socket, local: tuple[str, int], sink) -> None:  # noqa: ANN001
        self.reactor = reactor
        self.socket = sock
        self.local = local
        self.receiver = None
        self.sink = sink
        self._fileno = sock.fileno()

    def fileno(self) -> int:
        return self._fileno

    def logPrefix(self) -> str:  # noqa: N802 - Twisted interface name
        return "UDPEndpoint"

    def doRead(self) -> None:  # noqa: N802
        recvfrom = self.socket.recvfrom
        for _ in range(READS_PER_WAKEUP):
            try:
                data, source = recvfrom(MAX_DATAGRAM)
            except BlockingIOError:
                return
            except OSError:
                return  # e.g. ICMP port unreachable reported on the socket: nothing to read
            receiver = self.receiver
            if receiver is not None:
                touched = receiver(data, source)
                if touched is not None:
                    self.sink(touched)

    def connectionLost(self, reason) -> None:  # noqa: N802, ANN001
        self.close()

    def send(self, data: bytes, destination: tuple[str, int]) -> None:
        try:
            self.socket.sendto(data, destination)
        except OSError:
            pass  # a full socket buffer or an unreachable peer loses this one packet, as UDP would

    def pause(self) -> None:
        """Stop reading: a worker process reads this socket now."""
        if self._fileno != -1:
            self.reactor.removeReader(self)

    def resume(self) -> None:
        if self._fileno != -1:
            self.reactor.addReader(self)

    def close(self) -> None:
        self.receiver = None
        if self._fileno != -1:
            self.reactor.removeReader(self)
            self.socket.close()
            self._fileno = -1


@implementer(IBinder)
class UDPBinder:
    """Opens the RTP (even) and RTCP (odd) sockets of a port pair; OSError when either is taken.

    With kernel forwarding, ``mark`` is set on every socket (SO_MARK) so that what userspace sends
    bypasses conntrack: a tracked send from a socket whose flow the kernel now forwards would
    clash with the entry's reply tuple, and NAT would move it to another source port.
    """

    def __init__(self, reactor, mark: int | None = None) -> None:  # noqa: ANN001
        self.reactor = reactor
        self.mark = mark
        self.sink = lambda owner: None  # the session manager's, once it takes this binder

    def __call__(self, ip: str, port: int) -> tuple[UDPEndpoint, UDPEndpoint]:
        rtp = self._bind(ip, port)
        try:
            rtcp = self._bind(ip, port + 1)
        except OSError:
            rtp.close()
            raise
        return rtp, rtcp

    def _bind(self, ip: str, port: int) -> UDPEndpoint:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.bind((ip, port))
            if self.mark is not None:
                sock.setsockopt(socket.SOL_SOCKET, SO_MARK, self.mark)
        except OSError as error:
            sock.close()
            raise OSError(f"cannot bind {ip}:{port}: {error.strerror or error}") from None
        endpoint = UDPEndpoint(self.reactor, sock, (ip, port), self.sink)
        self.reactor.addReader(endpoint)
        return endpoint
