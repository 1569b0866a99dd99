"""Userspace forwarding: one Twisted UDP port per relay socket."""

from __future__ import annotations

from twisted.internet import error
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

log = Logger(namespace="relay.forwarding")


class UDPEndpoint(DatagramProtocol):
    """A relay socket: hands packets to ``receiver(data, source)`` and sends for the other side."""

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
    """Opens the RTP (even) and RTCP (odd) sockets of a port pair; OSError when either is taken."""

    def __init__(self, reactor) -> None:  # noqa: ANN001
        self.reactor = reactor

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
        return endpoint
