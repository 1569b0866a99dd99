"""What every connection a peer opens is held to: a slot within the listener's limits, a TLS
handshake within a deadline, and one log line (rate-limited per address) when it is refused.

``GuardedFactory`` wraps the factory of a listener (or of an outgoing TLS link); its protocols
sit between the transport and ours, so the limits apply the same way to every listener.
"""

from __future__ import annotations

import resource
from collections import Counter
from dataclasses import dataclass

from twisted.internet.interfaces import IHandshakeListener
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from zope.interface import implementer

from mediaproxy.log import Logger
from mediaproxy.ratelimit import Refusals

log = Logger(namespace="guard")


class DescriptorBudget:
    """Descriptors that accepted connections may take: the open-file limit less a reserve kept
    for what must never fail for want of one (the call table, the spool, database links)."""

    def __init__(self, reserve: int, limit: int) -> None:
        self.total = max(limit - reserve, 8)
        self.used = 0


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


@implementer(IHandshakeListener)
class GuardedProtocol(ProtocolWrapper):
    def __init__(self, factory: GuardedFactory, wrapped, peer: str) -> None:  # noqa: ANN001
        ProtocolWrapper.__init__(self, factory, wrapped)
        self.peer = peer
        self.handshake_done = False
        self.timed_out = False
        self._timer = None

    def makeConnection(self, transport) -> None:  # noqa: N802, ANN001
        timeout = self.factory.limits.handshake_timeout
        if timeout is not None:
            self._timer = self.factory.clock.callLater(timeout, self._handshake_overdue)
        ProtocolWrapper.makeConnection(self, transport)

    def _handshake_overdue(self) -> None:
        self._timer = None
        self.timed_out = True
        self.factory.refuse(
            "tls_handshake_timeout", self.peer, "no TLS handshake within {timeout}s", timeout=self.factory.limits.handshake_timeout
        )
        self.transport.abortConnection()

    def handshakeCompleted(self) -> None:  # noqa: N802
        self.handshake_done = True
        self._cancel_timer()
        # asked by name, not by interface: Twisted's ClientService wraps a protocol in a proxy that
        # passes attributes on but declares IProtocol only
        completed = getattr(self.wrappedProtocol, "handshakeCompleted", None)
        if completed is not None:
            completed()

    def connectionLost(self, reason) -> None:  # noqa: N802, ANN001
        self._cancel_timer()
        if self.factory.limits.handshake_timeout is not None and not self.handshake_done and not self.timed_out:
            self.factory.refuse("tls_failed", self.peer, "TLS handshake failed: {reason}", reason=tls_failure_text(reason))
        self.factory.release(self.peer)
        ProtocolWrapper.connectionLost(self, reason)

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None


def tls_failure_text(reason) -> str:  # noqa: ANN001 - a Failure
    """OpenSSL's reasons (``peer did not return a certificate``, ``unsupported protocol``,
    ``wrong version number``, ...) rather than the nested tuples pyOpenSSL raises."""
    args = getattr(reason.value, "args", ())
    errors = args[0] if args and isinstance(args[0], list) else []
    parts = [str(item[2]) for item in errors if isinstance(item, tuple) and len(item) == 3]
    return ", ".join(parts) if parts else reason.getErrorMessage()


class GuardedFactory(WrappingFactory):
    """Admits a connection if the listener, its source address and the descriptor budget have room."""

    protocol = GuardedProtocol
    noisy = False

    def __init__(self, wrapped, name: str, limits: Limits, budget: DescriptorBudget, refusals: Refusals, clock) -> None:  # noqa: ANN001, PLR0913
        WrappingFactory.__init__(self, wrapped)
        self.name = name
        self.limits = limits
        self.budget = budget
        self.refusals = refusals
        self.clock = clock
        self.count = 0
        self.by_peer: Counter[str] = Counter()

    def buildProtocol(self, addr):  # noqa: N802, ANN001, ANN201
        peer = getattr(addr, "host", None) or "local"
        if self.budget.used >= self.budget.total:
            self.refuse("descriptor_budget", peer, "refused: {used} connections use the descriptors not reserved", used=self.budget.used)
            return None
        if self.count >= self.limits.max_connections:
            self.refuse("listener_full", peer, "refused: the listener has {count} connections", count=self.count)
            return None
        if peer != "local" and self.by_peer[peer] >= self.limits.max_per_address:
            self.refuse("address_full", peer, "refused: {count} connections from this address already", count=self.by_peer[peer])
            return None
        wrapped = self.wrappedFactory.buildProtocol(addr)
        if wrapped is None:
            return None
        self.count += 1
        self.by_peer[peer] += 1
        self.budget.used += 1
        return self.protocol(self, wrapped, peer)

    def release(self, peer: str) -> None:
        self.count -= 1
        self.budget.used -= 1
        self.by_peer[peer] -= 1
        if self.by_peer[peer] <= 0:
            del self.by_peer[peer]

    def refuse(self, kind: str, peer: str, text: str, **fields: object) -> None:
        self.refusals.refuse(kind, peer, log, "{listener}: connection from {peer} " + text, listener=self.name, **fields)
