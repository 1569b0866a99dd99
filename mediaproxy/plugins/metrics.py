"""Prometheus metrics of the dispatcher and every connected relay, at ``/metrics`` on
``[Dispatcher] metrics_listen`` (off unless set).

A scrape asks each relay for its summary (at most once a second, however often it is scraped)
and renders the families from what came back and from the dispatcher's own counts, in the
reactor thread: nothing is read while the reactor changes it.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.plugin import IPlugin
from zope.interface import implementer, provider

from mediaproxy import metrics
from mediaproxy.dispatcher.recent import Recent
from mediaproxy.plugin import IDispatcherPlugin, IDispatcherPluginFactory, PluginBase
from mediaproxy.runtime.log import Logger

log = Logger(namespace="metrics")

SUMMARY_MAX_AGE = 1.0  # seconds a relay summary serves scrapes


class DispatcherCollector:
    """Turns the dispatcher's counts and the relays' latest summaries into metric families."""

    def __init__(self, dispatcher, refusals) -> None:
        self.dispatcher = dispatcher
        self.refusals = refusals
        self.summaries: list[dict] = []

    def collect(self):  # an iterator of metric families (prometheus_client's collector protocol)
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily  # noqa: PLC0415

        dispatcher = self.dispatcher
        yield from metrics.relay_families(self.summaries)

        calls = GaugeMetricFamily("mediaproxy_calls", "Calls in the dispatcher's call table")
        calls.add_metric([], dispatcher.call_count())
        yield calls
        connected = GaugeMetricFamily("mediaproxy_relays_connected", "Relays connected to the dispatcher")
        relays = dispatcher.connected_relays()
        connected.add_metric([], len(relays))
        yield connected
        round_trip = GaugeMetricFamily(
            "mediaproxy_relay_round_trip_seconds", "Time from a command to the relay's answer, the latest", labels=["relay"]
        )
        for link in relays:
            if link.round_trip is not None:
                round_trip.add_metric([link.ip], link.round_trip)
        yield round_trip

        stats = dispatcher.request_stats
        requests = CounterMetricFamily("mediaproxy_proxy_requests", "Proxy requests by command and result", labels=["command", "result"])
        for (command, result), count in sorted(stats.requests.items()):
            requests.add_metric([command, result], count)
        yield requests
        latency = HistogramMetricFamily("mediaproxy_proxy_request_duration_seconds", "Time to answer a proxy request", labels=["command"])
        for command, histogram in sorted(stats.latency.items()):
            latency.add_metric([command], histogram.cumulative(), histogram.total)
        yield latency

        refused = CounterMetricFamily("mediaproxy_refused", "What the dispatcher refused, by kind", labels=["kind"])
        for kind, count in self.refusals.snapshot().items():
            refused.add_metric([kind], count)
        yield refused

        backlog = GaugeMetricFamily("mediaproxy_accounting_backlog_records", "Records waiting in the spool", labels=["backend"])
        held = GaugeMetricFamily(
            "mediaproxy_accounting_held_records", "Records held in memory: the spool is unwritable", labels=["backend"]
        )
        available = GaugeMetricFamily("mediaproxy_accounting_available", "0 while the backend is unavailable", labels=["backend"])
        delivered = CounterMetricFamily("mediaproxy_accounting_delivered_records", "Records delivered", labels=["backend"])
        rejected = CounterMetricFamily("mediaproxy_accounting_rejected_records", "Records the backend refused for good", labels=["backend"])
        for status in dispatcher.accounting_status():
            backend = str(status["backend"])
            backlog.add_metric([backend], status["spooled"])
            held.add_metric([backend], status.get("held_in_memory", 0))
            available.add_metric([backend], 0.0 if status["state"] == "unavailable" else 1.0)
            delivered.add_metric([backend], status["delivered"])
            rejected.add_metric([backend], status["rejected"])
        yield from (backlog, held, available, delivered, rejected)


@implementer(IDispatcherPlugin)
class MetricsPlugin(PluginBase):
    name = "metrics"

    def __init__(self, config, context) -> None:
        self.address = config.dispatcher.metrics_listen
        self.context = context
        self.reactor = context.reactor
        self.collector = DispatcherCollector(context.dispatcher, context.refusals)
        self.registry = metrics.registry(self.collector, "mediaproxy_dispatcher")
        self.summaries = Recent(
            context.dispatcher.relay_summaries, context.reactor, SUMMARY_MAX_AGE, "the relays' summaries for the metrics"
        )
        self.port = None

    def refresh(self) -> defer.Deferred:
        """Fires once the collector has the relays' summaries: fetched now, unless a recent
        fetch will do; scrapes that arrive during a fetch wait for that one."""
        return self.summaries.get().addCallback(self._use)

    def _use(self, summaries: object) -> None:
        if isinstance(summaries, list):
            self.collector.summaries = summaries

    def start(self) -> None:
        site = metrics.site(self.registry, self.refresh)
        self.port = self.context.listen(site, "metrics", self.address)
        log.info("Prometheus metrics at http://{address}/metrics", address=str(self.address))

    def stop(self) -> defer.Deferred | None:
        if self.port is not None:
            return defer.maybeDeferred(self.port.stopListening)
        return None


@provider(IPlugin, IDispatcherPluginFactory)
class MetricsPluginFactory:
    name = "metrics"

    @staticmethod
    def create(config, context) -> MetricsPlugin | None:
        if config.dispatcher.metrics_listen is None:
            return None
        return MetricsPlugin(config, context)
