"""The relay's own Prometheus metrics on ``[Relay] metrics_listen`` (off unless set): the same
per-relay families the dispatcher serves for all its relays, for this relay alone, and the
relay process's own (``mediaproxy_relay_process_*``). Useful where the dispatcher is far away,
or to see a relay that is not connected."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from twisted.application import service
from twisted.internet import defer

from mediaproxy import metrics
from mediaproxy.datatypes import NetworkAddress
from mediaproxy.net.guard import DescriptorBudget, GuardedFactory, Limits
from mediaproxy.net.ratelimit import Refusals
from mediaproxy.runtime.log import Logger

log = Logger(namespace="metrics")

# scrapers are few; anything more is someone else
LIMITS = Limits(max_connections=16, max_per_address=4, handshake_timeout=None)


class RelayCollector:
    def __init__(self, summary: Callable[[], dict]) -> None:
        self.summary = summary

    def collect(self) -> Iterator:
        yield from metrics.relay_families([self.summary()])


class MetricsListener(service.Service):
    def __init__(self, address: NetworkAddress, summary: Callable[[], dict], reactor, refusals: Refusals) -> None:
        self.address = address
        self.reactor = reactor
        self.refusals = refusals
        self.registry = metrics.registry(RelayCollector(summary), "mediaproxy_relay")
        self.port = None

    def startService(self) -> None:  # noqa: N802
        service.Service.startService(self)
        site = metrics.site(self.registry, lambda: defer.succeed(None))  # the summary is read at each scrape
        guarded = GuardedFactory(site, "metrics", LIMITS, DescriptorBudget(0, LIMITS.max_connections + 8), self.refusals, self.reactor)
        self.port = self.reactor.listenTCP(self.address.port, guarded, interface=self.address.host)
        log.info("Prometheus metrics at http://{address}/metrics", address=str(self.address))

    def stopService(self) -> defer.Deferred | None:  # noqa: N802
        service.Service.stopService(self)
        port, self.port = self.port, None
        return None if port is None else defer.maybeDeferred(port.stopListening)
