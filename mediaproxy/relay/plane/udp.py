"""Userspace forwarding: one plain non-blocking UDP socket per relay port.

A relay holds four sockets per stream, thousands at once, and every packet passes through here.
So an endpoint is a small slotted object, not a Twisted ``udp.Port`` (several KiB, and a few
calls more per datagram); and the endpoints are not registered with the reactor one by one (two
table entries each, and a logging context around every read) but in one epoll set of their own,
which is itself a single reader in the reactor: a wake-up reads every socket that is ready.
"""

from __future__ import annotations

import _socket
import ctypes
import select
import socket

from twisted.internet.interfaces import IReadDescriptor
from zope.interface import implementer

from mediaproxy.relay.plane.interfaces import IBinder, IEndpoint
from mediaproxy.runtime.libc import libc
from mediaproxy.runtime.log import Logger

log = Logger(namespace="relay.forwarding")

SO_MARK = getattr(socket, "SO_MARK", 36)
_send = _socket.socket.send  # the socket's own, which the endpoint's send shadows
# connect(2) to an AF_UNSPEC address ends a UDP socket's association (Python's connect cannot
# say AF_UNSPEC on an AF_INET socket); a port bound by number stays bound. Without it a socket
# is never fixed: one that could not be opened again would keep a party that moved out.
_connect = getattr(libc, "connect", None)
_UNSPECIFIED = (ctypes.c_ubyte * 16)()
MAX_DATAGRAM = 65535  # the largest UDP payload; a datagram is forwarded whole, never cut
READS_PER_WAKEUP = 64  # bounded, so one flooded socket cannot starve the others
READY_PER_WAKEUP = 1024  # sockets served per wake-up; the rest stay ready for the next (level-triggered)


@implementer(IReadDescriptor)
class SocketPoller:
    """The relay sockets' own epoll set: the reactor sees one descriptor, ready when any is."""

    def __init__(self, reactor) -> None:
        self.reactor = reactor
        self.epoll = select.epoll()
        # by descriptor number, so a socket costs one list slot here (descriptors are small and dense)
        self.endpoints: list[UDPEndpoint | None] = []
        self.count = 0  # sockets in the set: the poller is a reader in the reactor while there are any
        self.sink = lambda owner: None  # told of what a packet changed beyond forwarding (the binder's sink)

    def add(self, endpoint: UDPEndpoint, fd: int) -> None:
        endpoints = self.endpoints
        if fd >= len(endpoints):
            endpoints.extend([None] * (fd + 1 - len(endpoints)))
        if endpoints[fd] is not None:
            return
        self.epoll.register(fd, select.EPOLLIN)
        endpoints[fd] = endpoint
        self.count += 1
        if self.count == 1:
            self.reactor.addReader(self)

    def remove(self, fd: int) -> None:
        if fd < len(self.endpoints) and self.endpoints[fd] is not None:
            self.endpoints[fd] = None
            self.epoll.unregister(fd)
            self.count -= 1
            if self.count == 0:
                self.reactor.removeReader(self)

    def fileno(self) -> int:
        return self.epoll.fileno()

    def logPrefix(self) -> str:  # noqa: N802 - Twisted interface name
        return "UDPEndpoints"

    def doRead(self) -> None:  # noqa: N802
        endpoints = self.endpoints
        for fd, _ in self.epoll.poll(0, READY_PER_WAKEUP):
            endpoint = endpoints[fd]
            if endpoint is None:
                continue
            try:
                endpoint.doRead()
            except Exception:  # noqa: BLE001 - a fault behind one socket must not stop the others being read
                # as the reactor does with a reader that fails: one log line, and that socket is closed
                log.failure("Reading relay socket {fd} failed; it is closed", fd=fd)
                endpoint.close()

    def connectionLost(self, reason) -> None:  # noqa: N802
        pass  # the epoll set is never closed while the relay runs


@implementer(IEndpoint)
class UDPEndpoint(_socket.socket):
    """A relay socket: hands packets to ``receiver.received(data, source)`` and sends for the other side.

    The receiver returns what a packet changed beyond forwarding (rarely), handed to the poller's ``sink``.

    The endpoint is the socket itself, not an object holding one: a relay has four per stream,
    and a second object each cost 64 bytes. So ``send`` and ``close`` are the endpoint's
    (``IEndpoint``), not the stream socket's; nothing calls the socket's own for a relay port.
    It is the C socket type's subclass, not ``socket.socket``'s, whose three slots (for files made
    from a socket and weak references, neither used here) cost 24 bytes a socket.
    """

    __slots__ = ("poller", "receiver", "peer", "source")

    def __init__(self, poller: SocketPoller) -> None:
        super().__init__(socket.AF_INET, socket.SOCK_DGRAM)
        self.poller = poller
        self.receiver = None
        self.peer: tuple[str, int] | None = None  # connected to it (fix): the kernel drops what others send
        # the peer, once what was queued before the socket was fixed has been read: every datagram
        # since is the peer's, so it is read without its address (a tuple and a string less each)
        self.source: tuple[str, int] | None = None

    def doRead(self) -> None:  # noqa: N802
        recv, recvfrom = self.recv, self.recvfrom
        for _ in range(READS_PER_WAKEUP):
            source = self.source  # read again each time: a packet may have opened the socket again
            try:
                if source is not None:
                    data = recv(MAX_DATAGRAM)
                else:
                    data, source = recvfrom(MAX_DATAGRAM)
            except BlockingIOError:
                if self.source is None:
                    self.source = self.peer  # all read: what comes from now on is the peer's, if fixed
                return
            except ConnectionRefusedError:
                continue  # an ICMP error for a fixed socket's earlier packet, reported instead of the next one
            except OSError:
                return
            # what deliver() does, written out: a call less for every packet relayed in userspace
            receiver = self.receiver
            if receiver is not None:
                touched = receiver.received(data, source)
                if touched is not None:
                    self.poller.sink(touched)

    def deliver(self, data: bytes, source: tuple[str, int]) -> None:
        """A datagram for this socket that was read elsewhere (a worker's stray): as if read here."""
        receiver = self.receiver
        if receiver is not None:
            touched = receiver.received(data, source)
            if touched is not None:
                self.poller.sink(touched)

    def send(self, data: bytes, destination: tuple[str, int]) -> None:  # the endpoint's, in place of the socket's
        try:
            if destination is self.peer:
                _send(self, data)  # connected: no address to read, no route to look up
            else:
                self.sendto(data, destination)
        except ConnectionRefusedError:
            # a fixed socket reports an ICMP error for an earlier packet at the next send, which
            # it then did not send: this one goes again
            try:
                self.sendto(data, destination)
            except OSError:
                pass
        except OSError:
            pass  # a full socket buffer or an unreachable peer loses this one packet, as UDP would

    def fix(self, peer: tuple[str, int]) -> None:
        if _connect is None:
            return
        if peer == self.peer:
            self.peer = peer  # the same address as another object: the one the side now sends to
            if self.source is not None:
                self.source = peer
            return
        self.source = None  # until what came before is read
        try:
            self.connect(peer)
        except OSError as error:
            log.debug("Relay socket {local} stays open to every source: {error}", local=self.getsockname(), error=error)
            self.unfix()  # (connected to an earlier peer, if it was)
            return
        self.peer = peer

    def unfix(self) -> None:
        if self.peer is not None:
            self.peer = self.source = None
            if _connect(self.fileno(), _UNSPECIFIED, ctypes.sizeof(_UNSPECIFIED)) != 0:
                log.warn(
                    "Relay socket {local} cannot be opened to every source again: errno {errno}",
                    local=self.getsockname(),
                    errno=ctypes.get_errno(),
                )

    def pause(self) -> None:
        """Stop reading: a worker process reads this socket now."""
        fd = self.fileno()
        if fd != -1:
            self.poller.remove(fd)

    def resume(self) -> None:
        fd = self.fileno()
        if fd != -1:
            self.poller.add(self, fd)

    def close(self) -> None:
        self.receiver = None
        self.peer = self.source = None
        fd = self.fileno()
        if fd != -1:
            self.poller.remove(fd)
            super().close()


@implementer(IBinder)
class UDPBinder:
    """Opens the RTP (even) and RTCP (odd) sockets of a port pair; OSError when either is taken.

    With kernel forwarding, ``mark`` is set on every socket (SO_MARK) so that what userspace sends
    bypasses conntrack: a tracked send from a socket whose flow the kernel now forwards would
    clash with the entry's reply tuple, and NAT would move it to another source port.
    """

    def __init__(self, reactor, mark: int | None = None) -> None:
        self.poller = SocketPoller(reactor)
        self.mark = mark

    @property
    def sink(self):  # callable(owner)
        """The session manager's, once it takes this binder."""
        return self.poller.sink

    @sink.setter
    def sink(self, sink) -> None:
        self.poller.sink = sink

    def __call__(self, ip: str, port: int) -> tuple[UDPEndpoint, UDPEndpoint]:
        rtp = self._bind(ip, port)
        try:
            rtcp = self._bind(ip, port + 1)
        except OSError:
            rtp.close()
            raise
        return rtp, rtcp

    def _bind(self, ip: str, port: int) -> UDPEndpoint:
        endpoint = UDPEndpoint(self.poller)
        try:
            endpoint.setblocking(False)
            endpoint.bind((ip, port))
            if self.mark is not None:
                endpoint.setsockopt(socket.SOL_SOCKET, SO_MARK, self.mark)
        except OSError as error:
            endpoint.close()
            raise OSError(f"cannot bind {ip}:{port}: {error.strerror or error}") from None
        self.poller.add(endpoint, endpoint.fileno())
        return endpoint
