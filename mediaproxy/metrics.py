"""Prometheus metrics shared by the dispatcher (every relay's) and a relay (its own): the
families made from relay summaries, and the ``/metrics`` page.

prometheus-client is imported only where metrics are turned on.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet import defer
from twisted.web import resource, server

from mediaproxy.net import httpsite
from mediaproxy.runtime.log import Logger
from mediaproxy.wire.jsontext import number

log = Logger(namespace="metrics")


def relay_families(summaries: list[dict]) -> list:
    """The per-relay families from relays' summaries (the ``summary`` answer, with its ``metrics``)."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily  # noqa: PLC0415

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
    for summary in summaries:
        relay = str(summary.get("ip", "?"))
        up.add_metric([relay], 1.0 if summary.get("status") == "active" else 0.0)
        measured = summary.get("metrics")
        if summary.get("status") == "error" or not isinstance(measured, dict):
            continue  # an original relay has no metrics; one that did not answer has nothing
        sessions.add_metric([relay], number(summary.get("session_count")))
        for path, count in _items(measured.get("streams")):
            streams.add_metric([relay, path], number(count))
        packets.add_metric([relay], number(measured.get("packets_relayed")))
        octets.add_metric([relay], number(measured.get("bytes_relayed")))
        for reason, count in _items(measured.get("sessions_ended")):
            ended.add_metric([relay, reason], number(count))
        for state, count in _items(measured.get("ports")):
            ports.add_metric([relay, state], number(count))
        for kind, count in _items(summary.get("refused")):
            relay_refused.add_metric([relay, kind], number(count))
    return [up, sessions, streams, packets, octets, ended, ports, relay_refused]


def _items(value: object) -> list[tuple[str, object]]:
    return [(str(key), count) for key, count in value.items()] if isinstance(value, dict) else []


class MetricsPage(resource.Resource):
    """``/metrics``: once ``refresh`` fired (fresh data for the collectors), the text format."""

    isLeaf = True

    def __init__(self, registry, refresh: Callable[[], defer.Deferred]) -> None:
        super().__init__()
        self.registry = registry
        self.refresh = refresh

    def render_GET(self, request):  # noqa: N802
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest  # noqa: PLC0415

        def render(_: object) -> None:
            if request.finished or getattr(request, "_disconnected", False):
                return
            request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode())
            request.write(generate_latest(self.registry))
            request.finish()

        def failed(failure) -> None:
            log.failure("Metrics scrape failed", failure)
            if not request.finished:
                request.setResponseCode(500)
                request.finish()

        self.refresh().addCallback(render).addErrback(failed)
        return server.NOT_DONE_YET


def registry(collector: object, process_namespace: str):  # a prometheus_client CollectorRegistry
    """A registry with ``collector`` and this process's own metrics (memory, CPU, open files)."""
    from prometheus_client import CollectorRegistry  # noqa: PLC0415
    from prometheus_client.process_collector import ProcessCollector  # noqa: PLC0415

    built = CollectorRegistry(auto_describe=False)
    built.register(collector)
    ProcessCollector(namespace=process_namespace, registry=built)
    return built


def site(registry, refresh: Callable[[], defer.Deferred]) -> server.Site:
    """The site serving ``/metrics`` (and nothing else)."""
    root = resource.Resource()
    root.putChild(b"metrics", MetricsPage(registry, refresh))
    return httpsite.site(root)
