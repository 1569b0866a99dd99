"""What every connection a peer opens is held to: a slot within the listener's limits and the
descriptor budget, a TLS handshake within a deadline, and one log line (rate-limited per
address) when it is refused.

``GuardedFactory`` wraps a listener's factory *outside* TLS: a refused connection is closed by
the port before any TLS state exists for it (a factory inside Twisted's TLS wrapper cannot
refuse; the wrapper would keep the socket open with no protocol). With ``tls`` given it builds
the TLS layer itself, and a ``HandshakeGuard`` inside it watches the handshake. An outgoing TLS
link has no admission to make: ``HandshakeGuard`` alone wraps its factory.
"""

from __future__ import annotations

import resource
from collections import Counter
from dataclasses import dataclass

from twisted.internet.interfaces import IHandshakeListener
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

from mediaproxy.net.ratelimit import Refusals
from mediaproxy.runtime.log import Logger

log = Logger(namespace="guard")


class DescriptorBudget:
    """Descriptors that accepted connections may take: the open-file limit less a reserve kept
    for what must never fail for want of one (the call table, the spool, database links).

    Half of the budget is shared out evenly as each listener's own share, which no other
    listener's connections can take; the other half is common to all. A flood on one listener
    therefore never leaves another (the proxy socket above all) without descriptors.
    """

    def __init__(self, reserve: int, limit: int) -> None:
        self.total = max(limit - reserve, 8)
        self.used = 0
        self.by_listener: Counter[str] = Counter()
        self.listeners: list[str] = []

    def register(self, listener: str) -> None:
        if listener not in self.listeners:
            self.listeners.append(listener)

    @property
    def share(self) -> int:
        """Each listener's own descriptors."""
        return self.total // (2 * max(len(self.listeners), 1))

    def _common_used(self) -> int:
        share = self.share
        return sum(max(used - share, 0) for used in self.by_listener.values())

    def admits(self, listener: str) -> bool:
        if self.used >= self.total:
            return False
        if self.by_listener[listener] < self.share:
            return True
        return self._common_used() < self.total - self.share * len(self.listeners)

    def take(self, listener: str) -> None:
        self.used += 1
        self.by_listener[listener] += 1

    def give_back(self, listener: str) -> None:
        self.used -= 1
        self.by_listener[listener] -= 1


def raise_descriptor_limit() -> int:
    """Raise the soft open-file limit to the hard one, as far as it goes; returns the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        wanted = 1 << 20 if hard == resource.RLIM_INFINITY else hard
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            return wanted
        except (ValueError, OSError):
            pass
    return soft


@dataclass(frozen=True)
class Limits:
    max_connections: int
    max_per_address: int
    handshake_timeout: float | None  # None: not a TLS listener


def peer_of(addr) -> str:  # an IAddress
    return getattr(addr, "host", None) or "local"


def refuse(refusals: Refusals, listener: str, kind: str, peer: str, text: str, **fields: object) -> None:
    """Count a refusal by ``listener`` of a connection from ``peer``; one log line per peer and period."""
    refusals.refuse(kind, peer, log, "{listener}: connection from {peer} " + text, listener=listener, **fields)


# -- the TLS handshake, watched from inside the TLS layer


@implementer(IHandshakeListener)
class HandshakeWatch(ProtocolWrapper):
    """Aborts a connection whose TLS handshake is not done within the deadline; logs a failed one."""

    def __init__(self, factory: HandshakeGuard, wrapped, peer: str) -> None:
        ProtocolWrapper.__init__(self, factory, wrapped)
        self.peer = peer
        self.handshake_done = False
        self.timed_out = False
        self._timer = None

    def makeConnection(self, transport) -> None:  # noqa: N802
        self._timer = self.factory.clock.callLater(self.factory.timeout, self._handshake_overdue)
        ProtocolWrapper.makeConnection(self, transport)

    def _handshake_overdue(self) -> None:
        self._timer = None
        self.timed_out = True
        self.factory.refuse("tls_handshake_timeout", self.peer, "no TLS handshake within {timeout}s", timeout=self.factory.timeout)
        self.transport.abortConnection()

    def handshakeCompleted(self) -> None:  # noqa: N802
        self.handshake_done = True
        self._cancel_timer()
        # asked by name, not by interface: Twisted's ClientService wraps a protocol in a proxy that
        # passes attributes on but declares IProtocol only
        completed = getattr(self.wrappedProtocol, "handshakeCompleted", None)
        if completed is not None:
            completed()

    def connectionLost(self, reason) -> None:  # noqa: N802
        self._cancel_timer()
        if not self.handshake_done and not self.timed_out:
            self.factory.refuse("tls_failed", self.peer, "TLS handshake failed: {reason}", reason=tls_failure_text(reason))
        ProtocolWrapper.connectionLost(self, reason)

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None


class HandshakeGuard(WrappingFactory):
    """Wraps the factory that TLS wraps, so each connection's handshake has a deadline."""

    protocol = HandshakeWatch
    noisy = False

    def __init__(self, wrapped, name: str, timeout: float, refusals: Refusals, clock) -> None:
        WrappingFactory.__init__(self, wrapped)
        self.name, self.timeout, self.refusals, self.clock = name, timeout, refusals, clock

    def buildProtocol(self, addr) -> HandshakeWatch | None:  # noqa: N802
        wrapped = self.wrappedFactory.buildProtocol(addr)
        return None if wrapped is None else self.protocol(self, wrapped, peer_of(addr))

    def refuse(self, kind: str, peer: str, text: str, **fields: object) -> None:
        refuse(self.refusals, self.name, kind, peer, text, **fields)


def tls_failure_text(reason) -> str:  # a Failure
    """OpenSSL's reasons (``peer did not return a certificate``, ``unsupported protocol``,
    ``wrong version number``, ...) rather than the nested tuples pyOpenSSL raises."""
    args = getattr(reason.value, "args", ())
    errors = args[0] if args and isinstance(args[0], list) else []
    parts = [str(item[2]) for item in errors if isinstance(item, tuple) and len(item) == 3]
    return ", ".join(parts) if parts else reason.getErrorMessage()


# -- admission, outside TLS


class AdmittedProtocol(ProtocolWrapper):
    """An admitted connection: it gives its slot back when it closes."""

    def __init__(self, factory: GuardedFactory, wrapped, peer: str) -> None:
        ProtocolWrapper.__init__(self, factory, wrapped)
        self.peer = peer

    def connectionLost(self, reason) -> None:  # noqa: N802
        self.factory.release(self.peer)
        ProtocolWrapper.connectionLost(self, reason)


class GuardedFactory(WrappingFactory):
    """Admits a connection if the listener, its source address and the descriptor budget have
    room; refused, ``buildProtocol`` answers None and the port closes the socket at once."""

    protocol = AdmittedProtocol
    noisy = False

    def __init__(self, wrapped, name: str, limits: Limits, budget: DescriptorBudget, refusals: Refusals, clock, tls=None) -> None:
        self.tls = None
        if tls is not None:
            if limits.handshake_timeout is None:
                raise ValueError(f"{name}: a TLS listener needs a handshake timeout")
            self.tls = TLSMemoryBIOFactory(tls, False, HandshakeGuard(wrapped, name, limits.handshake_timeout, refusals, clock))
            wrapped = self.tls
        WrappingFactory.__init__(self, wrapped)
        self.name = name
        self.limits = limits
        self.budget = budget
        self.refusals = refusals
        self.clock = clock
        self.count = 0
        self.by_peer: Counter[str] = Counter()
        budget.register(name)

    def buildProtocol(self, addr) -> AdmittedProtocol | None:  # noqa: N802
        peer = peer_of(addr)
        if not self.budget.admits(self.name):
            self.refuse(
                "descriptor_budget", peer, "refused: {used} connections use the descriptors this listener may have", used=self.budget.used
            )
            return None
        if self.count >= self.limits.max_connections:
            self.refuse("listener_full", peer, "refused: the listener has {count} connections", count=self.count)
            return None
        if peer != "local" and self.by_peer[peer] >= self.limits.max_per_address:
            self.refuse("address_full", peer, "refused: {count} connections from this address already", count=self.by_peer[peer])
            return None
        wrapped = self._protocol_for(addr)
        if wrapped is None:
            return None
        self.count += 1
        self.by_peer[peer] += 1
        self.budget.take(self.name)
        return self.protocol(self, wrapped, peer)

    def _protocol_for(self, addr) -> object | None:  # an IAddress
        """The listener's protocol, inside TLS where it has TLS; None (the port closes the socket)
        when the listener's factory has none for it: never a TLS layer around no protocol."""
        if self.tls is None:
            return self.wrappedFactory.buildProtocol(addr)
        inner = self.tls.wrappedFactory.buildProtocol(addr)
        return None if inner is None else self.tls.protocol(self.tls, inner)

    def release(self, peer: str) -> None:
        self.count -= 1
        self.budget.give_back(self.name)
        self.by_peer[peer] -= 1
        if self.by_peer[peer] <= 0:
            del self.by_peer[peer]

    def refuse(self, kind: str, peer: str, text: str, **fields: object) -> None:
        refuse(self.refusals, self.name, kind, peer, text, **fields)
