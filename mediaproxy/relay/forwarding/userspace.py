"""Userspace forwarding: one Twisted UDP port per relay socket."""

from __future__ import annotations

import socket

from twisted.internet import error
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

log = Logger(namespace="relay.forwarding")

SO_MARK = getattr(socket, "SO_MARK", 36)


class UDPEndpoint(DatagramProtocol):
    """A relay socket: hands packets to ``receiver(data, source)`` and sends for the other side."""

    noisy = False

    def __init__(self) -> None:
        self.receiver = None
        self.local: tuple[str, int] | None = None
        self.port = None

    def datagramReceived(self, data: bytes, source: tuple[str, int]) -> None:  # noqa: N802
        receiver = self.receiver
        if receiver is not None:
            receiver(data, source)

    def send(self, data: bytes, destination: tuple[str, int]) -> None:
        transport = self.transport
        if transport is None:
            return
        try:
            transport.write(data, destination)
        except (OSError, error.MessageLengthError):
            pass  # a full socket buffer or an unreachable peer loses this one packet, as UDP would

    def close(self) -> None:
        self.receiver = None
        if self.port is not None:
            port, self.port = self.port, None
            port.stopListening()


class UDPBinder:
    """Opens the RTP (even) and RTCP (odd) sockets of a port pair; OSError when either is taken.

    With kernel forwarding, ``mark`` is set on every socket (SO_MARK) so that what userspace sends
    bypasses conntrack: a tracked send from a socket whose flow the kernel now forwards would
    clash with the entry's reply tuple, and NAT would move it to another source port.
    """

    def __init__(self, reactor, mark: int | None = None) -> None:  # noqa: ANN001
        self.reactor = reactor
        self.mark = mark

    def __call__(self, ip: str, port: int) -> tuple[UDPEndpoint, UDPEndpoint]:
        rtp = self._bind(ip, port)
        try:
            rtcp = self._bind(ip, port + 1)
        except OSError:
            rtp.close()
            raise
        return rtp, rtcp

    def _bind(self, ip: str, port: int) -> UDPEndpoint:
        endpoint = UDPEndpoint()
        try:
            endpoint.port = self.reactor.listenUDP(port, endpoint, interface=ip, maxPacketSize=65535)
        except error.CannotListenError as failure:
            raise OSError(f"cannot bind {ip}:{port}: {failure.socketError}") from None
        endpoint.local = (ip, port)
        if self.mark is not None:
            endpoint.port.socket.setsockopt(socket.SOL_SOCKET, SO_MARK, self.mark)
        return endpoint
