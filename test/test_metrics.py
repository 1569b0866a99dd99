"""Prometheus metrics: the families from a dispatcher's state, and a scrape of the real programs
during a call with media, checked against what media-sessions reports."""

import io
import json
import os
import re
import socket
import urllib.error
import urllib.request

import pytest
from deployment import Deployment, call, establish, exchange, udp_endpoint, wait_until
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from test_dispatcher_core import answer, commands, link_from, make, set_up_call

from harness import ROOT, free_port
from mediaproxy.cli import sessions as sessions_cli
from mediaproxy.dispatcher.view import DispatcherView
from mediaproxy.net.ratelimit import Refusals
from mediaproxy.plugins.metrics import DispatcherCollector
from mediaproxy.testing import remove
from mediaproxy.wire import statistics


def samples(text):
    """{(name, frozenset of labels): value} from the text format."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def test_families_from_the_dispatcher_and_the_relays_summaries(tmp_path):
    clock, registry, dispatcher = make(tmp_path)
    link, transport = link_from(registry, "192.0.2.1")
    ((_, seq, _),) = commands(transport)  # the listing asked on connect
    answer(link, seq, statistics.format_page([], None))
    set_up_call(dispatcher, link, transport, "a")
    refusals = Refusals(clock)
    refusals.count("bad proxy request")
    collector = DispatcherCollector(DispatcherView(dispatcher), refusals)
    collector.summaries = [
        {
            "ip": "192.0.2.1",
            "status": "active",
            "session_count": 1,
            "refused": {"stolen packet": 2},
            "metrics": {
                "streams": {"learning": 0, "userspace": 1, "kernel": 2, "on hold": 0},
                "packets_relayed": 300,
                "bytes_relayed": 60000,
                "sessions_ended": {"bye": 4},
                "ports": {"used": 6, "free": 494},
            },
        },
        {"ip": "192.0.2.2", "status": "error"},  # did not answer
    ]
    metrics = CollectorRegistry(auto_describe=False)
    metrics.register(collector)
    found = samples(generate_latest(metrics).decode())

    def value(name, **labels):
        return found[(name, frozenset(labels.items()))]

    assert value("mediaproxy_relay_up", relay="192.0.2.1") == 1 and value("mediaproxy_relay_up", relay="192.0.2.2") == 0
    assert value("mediaproxy_sessions", relay="192.0.2.1") == 1
    assert value("mediaproxy_streams", relay="192.0.2.1", path="kernel") == 2
    assert value("mediaproxy_relayed_packets_total", relay="192.0.2.1") == 300
    assert value("mediaproxy_relayed_bytes_total", relay="192.0.2.1") == 60000
    assert value("mediaproxy_sessions_ended_total", relay="192.0.2.1", reason="bye") == 4
    assert value("mediaproxy_ports", relay="192.0.2.1", state="free") == 494
    assert value("mediaproxy_relay_refused_total", relay="192.0.2.1", kind="stolen packet") == 2
    assert value("mediaproxy_refused_total", kind="bad proxy request") == 1
    assert value("mediaproxy_calls") == 1 and value("mediaproxy_relays_connected") == 1
    # the call's offer, answered; its latency is in the histogram
    assert value("mediaproxy_proxy_requests_total", command="update", result="ok") == 1
    assert value("mediaproxy_proxy_request_duration_seconds_count", command="update") == 1
    assert value("mediaproxy_proxy_request_duration_seconds_bucket", command="update", le="+Inf") == 1
    assert value("mediaproxy_relay_round_trip_seconds", relay="192.0.2.1") >= 0
    assert not [key for key in found if key[0].startswith("mediaproxy_streams") and ("relay", "192.0.2.2") in key[1]]
    # every metric the shipped Grafana dashboard queries is one we export
    text = generate_latest(metrics).decode()
    exported = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}
    exported |= {name for name, _ in found}
    with open(os.path.join(ROOT, "docs", "grafana-dashboard.json")) as file:
        queried = set(re.findall(r"mediaproxy_[a-z_]+", file.read())) - {"mediaproxy_dispatcher_process"}
    assert queried and queried <= exported, queried - exported
    dispatcher.stop()


def scrape(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        assert answer.headers["Content-Type"].startswith("text/plain")
        return samples(answer.read().decode())


def test_a_scrape_during_a_call_matches_media_sessions(tmp_path):
    metrics_port, relay_metrics_port = free_port(), free_port()
    programs = Deployment(
        tmp_path,
        f"[Dispatcher]\nmetrics_listen = 127.0.0.1:{metrics_port}\n[Relay]\nmetrics_listen = {relay_metrics_port}\n",
        stream_timeout=30,
    ).start()
    caller, callee = udp_endpoint(), udp_endpoint()
    try:
        programs.dispatcher.wait_for_log(f"Prometheus metrics at http://127.0.0.1:{metrics_port}/metrics")
        proxy = programs.proxy()
        caller_facing, callee_facing = call(proxy, "metered", caller, callee)
        establish(caller, callee, caller_facing, callee_facing)
        exchange(caller, callee, caller_facing, callee_facing, 20)
        shown = io.StringIO()
        assert sessions_cli.main(["--json", "--no-tls", "--port", str(programs.management_port)], shown) == 0
        answers = json.loads(shown.getvalue())
        ((session,), (relay,)) = answers["sessions"], answers["summary"]
        (stream,) = session["streams"]
        found = scrape(metrics_port)
        relay_label = frozenset({("relay", "127.0.0.1")})
        assert found[("mediaproxy_sessions", relay_label)] == relay["session_count"] == 1
        assert found[("mediaproxy_streams", relay_label | {("path", "userspace")})] == 1
        # packets relayed: what the call's record counts each way (the relay has had no other call)
        relayed = stream["caller_packets"] + stream["callee_packets"]
        assert relayed >= 40 and found[("mediaproxy_relayed_packets_total", relay_label)] == relayed
        assert found[("mediaproxy_relayed_bytes_total", relay_label)] == stream["caller_bytes"] + stream["callee_bytes"]
        assert found[("mediaproxy_proxy_requests_total", frozenset({("command", "update"), ("result", "ok")}))] == 2
        # the relay's own metrics (a port alone: on 127.0.0.1) say the same of it
        programs.relay.wait_for_log(f"Prometheus metrics at http://127.0.0.1:{relay_metrics_port}/metrics")
        own = scrape(relay_metrics_port)
        assert own[("mediaproxy_sessions", relay_label)] == 1 and own[("mediaproxy_relay_up", relay_label)] == 1
        assert own[("mediaproxy_relayed_packets_total", relay_label)] == relayed
        assert own[("mediaproxy_relay_process_open_fds", frozenset())] > 0
        assert proxy.request(remove("metered", "ft", "tt")) == "removed"

        def ended():
            return scrape(metrics_port).get(("mediaproxy_sessions_ended_total", relay_label | {("reason", "bye")}))

        wait_until(lambda: ended() == 1, "the ended session counted")  # summaries are reused for up to a second
        # garbage and unknown paths on the metrics port harm nothing
        with socket.create_connection(("127.0.0.1", metrics_port), timeout=5) as raw:
            raw.sendall(b"\x16\x03\x01 not http at all\r\n\r\n")
            assert raw.recv(4096).startswith(b"HTTP/1.1 400")
        with pytest.raises(urllib.error.HTTPError, match="404"):
            urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/sessions", timeout=5)
        after = scrape(metrics_port)
        assert after[("mediaproxy_sessions", relay_label)] == 0
        assert after[("mediaproxy_relayed_packets_total", relay_label)] == relayed  # the totals keep ended sessions
        assert after[("mediaproxy_proxy_requests_total", frozenset({("command", "remove"), ("result", "ok")}))] == 1
        assert after[("mediaproxy_dispatcher_process_open_fds", frozenset())] > 0
    finally:
        programs.kill()
        caller.close()
        callee.close()
