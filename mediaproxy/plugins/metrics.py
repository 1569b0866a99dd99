"""Prometheus metrics of the dispatcher and every connected relay, at ``/metrics`` on
``[Dispatcher] metrics_listen`` (off unless set).

A scrape asks each relay for its summary (at most once a second, however often it is scraped)
and renders the families from what came back and from the dispatcher's own counts, in the
reactor thread: nothing is read while the reactor changes it.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.logger import Logger
from twisted.plugin import IPlugin
from twisted.web import resource, server
from zope.interface import implementer, provider

from mediaproxy import httpsite
from mediaproxy.dispatcher.recent import Recent
from mediaproxy.plugin import IDispatcherPlugin, IDispatcherPluginFactory, PluginBase
from mediaproxy.wire.jsontext import number

log = Logger(namespace="metrics")

SUMMARY_MAX_AGE = 1.0  # seconds a relay summary serves scrapes


class DispatcherCollector:
    """Turns the dispatcher's counts and the relays' latest summaries into metric families."""

    def __init__(self, dispatcher, refusals) -> None:  # noqa: ANN001
        self.dispatcher = dispatcher
        self.refusals = refusals
        self.summaries: list[dict] = []

    def collect(self):  # noqa: ANN201 - an iterator of metric families (prometheus_client's collector protocol)
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily  # noqa: PLC0415

        dispatcher = self.dispatcher
        up = GaugeMetricFamily("mediaproxy_relay_up", "1 for a connected relay that answers and takes calls", labels=["relay"])
        sessions = GaugeMetricFamily("mediaproxy_sessions", "Sessions on the relay", labels=["relay"])
        streams = GaugeMetricFamily(
            "mediaproxy_streams", "Alive media streams by the path their RTP takes (or on hold)", labels=["relay", "path"]
        )
        packets = CounterMetricFamily("mediaproxy_relayed_packets", "Packets relayed since the relay started", labels=["relay"])
        octets = CounterMetricFamily("mediaproxy_relayed_bytes", "Bytes (IP packets) relayed since the relay started", labels=["relay"])
        ended = CounterMetricFamily("mediaproxy_sessions_ended", "Sessions ended since the relay started", labels=["relay", "reason"])
        ports = GaugeMetricFamily("mediaproxy_ports", "RTP port pairs of port_range", labels=["relay", "state"])
        relay_refused = CounterMetricFamily("mediaproxy_relay_refused", "What the relay refused, by kind", labels=["relay", "kind"])
        for summary in self.summaries:
            relay = str(summary.get("ip", "?"))
            up.add_metric([relay], 1.0 if summary.get("status") == "active" else 0.0)
            metrics = summary.get("metrics")
            if summary.get("status") == "error" or not isinstance(metrics, dict):
                continue  # an original relay has no metrics; one that did not answer has nothing
            sessions.add_metric([relay], number(summary.get("session_count")))
            for path, count in _items(metrics.get("streams")):
                streams.add_metric([relay, path], number(count))
            packets.add_metric([relay], number(metrics.get("packets_relayed")))
            octets.add_metric([relay], number(metrics.get("bytes_relayed")))
            for reason, count in _items(metrics.get("sessions_ended")):
                ended.add_metric([relay, reason], number(count))
            for state, count in _items(metrics.get("ports")):
                ports.add_metric([relay, state], number(count))
            for kind, count in _items(summary.get("refused")):
                relay_refused.add_metric([relay, kind], number(count))
        yield from (up, sessions, streams, packets, octets, ended, ports, relay_refused)

        calls = GaugeMetricFamily("mediaproxy_calls", "Calls in the dispatcher's call table")
        calls.add_metric([], len(dispatcher.table))
        yield calls
        relays = GaugeMetricFamily("mediaproxy_relays_connected", "Relays connected to the dispatcher")
        relays.add_metric([], len(dispatcher.registry.accepted()))
        yield relays
        round_trip = GaugeMetricFamily(
            "mediaproxy_relay_round_trip_seconds", "Time from a command to the relay's answer, the latest", labels=["relay"]
        )
        for link in dispatcher.registry.accepted():
            if link.round_trip is not None:
                round_trip.add_metric([link.ip], link.round_trip)
        yield round_trip

        stats = dispatcher.stats
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
        for status in dispatcher.plugins.accounting_status():
            backend = str(status["backend"])
            backlog.add_metric([backend], status["spooled"])
            held.add_metric([backend], status.get("held_in_memory", 0))
            available.add_metric([backend], 0.0 if status["state"] == "unavailable" else 1.0)
            delivered.add_metric([backend], status["delivered"])
            rejected.add_metric([backend], status["rejected"])
        yield from (backlog, held, available, delivered, rejected)


def _items(value: object) -> list[tuple[str, object]]:
    return [(str(key), count) for key, count in value.items()] if isinstance(value, dict) else []


class MetricsPage(resource.Resource):
    """``/metrics``: the relays' summaries fetched (or a recent one reused), then the text format."""

    isLeaf = True

    def __init__(self, plugin: MetricsPlugin) -> None:
        super().__init__()
        self.plugin = plugin

    def render_GET(self, request):  # noqa: N802, ANN001, ANN201
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest  # noqa: PLC0415

        def render(_: object) -> None:
            if request.finished or getattr(request, "_disconnected", False):
                return
            request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode())
            request.write(generate_latest(self.plugin.registry))
            request.finish()

        def failed(failure) -> None:  # noqa: ANN001
            log.failure("Metrics scrape failed", failure)
            if not request.finished:
                request.setResponseCode(500)
                request.finish()

        self.plugin.refresh().addCallback(render).addErrback(failed)
        return server.NOT_DONE_YET


@implementer(IDispatcherPlugin)
class MetricsPlugin(PluginBase):
    name = "metrics"

    def __init__(self, config, context) -> None:  # noqa: ANN001
        from prometheus_client import CollectorRegistry  # noqa: PLC0415
        from prometheus_client.process_collector import ProcessCollector  # noqa: PLC0415

        self.address = config.dispatcher.metrics_listen
        self.context = context
        self.reactor = context.reactor
        self.collector = DispatcherCollector(context.dispatcher, context.refusals)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.collector)
        ProcessCollector(namespace="mediaproxy_dispatcher", registry=self.registry)
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
        root = resource.Resource()
        root.putChild(b"metrics", MetricsPage(self))
        site = httpsite.site(root)
        factory = site if self.context.guard is None else self.context.guard(site, "metrics", False)
        self.port = self.reactor.listenTCP(self.address.port, factory, interface=self.address.host)
        log.info("Prometheus metrics at http://{address}/metrics", address=str(self.address))

    def stop(self) -> defer.Deferred | None:
        if self.port is not None:
            return defer.maybeDeferred(self.port.stopListening)
        return None


@provider(IPlugin, IDispatcherPluginFactory)
class MetricsPluginFactory:
    name = "metrics"

    @staticmethod
    def create(config, context) -> MetricsPlugin | None:  # noqa: ANN001
        if config.dispatcher.metrics_listen is None:
            return None
        return MetricsPlugin(config, context)
