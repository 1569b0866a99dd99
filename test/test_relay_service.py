"""The relay's service wiring in memory: keepalives, commands over the link, DNS, sampling, drain."""

import dataclasses
import json
import os
import re
import tempfile

import pytest
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.names import dns
from twisted.python.failure import Failure

from mediaproxy.configuration import Configuration, RelayConfig
from mediaproxy.datatypes import endpoint_list
from mediaproxy.net import certgen
from mediaproxy.net.tls import Credentials
from mediaproxy.relay import service as service_module
from mediaproxy.relay.link import DispatcherLink
from mediaproxy.relay.model import serialize
from mediaproxy.relay.service import RelayService
from mediaproxy.runtime import heap
from mediaproxy.testing import FakeBinder
from mediaproxy.wire import statistics

UPDATE_C1 = (
    b"update 0\r\ntype: request\r\ncall_id: c1\r\ncseq: 1\r\nfrom_uri: a\r\nto_uri: b\r\nfrom_tag: ft\r\nuser_agent: ua\r\n"
    b"signaling_ip: 127.0.0.1\r\nmedia: audio:192.0.2.1:6000:sendrecv:ice=no\r\n\r\n"
)
CERTS = tempfile.mkdtemp(prefix="mp-certs-")
certgen.generate(CERTS)


class FakeResolver:
    def __init__(self, srv=None, hosts=None):
        self.srv = srv or {}
        self.hosts = hosts or {}
        self.lookups = []

    def lookupService(self, name):
        self.lookups.append(name)
        if name not in self.srv:
            return defer.fail(Exception("no SRV"))
        record = dns.RRHeader(name=name, type=dns.SRV, payload=dns.Record_SRV(0, 0, 5060, self.srv[name]))
        return defer.succeed(([record], [], []))

    def getHostByName(self, name):
        if name not in self.hosts:
            return defer.fail(Exception("no A"))
        return defer.succeed(self.hosts[name])


def make_relay(dispatchers="127.0.0.1", resolver=None, **options):
    reactor = MemoryReactorClock()
    config = RelayConfig(
        dispatchers=endpoint_list(25060)(dispatchers),
        relay_ip="127.0.0.1",
        **{"forwarding": "userspace", "userspace_workers": 0, **options},
    )
    relay = RelayService(Configuration(relay=config), Credentials(CERTS, "relay"), reactor, resolver=resolver)
    relay.sessions.binder = FakeBinder()
    relay.verifier.accept = lambda transport, name=None: True
    return relay, reactor


def _attempt(relay, key):
    """The latest connection attempt to dispatcher ``key``: the factory ClientService's endpoint gave the reactor."""
    reactor = relay.reactor
    (index,) = [i for i, attempt in enumerate(reactor.sslClients) if attempt[:2] == key][-1:]
    return reactor.sslClients[index][2], reactor.connectors[index]


def connect_link(relay, key):
    """Complete the pending attempt to dispatcher ``key`` through the protocols ClientService and
    the endpoint wrap around the link, TLS handshake included; the link and its transport."""
    factory, _ = _attempt(relay, key)
    outer = factory.buildProtocol(IPv4Address("TCP", *key))
    transport = StringTransport()
    outer.makeConnection(transport)
    outer.handshakeCompleted()
    link = relay.connectors[key].link
    assert isinstance(link, DispatcherLink)
    link.outer = outer  # what the reactor would tell of the connection's end
    return link, transport


def lose(link, reason=ConnectionDone):
    link.outer.connectionLost(Failure(reason()))


def test_keepalive_drops_the_link_after_three_missed_pongs():
    relay, reactor = make_relay(keepalive_interval=10)
    relay.startService()
    link, transport = connect_link(relay, ("127.0.0.1", 25060))
    for _ in range(3):
        reactor.advance(10)
    assert transport.value() == b"ping\r\n" * 3
    link.lineReceived(b"pong")
    reactor.advance(10)
    assert transport.value().count(b"ping") == 4 and not transport.disconnecting
    reactor.advance(10)  # a fifth ping is due with three still unanswered: drop and reconnect
    assert transport.disconnecting
    assert transport.value().count(b"ping") == 4


def test_commands_over_the_link():
    relay, _ = make_relay()
    relay.startService()
    link, transport = connect_link(relay, ("127.0.0.1", 25060))
    link.dataReceived(UPDATE_C1)
    assert re.fullmatch(rb"0 127\.0\.0\.1 \d+\r\n", transport.value())
    transport.clear()
    link.dataReceived(b"update 1\r\ncall_id: c2\r\ncseq: nope\r\n\r\n")
    assert transport.value() == b"1 error\r\n"
    transport.clear()
    # what the dispatcher checks is checked here too, by the same parser; an over-long line
    # spoils only its own command, and the link goes on
    link.dataReceived(b"remove 11\r\ncall_id: c2\r\ncall_id: c1\r\nfrom_tag: ft\r\n\r\n")
    link.dataReceived(b"remove 12\r\ncall_id: c1\r\nfrom_tag: " + b"x" * 20000 + b"\r\n\r\n")
    link.dataReceived(UPDATE_C1.replace(b"cseq: 1", "cseq: \u0661".encode()).replace(b"update 0", b"update 13"))
    assert transport.value() == b"11 error\r\n12 error\r\n13 error\r\n" and not transport.disconnecting
    transport.clear()
    link.dataReceived(b"frobnicate 2\r\n")
    assert transport.value() == b"2 error\r\n"
    transport.clear()
    link.dataReceived(b"summary 3\r\n\r\nsessions 4\r\n\r\n")
    summary_line, sessions_line = transport.value().decode().strip().split("\r\n")
    assert json.loads(summary_line.split(" ", 1)[1])["session_count"] == 1
    assert json.loads(sessions_line.split(" ", 1)[1])[0]["call_id"] == "c1"
    transport.clear()
    link.dataReceived(b"remove 5\r\ncall_id: c1\r\nfrom_tag: ft\r\n\r\n")
    seq, payload = transport.value().decode().strip().split(" ", 1)
    assert seq == "5" and json.loads(payload)["call_id"] == "c1"


def test_expiry_is_reported_to_the_dispatcher_that_created_the_session():
    relay, reactor = make_relay(stream_timeout=5)
    relay.startService()
    link, transport = connect_link(relay, ("127.0.0.1", 25060))
    link.dataReceived(UPDATE_C1)
    transport.clear()
    reactor.advance(6)
    line = transport.value().decode().strip()
    assert line.startswith("expired ")
    expired = json.loads(line[len("expired ") :])
    assert (expired["call_id"], expired["end_reason"]) == ("c1", "no-traffic timeout")


def test_expiries_while_the_dispatcher_is_away_are_reported_when_it_is_back(monkeypatch):
    monkeypatch.setattr(service_module, "MAX_HELD_EXPIRED", 2)
    relay, reactor = make_relay(stream_timeout=5)
    relay.startService()
    link, transport = connect_link(relay, ("127.0.0.1", 25060))
    for call_id in (b"c1", b"c2", b"c3"):
        link.dataReceived(UPDATE_C1.replace(b"c1", call_id))
    lose(link)
    reactor.advance(6)  # all three expire with no link: two are held, the oldest is dropped
    assert relay.sessions.sessions == {}
    for _ in range(4):  # the link was up for less than 5 s: the next attempt is reconnect_delay (10 s) after it
        reactor.advance(1)
    assert len(reactor.sslClients) == 2
    _, transport = connect_link(relay, ("127.0.0.1", 25060))
    lines = transport.value().decode().strip().split("\r\n")
    assert [json.loads(line[len("expired ") :])["call_id"] for line in lines] == ["c2", "c3"]
    assert all(line.startswith("expired ") for line in lines)
    assert relay.held.count(("127.0.0.1", 25060)) == 0


def test_sessions_come_in_pages_that_mark_the_asking_dispatchers_own(monkeypatch):
    relay, _ = make_relay("127.0.0.1 127.0.0.2")
    relay.startService()
    first, first_transport = connect_link(relay, ("127.0.0.1", 25060))
    second, _ = connect_link(relay, ("127.0.0.2", 25060))
    for number in range(5):
        link = first if number % 2 == 0 else second
        link.dataReceived(UPDATE_C1.replace(b"call_id: c1", f"call_id: c{number}".encode()))
    first_transport.clear()
    monkeypatch.setattr(statistics, "PAGE_BYTES", 1)  # one session a page
    seen, position, seq = [], 0, 100
    while position is not None:
        first.dataReceived(f"sessions {seq}\r\npage: {position}\r\n\r\n".encode())
        answer_seq, payload = first_transport.value().decode().strip().split(" ", 1)
        first_transport.clear()
        page = statistics.parse_sessions(payload)
        assert answer_seq == str(seq) and len(page.records) == 1
        seen += [(record.call_id, bool(record.yours)) for record in page.records]
        if len(seen) == 2:  # a session that ends while the listing goes on is not listed; the others are
            first.dataReceived(b"remove 99\r\ncall_id: c2\r\nfrom_tag: ft\r\n\r\n")
            first_transport.clear()
        position, seq = page.next, seq + 1
    assert seen == [("c0", True), ("c1", False), ("c3", False), ("c4", True)]
    first.dataReceived(b"sessions 7\r\npage: x\r\n\r\n")
    assert first_transport.value() == b"7 error\r\n"
    first_transport.clear()
    # one call's sessions: how a dispatcher finds a call another proxy's dispatcher set up
    first.dataReceived(b"sessions 8\r\npage: 0\r\ncall_id: c3\r\n\r\n")
    page = statistics.parse_sessions(first_transport.value().decode().strip().split(" ", 1)[1])
    assert [(record.call_id, bool(record.yours)) for record in page.records] == [("c3", False)] and page.next is None
    first_transport.clear()
    first.dataReceived(b"sessions 9\r\npage: 0\r\ncall_id: c3\r\ncall_id: c4\r\n\r\nsessions 10\r\ncall_id: c3\r\n\r\n")
    assert first_transport.value() == b"9 error\r\n10 error\r\n"


def test_the_memory_of_a_listing_goes_back_once_its_pages_have_left(monkeypatch):
    relay, reactor = make_relay()
    relay.startService()
    link, transport = connect_link(relay, ("127.0.0.1", 25060))
    link.dataReceived(UPDATE_C1)
    trims = []
    monkeypatch.setattr(heap, "give_back", lambda: trims.append(reactor.seconds()))
    for seq in (1, 2, 3):  # the pages of one listing: one give-back, after the last
        link.dataReceived(f"sessions {seq}\r\npage: 0\r\n\r\n".encode())
        reactor.advance(0.5)
    reactor.advance(1.0)
    assert trims == []  # 2.5 s after the first page, 1.5 s after the last
    reactor.advance(0.5)
    assert trims == [1.0 + service_module.LISTING_GIVE_BACK_DELAY]
    link.dataReceived(b"sessions 4\r\npage: 0\r\n\r\n")  # the next listing: the next give-back
    relay.stopService()
    reactor.advance(service_module.LISTING_GIVE_BACK_DELAY)
    assert len(trims) == 1  # stopped: nothing is left to run


def test_dispatcher_names_use_srv_then_a():
    resolver = FakeResolver(
        srv={"_sip._udp.example.com": "dispatcher1.example.com"},
        hosts={"dispatcher1.example.com": "192.0.2.7", "other.example.com": "192.0.2.8"},
    )
    relay, reactor = make_relay("example.com:25070 other.example.com missing.example.com", resolver=resolver)
    relay.startService()
    assert set(relay.connectors) == {("192.0.2.7", 25070), ("192.0.2.8", 25060)}
    assert [call[0] for call in reactor.sslClients] == ["192.0.2.7", "192.0.2.8"]
    assert "_sip._udp.missing.example.com" in resolver.lookups


def test_traffic_sampling():
    relay, reactor = make_relay(traffic_sampling_period=10)
    relay.startService()
    relay.sessions.closed_bytes = 10_000
    reactor.advance(10)
    assert relay.bps_relayed == 8 * 10_000 / 10
    reactor.advance(10)
    assert relay.bps_relayed == 0
    assert relay.summary()["bps_relayed"] == 0


def test_graceful_shutdown_without_sessions_stops_at_once():
    relay, reactor = make_relay()
    relay.startService()
    reactor.running = True
    stopped = []
    reactor.stop = lambda: stopped.append(True)
    relay.graceful_shutdown()
    reactor.advance(0)
    assert stopped == [True]
    assert relay.summary()["status"] == "halting"


def test_hard_shutdown_reports_every_session_and_disconnects():
    relay, reactor = make_relay()
    relay.startService()
    link, transport = connect_link(relay, ("127.0.0.1", 25060))
    link.dataReceived(UPDATE_C1)
    transport.clear()
    done = relay.stopService()
    assert transport.value().startswith(b"expired ")
    assert json.loads(transport.value().decode().split(" ", 1)[1])["end_reason"] == "relay shutdown"
    assert transport.disconnecting and not done.called
    lose(link)
    assert done.called
    assert relay.sessions.binder.open == set()


def test_file_limit_error_is_clear(monkeypatch):
    import resource

    from mediaproxy.datatypes import PortRange
    from mediaproxy.relay.service import raise_file_limit
    from mediaproxy.runtime.process import StartupError

    monkeypatch.setattr(resource, "getrlimit", lambda which: (1024, 1024))

    def refuse(which, limits):
        raise ValueError("not allowed")

    monkeypatch.setattr(resource, "setrlimit", refuse)
    try:
        raise_file_limit(PortRange(40000, 60000))
    except StartupError as error:
        assert "21000" in str(error) and "LimitNOFILE" in str(error)
    else:
        raise AssertionError("no StartupError")
    assert os.path.isdir(CERTS)


def test_auto_detect_interfaces_binds_towards_caller_and_destination():
    relay, _ = make_relay(auto_detect_interfaces=True)
    from mediaproxy.wire.headers import parse_signaling_ip

    assert relay.sessions.bind_addresses(parse_signaling_ip("127.0.0.2_127.0.0.3")) == ("127.0.0.1", "127.0.0.1")
    assert relay.sessions.bind_addresses(parse_signaling_ip('{"signaling_ip": "127.0.0.2"}')) == ("127.0.0.1", "127.0.0.1")
    # advertised_ip turns auto-detection off: relay_ip is used for both sides
    plain, _ = make_relay(auto_detect_interfaces=True, advertised_ip="192.0.2.200")
    assert plain.sessions.bind_addresses(parse_signaling_ip("10.9.9.9")) == ("127.0.0.1", "127.0.0.1")
    assert plain.sessions.policy.advertised_ip == "192.0.2.200"


def test_the_dispatcher_name_is_verified_only_when_asked_and_configured_by_name():
    from mediaproxy.datatypes import Endpoint
    from mediaproxy.relay.connector import DispatcherConnector

    named, by_ip = Endpoint("dispatcher.example.com", 25060), Endpoint("192.0.2.1", 25060)
    checking, _ = make_relay(verify_dispatcher_name=True)
    assert DispatcherConnector(checking, named, "192.0.2.1", 25060).name_to_verify == "dispatcher.example.com"
    assert DispatcherConnector(checking, by_ip, "192.0.2.1", 25060).name_to_verify is None
    default, _ = make_relay()
    assert DispatcherConnector(default, named, "192.0.2.1", 25060).name_to_verify is None


RTP = bytes([0x80, 0x00]) + bytes(10) + b"media"
ANSWER_C1 = (
    b"update 1\r\ntype: reply\r\ncall_id: c1\r\ncseq: 1\r\nfrom_uri: a\r\nto_uri: b\r\nfrom_tag: ft\r\nto_tag: tt\r\nuser_agent: ua\r\n"
    b"signaling_ip: 127.0.0.1\r\nmedia: audio:192.0.2.2:7000:sendrecv:ice=no\r\n\r\n"
)


def _answered_call(tmp_path):
    """A relay keeping its sessions in ``tmp_path``, with one answered call; its link and ports."""
    relay, reactor = _relay_with_state(tmp_path)
    relay.startService()
    link, transport = connect_link(relay, ("127.0.0.1", 25060))
    link.dataReceived(UPDATE_C1 + ANSWER_C1)
    callee_port = int(transport.value().split(b"\r\n")[0].split()[2])
    caller_port = int(transport.value().split(b"\r\n")[1].split()[2])
    return relay, reactor, transport, caller_port, callee_port


def test_a_stopped_relay_keeps_its_sessions_for_the_next_start(tmp_path):
    relay, _, transport, caller_port, callee_port = _answered_call(tmp_path)
    binder = relay.sessions.binder
    for _ in range(3):
        binder.by_port[caller_port].deliver(RTP, ("192.0.2.1", 6000))
        binder.by_port[callee_port].deliver(RTP, ("192.0.2.2", 7000))
    transport.clear()
    relay.stopService()
    assert transport.value() == b""  # nothing expired, nothing reported
    assert binder.open == set()  # every socket closed
    # the next process: same ports, same latches, the counting goes on
    again, reactor = _relay_with_state(tmp_path)
    again.startService()
    (session,) = again.sessions.sessions.values()
    stream = session.streams[0]
    assert (stream.caller_port, stream.callee_port) == (caller_port, callee_port)
    assert stream.rtp.caller.remote == ("192.0.2.1", 6000) and stream.rtp.callee.in_use
    assert session.dispatcher == ("127.0.0.1", 25060) and session.to_tag == "tt"
    again.sessions.binder.by_port[caller_port].deliver(RTP, ("192.0.2.1", 6000))
    assert again.sessions.binder.by_port[callee_port].sent == [(RTP, ("192.0.2.2", 7000))]
    link, transport = connect_link(again, ("127.0.0.1", 25060))
    link.dataReceived(b"remove 2\r\ncall_id: c1\r\nfrom_tag: ft\r\n\r\n")
    record = json.loads(transport.value().decode().split(" ", 1)[1])
    # the caller's first packet had nowhere to go yet (the callee unlearnt, its SDP address not routable)
    assert record["streams"][0]["caller_packets"] == 2 + 1 and record["streams"][0]["callee_packets"] == 3
    assert record["end_reason"] == "bye"
    # a clean stop without sessions leaves nothing to take back
    again.stopService()
    third, _ = _relay_with_state(tmp_path)
    third.startService()
    assert third.sessions.sessions == {}


def test_a_killed_relay_takes_back_what_it_had_written(tmp_path):
    relay, reactor, _, caller_port, _ = _answered_call(tmp_path)
    relay.sessions.binder.by_port[caller_port].deliver(RTP, ("192.0.2.1", 6000))
    reactor.advance(0)  # the latch is kept at the end of the reactor turn
    # killed: no stop at all
    again, _ = _relay_with_state(tmp_path)
    again.startService()
    (session,) = again.sessions.sessions.values()
    assert session.streams[0].rtp.caller.remote == ("192.0.2.1", 6000)
    assert session.streams[0].party("callee").port == 7000


def test_keep_calls_on_stop_no_ends_them_as_a_relay_shutdown(tmp_path):
    relay, _ = _relay_with_state(tmp_path, keep_calls_on_stop=False)
    relay.startService()
    link, transport = connect_link(relay, ("127.0.0.1", 25060))
    link.dataReceived(UPDATE_C1)
    transport.clear()
    relay.stopService()
    assert json.loads(transport.value().decode().split(" ", 1)[1])["end_reason"] == "relay shutdown"
    again, _ = _relay_with_state(tmp_path)
    again.startService()
    assert again.sessions.sessions == {}


def _relay_with_state(tmp_path, **options):
    reactor = MemoryReactorClock()
    reactor.advance(1_800_000_000)  # wall-clock times, as the real reactor has
    config = RelayConfig(
        dispatchers=endpoint_list(25060)("127.0.0.1"),
        relay_ip="127.0.0.1",
        **{"forwarding": "userspace", "userspace_workers": 0, "stream_timeout": 30, **options},
    )
    relay = RelayService(Configuration(relay=config), Credentials(CERTS, "relay"), reactor, state_dir=str(tmp_path))
    relay.sessions.binder = FakeBinder()
    relay.verifier.accept = lambda transport, name=None: True
    return relay, reactor


def _expired_lines(transport):
    return [json.loads(line[len(b"expired ") :]) for line in transport.value().split(b"\r\n") if line.startswith(b"expired ")]


@pytest.mark.parametrize("ending", ["stop", "crash"])
def test_expiries_held_for_an_absent_dispatcher_outlive_the_relay(tmp_path, ending):
    """Held expiries are the dispatcher's only account of those calls: a relay stopped or killed
    while the dispatcher is away reports them from its next run, once."""
    relay, reactor = _relay_with_state(tmp_path, stream_timeout=5)
    relay.startService()
    link, transport = connect_link(relay, ("127.0.0.1", 25060))
    link.dataReceived(UPDATE_C1 + UPDATE_C1.replace(b"c1", b"c2"))
    lose(link)
    _step(reactor, 6)  # both expire with the dispatcher away
    assert relay.sessions.sessions == {} and relay.held.count(("127.0.0.1", 25060)) == 2
    if ending == "stop":
        relay.stopService()
    # a crash: the process is simply gone; what was journalled is all there is
    again, _ = _relay_with_state(tmp_path)
    again.startService()
    assert again.held.count(("127.0.0.1", 25060)) == 2
    _, transport = connect_link(again, ("127.0.0.1", 25060))
    assert [(record["call_id"], record["end_reason"]) for record in _expired_lines(transport)] == [
        ("c1", "no-traffic timeout"),
        ("c2", "no-traffic timeout"),
    ]
    # sent once: the run after that has nothing to send
    again.stopService()
    third, _ = _relay_with_state(tmp_path)
    third.startService()
    _, transport = connect_link(third, ("127.0.0.1", 25060))
    assert _expired_lines(transport) == [] and third.held.count(("127.0.0.1", 25060)) == 0


def test_a_relay_stopping_without_keeping_calls_reports_them_when_the_dispatcher_is_back(tmp_path):
    relay, reactor = _relay_with_state(tmp_path, keep_calls_on_stop=False)
    relay.startService()
    link, _ = connect_link(relay, ("127.0.0.1", 25060))
    link.dataReceived(UPDATE_C1)
    lose(link)
    relay.stopService()  # the session ends as a relay shutdown, with no dispatcher to tell
    again, _ = _relay_with_state(tmp_path)
    again.startService()
    _, transport = connect_link(again, ("127.0.0.1", 25060))
    ((record,),) = [_expired_lines(transport)]
    assert (record["call_id"], record["end_reason"]) == ("c1", "relay shutdown")


def test_a_kept_session_whose_port_cannot_be_bound_again_leaves_no_socket_open(tmp_path):
    relay, _, _, caller_port, callee_port = _answered_call(tmp_path)
    relay.stopService()
    again, _ = _relay_with_state(tmp_path)
    again.sessions.binder.refuse = {callee_port}  # the caller's pair binds, the callee's does not
    again.startService()
    assert again.sessions.sessions == {}
    assert again.sessions.binder.open == set()  # the caller's sockets, bound first, are closed again
    assert caller_port not in again.sessions.pool.in_use


def test_garbage_in_the_kept_sessions_is_logged_and_skipped(tmp_path):
    relay, _, _, _, _ = _answered_call(tmp_path)
    relay.stopService()
    kept = json.loads((tmp_path / "relay_sessions").read_text())
    good = next(iter(kept["sessions"].values()))
    kept["sessions"]["broken ft"] = {"call_id": ["not", "a", "session"]}  # as version 1 kept them
    kept["sessions"]["short ft"] = ["c9", "ft"]  # positional, as now
    kept["sessions"]["shapes ft"] = [[1]] * 16
    kept["sessions"]["stream shapes ft"] = [*good[:15], [["audio"] * 13]]
    kept["sessions"]["ports taken ft"] = ["ports taken", *good[1:]]
    (tmp_path / "relay_sessions").write_text(json.dumps(kept))
    with open(tmp_path / "relay_sessions.journal", "w") as journal:
        journal.write('{"pop": ["x"]}\n[[[[\n{"set": "half')
    again, _ = _relay_with_state(tmp_path)
    logged = []
    globalLogPublisher.addObserver(logged.append)
    try:
        again.startService()
    finally:
        globalLogPublisher.removeObserver(logged.append)
    # the good session came back; the broken one and the one whose ports it holds are skipped, each with a line
    assert [session.call_id for session in again.sessions.sessions.values()] == ["c1"]
    skipped = [formatEvent(event) for event in logged if "Cannot take back session" in formatEvent(event)]
    assert len(skipped) == 5 and all(
        f"session {name} kept" in line
        for name, line in zip(("broken ft", "short ft", "shapes ft", "stream shapes ft", "ports taken ft"), skipped)
    )
    # a snapshot that is not JSON at all is set aside, and the relay starts without sessions
    again.sessions.suspend()
    (tmp_path / "relay_sessions").write_text("\x80 not json")
    (tmp_path / "relay_sessions.journal").unlink(missing_ok=True)
    third, _ = _relay_with_state(tmp_path)
    third.startService()
    assert third.sessions.sessions == {} and (tmp_path / "relay_sessions.corrupt").exists()


def test_sessions_kept_by_a_relay_before_the_positional_form_are_taken_back(tmp_path):
    """Version 1 kept each session as an object with named fields; an upgraded relay reads them."""
    relay, _, _, caller_port, _ = _answered_call(tmp_path)
    relay.stopService()
    kept = json.loads((tmp_path / "relay_sessions").read_text())
    assert kept["version"] == serialize.VERSION == 2
    kept = {"version": 1, "sessions": {key: serialize.named(value) for key, value in kept["sessions"].items()}}
    (tmp_path / "relay_sessions").write_text(json.dumps(kept))
    again, _ = _relay_with_state(tmp_path)
    again.startService()
    (session,) = again.sessions.sessions.values()
    assert session.call_id == "c1" and session.streams[0].caller_port == caller_port
    assert session.streams[0].party("callee").port == 7000


def _refuse(relay, key):
    factory, connector = _attempt(relay, key)
    factory.clientConnectionFailed(connector, Failure(ConnectionRefusedError()))


def _attempts(reactor, key=("127.0.0.1", 25060)):
    return sum(1 for attempt in reactor.sslClients if attempt[:2] == key)


def _step(reactor, seconds):
    for _ in range(seconds):
        reactor.advance(1)


def test_reconnection_timing_and_stopping_when_retired():
    relay, reactor = make_relay(reconnect_delay=10, keepalive_interval=600)
    key = ("127.0.0.1", 25060)
    relay.startService()
    ready = relay.ready()
    assert _attempts(reactor) == 1 and not ready.called
    # a dispatcher that is not there (yet) is tried after 1, 2, 4, 8 s, then every reconnect_delay
    for attempt, delay in enumerate((1, 2, 4, 8, 10, 10), start=1):
        _refuse(relay, key)
        assert ready.called  # a dispatcher that is down does not hold the relay's start
        _step(reactor, delay - 1)
        assert _attempts(reactor) == attempt
        _step(reactor, 1)
        assert _attempts(reactor) == attempt + 1
    attempts = _attempts(reactor)
    link, _ = connect_link(relay, key)
    _step(reactor, 4)
    lose(link)  # up for less than 5 s: reconnect_delay
    _step(reactor, 9)
    assert _attempts(reactor) == attempts
    _step(reactor, 1)
    assert _attempts(reactor) == attempts + 1
    link, _ = connect_link(relay, key)
    _step(reactor, 5)
    lose(link)  # up for a while: back within a second
    _step(reactor, 1)
    assert _attempts(reactor) == attempts + 2
    _refuse(relay, key)  # then the dispatcher is looked for again from 1 s on
    _step(reactor, 1)
    assert _attempts(reactor) == attempts + 3
    _refuse(relay, key)
    _step(reactor, 1)
    assert _attempts(reactor) == attempts + 3
    _step(reactor, 1)
    assert _attempts(reactor) == attempts + 4
    attempts += 4
    # the dispatcher leaves the configuration: no attempt after that
    relay.config = dataclasses.replace(relay.config, dispatchers=[])
    relay.refresh_dispatchers()
    assert relay.connectors == {}
    _step(reactor, 30)
    assert _attempts(reactor) == attempts
    assert relay.status_line().startswith("connected to 0 of 0 dispatchers")


def test_the_periodic_jobs_are_services_that_stop_with_the_relay():
    relay, reactor = make_relay(traffic_sampling_period=10)
    relay.startService()
    assert sorted(job.name for job in relay) == ["dispatcher lookups", "idle checks", "keeping counters", "traffic sampling"]
    assert all(job.running for job in relay)
    link, _ = connect_link(relay, ("127.0.0.1", 25060))
    done = relay.stopService()
    lose(link)
    assert done.called and not any(job.running for job in relay)
    assert [call for call in reactor.getDelayedCalls() if call.active()] == []  # nothing left to fire


def test_retiring_a_dispatcher_while_connecting_cancels_quietly():
    relay, reactor = make_relay()
    relay.startService()
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        relay.config = dataclasses.replace(relay.config, dispatchers=[])
        relay.refresh_dispatchers()
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert relay.connectors == {}
    assert not [formatEvent(event) for event in events if "Cannot connect" in formatEvent(event)]


def test_the_dispatcher_sets_the_relays_log_level():
    relay, _ = make_relay()
    relay.startService()
    link, transport = connect_link(relay, ("127.0.0.1", 25060))
    link.dataReceived(b"loglevel 20\r\nlevel: debug\r\n\r\nloglevel 21\r\nlevel: chatty\r\n\r\nloglevel 22\r\n\r\n")
    assert transport.value() == b"20 DEBUG\r\n21 error\r\n22 error\r\n"
