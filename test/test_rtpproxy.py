"""The rtpproxy front end: every recorded Kamailio 5.6 rtpproxy-module exchange replayed, byte for
byte, through the dispatcher into a real (in-memory) relay, and each reply checked."""

import ast
import json
import re
import socket
from pathlib import Path

import pytest
from deployment import Deployment, establish, rtp_packet, udp_endpoint, wait_until
from test_dispatcher_core import answer, commands, link_from, make
from test_relay_session import RELAY, Relay
from twisted.internet.testing import StringTransport

from harness import free_port
from mediaproxy import datatypes
from mediaproxy.dialogs import DialogTags
from mediaproxy.dispatcher.rtpproxy import RtpproxyFrontEnd
from mediaproxy.dispatcher.rtpproxy_listen import MAX_IN_FLIGHT, ReplyCache, RtpproxyDatagram, RtpproxyStream, RtpproxyStreamFactory
from mediaproxy.dispatcher.view import DispatcherView
from mediaproxy.relay import reports
from mediaproxy.relay.sessions import UpdateError
from mediaproxy.wire import headers as wire_headers
from mediaproxy.wire import relaylink, rtpproxy, statistics

CAPTURES = Path(__file__).parent / "data" / "rtpproxy"
_LINE = re.compile(r"^\S+ \+\S+ (RECV|SEND) (udp (?:from|to)=(\S+)|unix)(?: bytes=\d+)? (b'.*'|b\".*\")$")
ADDRESS_REPLY = re.compile(rf"^([1-9]\d*) {re.escape(RELAY)}$")


def exchanges(path):
    """(direction, peer, bytes) of the capture's control socket section, in order."""
    found = []
    for line in path.read_text().splitlines():
        match = _LINE.match(line)
        if match:
            direction, _, peer, data = match.groups()
            found.append((direction, peer or "unix", ast.literal_eval(data)))
    return found


def stub_modes(path):
    return set(re.findall(r"stub mode := (\S+)", path.read_text()))


class Stack:
    """A dispatcher with the front end, one relay link, and behind it a real relay in memory."""

    def __init__(self, tmp_path):
        self.clock, self.registry, self.dispatcher = make(tmp_path)
        self.link, self.transport = link_from(self.registry, "192.0.2.1")
        commands(self.transport)
        self.relay = Relay()
        self.front = RtpproxyFrontEnd(self.dispatcher)
        self.relayed = []  # the commands the relay got

    def pump(self):
        while True:
            found = commands(self.transport)
            if not found:
                return
            for name, seq, lines in found:
                self.relayed.append((name, lines))
                if name == "sessions":  # the dispatcher looking for a call it does not know
                    wanted = relaylink.parse_sessions_request(lines)
                    listing = self.relay.manager.registry.listing(wanted.position or 0, wanted.call_id)
                    records = [json.dumps(reports.session_statistics(self.relay.manager, session).as_json()) for session in listing]
                    answer(self.link, seq, statistics.format_page(records, None))
                    continue
                headers = wire_headers.decode(name, lines)
                try:
                    if name == "update":
                        reply = self.relay.manager.update(headers, dispatcher="d1")
                    else:
                        reply = json.dumps(self.relay.manager.remove(headers))
                except UpdateError:
                    reply = "error"
                answer(self.link, seq, reply)

    def execute(self, text):
        replies = []
        self.front.execute(text, "127.0.0.1").addCallback(replies.append)
        self.pump()
        (reply,) = replies
        return reply


class Datagrams:
    def __init__(self):
        self.sent = []

    def write(self, data, address):
        self.sent.append((data, address))


def replay(stack, path):
    """Feed the capture's commands as Kamailio sent them; (command, stub's reply, our reply)."""
    protocol = RtpproxyDatagram(stack.front, stack.clock, stack.front.refusals)
    protocol.transport = Datagrams()
    stub_replies = {}
    pending = []
    for direction, peer, data in exchanges(path):
        if direction == "SEND":
            stub_replies.setdefault((peer, data.split(b" ", 1)[0] if peer != "unix" else len(stub_replies)), data)
            continue
        if peer == "unix":
            connection = RtpproxyStream(RtpproxyStreamFactory(stack.front))
            transport = StringTransport()
            connection.makeConnection(transport)
            connection.dataReceived(data)
            stack.pump()
            pending.append((data, ("unix", len(pending)), transport.value()))
            continue
        host, port = peer.rsplit(":", 1)
        before = len(protocol.transport.sent)
        protocol.datagramReceived(data, (host, int(port)))
        stack.pump()
        ours = [sent for sent, _ in protocol.transport.sent[before:]]
        assert len(ours) == 1, (data, ours)
        pending.append((data, (peer, data.split(b" ", 1)[0]), ours[0]))
    results = []
    unix_index = 0
    for data, key, ours in pending:
        if key[0] == "unix":
            key = ("unix", unix_index)
            unix_index += 1
        results.append((data, stub_replies.get(key), ours))
    return results


def _command(data):
    text = data.decode()
    return text if data.split(b" ", 1)[0] in (b"V", b"VF") or not re.match(r"^\d+_\d+ ", text) else text.split(" ", 1)[1]


@pytest.mark.parametrize("path", sorted(CAPTURES.glob("*.txt")), ids=lambda path: path.stem)
def test_every_recorded_exchange_is_answered_as_the_module_expects(tmp_path, path):
    stack = Stack(tmp_path)
    results = replay(stack, path)
    assert results, "no commands in the capture"
    normal = stub_modes(path) == {"normal"}
    ours_for_stub, stub_for_ours = {}, {}
    media_of = {}  # (call-id, tag;N) → the address and port its offers named
    for data, stub, ours in results:
        command = _command(data)
        cookie = b"" if not re.match(rb"^\d+_\d+ ", data) else data.split(b" ", 1)[0] + b" "
        assert ours.startswith(cookie) and ours.endswith(b"\n"), (data, ours)
        reply = ours[len(cookie) : -1].decode()
        kind = command.split()[0][:2] if command.startswith("VF") else command[0]
        if kind == "V":
            assert reply == "20040107"
        elif kind == "VF":
            assert reply == "1", command  # the three dates Kamailio asks about are all offered
        elif kind in ("U", "L"):
            assert ADDRESS_REPLY.match(reply), (command, reply)
            # the same relay port where the stub (which numbers ports as rtpproxy does) gave the
            # same one for the same media address, a different one where it gave a different one;
            # a rejected stream's port is any port (the module keeps m= port 0). A party that
            # moves its media port gets a new stream, as with the mediaproxy module, where
            # rtpproxy keeps the port: the module writes either into the SDP.
            words = command.split()
            if words[0].startswith("U") and media_of.setdefault((words[1], words[4]), words[2:4]) != words[2:4]:
                normal = False  # from here on the relay's streams differ from rtpproxy's by design
            if normal and stub is not None and " 0 " not in command:
                expected = stub.split(b" ", 1)[1] if cookie else stub
                media = tuple(command.split()[2:4])
                assert ours_for_stub.setdefault((expected, media), reply) == reply, (command, reply)
                assert stub_for_ours.setdefault(reply, expected) == expected, (command, reply)
                assert all(theirs == expected or ours != reply for (theirs, _), ours in ours_for_stub.items())
        else:
            assert kind == "D"
            # a second D (the module unforces on the CANCEL and again on the 487) finds no call
            assert reply in ("0", "E8"), (command, reply)
    deletes = [data for data, _, _ in results if _command(data).startswith("D")]
    if deletes:
        assert results[[data for data, _, _ in results].index(deletes[0])][2].endswith(b" 0\n") or path.stem.endswith("unix-socket")
        call_id = _command(deletes[0]).split()[1]
        assert not [key for key in stack.relay.manager.sessions if key[0] == call_id]  # the first D ended the session
        assert stack.dispatcher.table.get(call_id) is None
        assert len(stack.dispatcher.recorder.records) == 1  # and it was accounted


def test_a_retransmission_gets_the_same_reply_without_the_work_twice(tmp_path):
    stack = Stack(tmp_path)
    protocol = RtpproxyDatagram(stack.front, stack.clock, stack.front.refusals)
    protocol.transport = Datagrams()
    offer = b"2415_4 Uc0,8,101 1-2423@127.0.0.1 127.0.0.1 6000 2423SIPpTag001;1"
    for _ in range(5):
        protocol.datagramReceived(offer, ("127.0.0.1", 58875))
    stack.pump()
    # the relay was asked once; the four copies that came while it was asked wait for its reply
    assert [name for name, _ in stack.relayed] == ["update"]
    assert len(protocol.transport.sent) == 1
    protocol.datagramReceived(offer, ("127.0.0.1", 58875))  # after the reply: from the cache
    assert protocol.transport.sent[1] == protocol.transport.sent[0] and len(stack.relayed) == 1
    protocol.datagramReceived(offer, ("127.0.0.1", 40000))  # another process's cookie is another command
    stack.pump()
    assert len(stack.relayed) == 2


def test_a_call_with_audio_and_video_keeps_its_ports_across_a_reoffer_and_ends_accounted(tmp_path):
    stack = Stack(tmp_path)
    first = [
        stack.execute("Uc0,8 c1 192.0.2.10 6000 a;1"),
        stack.execute("Uc96 c1 192.0.2.10 6002 a;2"),
        stack.execute("Lc0 c1 198.51.100.20 7000 a;1 b;1"),
        stack.execute("Lc96 c1 198.51.100.20 7002 a;2 b;2"),
    ]
    assert len(set(first)) == 4
    (session,) = stack.relay.manager.sessions.values()
    assert [stream.status for stream in session.streams] == ["active", "active"]
    # the callee's re-INVITE (its tag first) and the caller's answer: the same ports as before
    again = [
        stack.execute("Uc0 c1 198.51.100.20 7000 b;1 a;1"),
        stack.execute("Uc96 c1 198.51.100.20 7002 b;2 a;2"),
        stack.execute("Lc0 c1 192.0.2.10 6000 b;1 a;1"),
        stack.execute("Lc96 c1 192.0.2.10 6002 b;2 a;2"),
    ]
    assert again == [first[2], first[3], first[0], first[1]]
    assert len(session.streams) == 2 and all(stream.status == "active" for stream in session.streams)
    assert stack.execute("D c1 b a") == "0"
    (record,) = stack.dispatcher.recorder.records
    assert record["call_id"] == "c1" and len(record["streams"]) == 2


def test_an_answer_rejecting_a_stream_closes_it_only(tmp_path):
    stack = Stack(tmp_path)
    stack.execute("Uc0 c2 192.0.2.10 6000 a;1")
    stack.execute("Uc96 c2 192.0.2.10 6002 a;2")
    assert ADDRESS_REPLY.match(stack.execute("Lc0 c2 198.51.100.20 7000 a;1 b;1"))
    assert ADDRESS_REPLY.match(stack.execute("Lc96 c2 198.51.100.20 0 a;2 b;2"))  # the module wants a port even so
    (session,) = stack.relay.manager.sessions.values()
    assert [stream.status for stream in session.streams] == ["active", "rejected"]


def test_the_call_state_survives_a_dispatcher_restart(tmp_path):
    stack = Stack(tmp_path)
    offer = stack.execute("Uc0 c3 192.0.2.10 6000 a;1")
    stack.dispatcher.stop()
    _, registry, restarted = make(tmp_path)
    stack.dispatcher, stack.registry = restarted, registry
    stack.link, stack.transport = link_from(registry, "192.0.2.1")
    commands(stack.transport)
    stack.front = RtpproxyFrontEnd(restarted)
    answer_reply = stack.execute("Lc0 c3 198.51.100.20 7000 a;1 b;1")
    assert ADDRESS_REPLY.match(answer_reply) and answer_reply != offer
    assert stack.execute("Uc0 c3 192.0.2.10 6000 a;1 b;1") == offer  # a re-offer after the restart: same port


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("", rtpproxy.SYNTAX),
        ("X c1 a", rtpproxy.SYNTAX),
        ("V extra", rtpproxy.SYNTAX),
        ("VF", rtpproxy.SYNTAX),
        ("U c1 192.0.2.10 6000", rtpproxy.SYNTAX),
        ("U c1 192.0.2.10 70000 a;1", rtpproxy.SYNTAX),
        ("U c1 not-an-ip 6000 a;1", rtpproxy.SYNTAX),
        ("U c1 2001:db8::1 6000 a;1", rtpproxy.SYNTAX),
        ("UQ c1 192.0.2.10 6000 a;1", rtpproxy.SYNTAX),
        ("UAS c1 192.0.2.10 6000 a;1", rtpproxy.SYNTAX),
        ("Uc c1 192.0.2.10 6000 a;1", rtpproxy.SYNTAX),
        ("Uc0,999 c1 192.0.2.10 6000 a;1", rtpproxy.SYNTAX),
        ("U c1 192.0.2.10 6000 a;0", rtpproxy.SYNTAX),
        ("U c1 192.0.2.10 6000 a;99", rtpproxy.SYNTAX),
        ("U " + "x" * 300 + " 192.0.2.10 6000 a;1", rtpproxy.SYNTAX),
        ("U c1 192.0.2.10 6000 a;2", rtpproxy.NO_SESSION),
        ("L c1 192.0.2.10 6000 a;1 b;1", rtpproxy.NO_SESSION),
        ("D c1", rtpproxy.SYNTAX),
        ("Dx c1 a", rtpproxy.SYNTAX),
        ("Q c1 a b", rtpproxy.NO_SESSION),
        ("P1 c1 prompt session a;1 b;1", rtpproxy.SYNTAX),
        ("U6c0 c1 2001:db8::1 6000 a;1", rtpproxy.SOFTWARE),
        ("L6c0 c1 2001:db8::2 7000 a;1 b;1", rtpproxy.SOFTWARE),
    ],
)
def test_garbage_gets_the_protocols_error_and_the_dispatcher_keeps_serving(tmp_path, text, code):
    stack = Stack(tmp_path)
    assert stack.execute(text) == f"E{code}"
    assert ADDRESS_REPLY.match(stack.execute("Uc0 ok 192.0.2.10 6000 a;1"))


def test_datagrams_that_are_not_commands_are_dropped_or_refused_and_bounded(tmp_path):
    stack = Stack(tmp_path)
    protocol = RtpproxyDatagram(stack.front, stack.clock, stack.front.refusals, datatypes.ip_network_list("192.0.2.0/24"))
    protocol.transport = Datagrams()
    for garbage in (b"", b" V", b"\xff\xfe V", b"1_1 " + b"U" * 5000):
        protocol.datagramReceived(garbage, ("192.0.2.66", 1))
    assert protocol.transport.sent == []  # nothing to answer to: no cookie (or not a command at all)
    protocol.datagramReceived(b"1_2 \xff", ("192.0.2.66", 1))
    assert protocol.transport.sent == []
    protocol.datagramReceived(b"1_3 bogus", ("192.0.2.66", 1))
    assert protocol.transport.sent[-1][0] == b"1_3 E1\n"
    # commands left unanswered by the relay pile up only to a bound; past it: E7 at once
    protocol.cache.pending = MAX_IN_FLIGHT
    protocol.datagramReceived(b"1_4 Uc0 c9 192.0.2.10 6000 a;1", ("192.0.2.66", 1))
    assert protocol.transport.sent[-1][0] == b"1_4 E7\n"


def test_the_reply_cache_is_bounded_in_entries_and_time(tmp_path):
    stack = Stack(tmp_path)
    cache = ReplyCache(stack.clock, window=30, limit=3)
    for number in range(5):
        cache.start((("h", 1), str(number)))
        cache.done((("h", 1), str(number)), b"x")
    assert len(cache._replies) == 3 and cache.get((("h", 1), "0")) is None
    stack.clock.advance(31)
    assert cache.get((("h", 1), "4")) is None


def test_a_unix_socket_connection_answers_one_command_and_closes(tmp_path):
    stack = Stack(tmp_path)
    connection = RtpproxyStream(RtpproxyStreamFactory(stack.front))
    transport = StringTransport()
    connection.makeConnection(transport)
    connection.dataReceived(b"V")
    connection.dataReceived(b"V")  # a second command on the same connection is not read
    assert transport.value() == b"20040107\n" and transport.disconnecting


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("udp:127.0.0.1:7722", "udp:127.0.0.1:7722"),
        ("udp:127.0.0.1", "udp:127.0.0.1:7722"),
        ("udp6:[::1]:7723", "udp6:[::1]:7723"),
        ("unix:/run/mediaproxy/rtpproxy.sock", "unix:/run/mediaproxy/rtpproxy.sock"),
        ("", None),
        ("no", None),
    ],
)
def test_rtpproxy_listen_takes_the_modules_socket_forms(text, expected):
    parsed = datatypes.optional_rtpproxy_socket(text)
    assert (str(parsed) if parsed else None) == expected


@pytest.mark.parametrize("text", ["tcp:127.0.0.1:7722", "udp:localhost:7722", "udp:127.0.0.1:99999", "udp6:127.0.0.1", "unix:", "7722"])
def test_rtpproxy_listen_refuses_what_it_cannot_listen_on(text):
    with pytest.raises(ValueError):
        datatypes.optional_rtpproxy_socket(text)


def _udp_command(port, text, cookie="9_1"):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(5)
        client.sendto(f"{cookie} {text}".encode(), ("127.0.0.1", port))
        data, _ = client.recvfrom(4096)
    assert data.startswith(cookie.encode() + b" ") and data.endswith(b"\n")
    return data[len(cookie) + 1 : -1].decode()


def _unix_command(path, text):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(5)
        client.connect(path)
        client.sendall(text.encode())
        return client.recv(4096).decode()


def test_real_programs_relay_a_call_set_up_over_udp_and_unix_and_account_it(tmp_path):
    port = free_port(socket.SOCK_DGRAM)
    extra = f"[Dispatcher]\nrtpproxy_listen = udp:127.0.0.1:{port}\naccounting = database\n[Database]\ndburi = sqlite://{tmp_path}/accounting.sqlite\n"
    programs = Deployment(tmp_path, extra=extra)
    try:
        programs.start()
        programs.dispatcher.wait_for_log(f"Listening for the rtpproxy module on udp:127.0.0.1:{port}")
        assert _udp_command(port, "V") == "20040107"
        assert _udp_command(port, "VF 20050322") == "1"
        caller, callee = udp_endpoint(), udp_endpoint()
        offer = _udp_command(port, f"Uc0,8 rp-1 127.0.0.1 {caller.getsockname()[1]} from-tag;1", cookie="11_4")
        callee_facing, relay_ip = offer.split()
        answer_reply = _udp_command(port, f"Lc0 rp-1 127.0.0.1 {callee.getsockname()[1]} from-tag;1 to-tag;1", cookie="12_4")
        caller_facing = answer_reply.split()[0]
        assert relay_ip == "127.0.0.1" and caller_facing != callee_facing
        establish(caller, callee, int(caller_facing), int(callee_facing))
        for sequence in range(20):
            caller.sendto(rtp_packet(sequence, 0), ("127.0.0.1", int(caller_facing)))
            data, _ = callee.recvfrom(2048)
            assert data == rtp_packet(sequence, 0)
            callee.sendto(rtp_packet(sequence, 8), ("127.0.0.1", int(callee_facing)))
            data, _ = caller.recvfrom(2048)
            assert data == rtp_packet(sequence, 8)
        (listed,) = json.loads(programs.management(b"sessions"))
        assert listed["call_id"] == "rp-1"  # visible like any other call
        assert _udp_command(port, "D rp-1 from-tag to-tag", cookie="11_5") == "0"
        programs.dispatcher.wait_for_log("Call rp-1 ended (bye)")
        wait_until(lambda: "rp-1" in _accounted(tmp_path / "accounting.sqlite"), "the call's accounting record")
    finally:
        programs.kill()


def test_a_dispatcher_killed_mid_call_answers_the_modules_next_commands_as_before(tmp_path):
    """kill -9 between offer and answer: the call's rtpproxy state comes back from the journal,
    so the answer, a re-offer and the delete are done as if nothing happened, and accounted."""
    port = free_port(socket.SOCK_DGRAM)
    extra = f"[Dispatcher]\nrtpproxy_listen = udp:127.0.0.1:{port}\naccounting = database\n[Database]\ndburi = sqlite://{tmp_path}/accounting.sqlite\n"
    programs = Deployment(tmp_path, extra=extra, stream_timeout=30)
    try:
        programs.start()
        programs.dispatcher.wait_for_log("Listening for the rtpproxy module")
        offer = _udp_command(port, "Uc0 rp-3 127.0.0.1 6000 from-tag;1", cookie="21_1")
        programs.dispatcher.process.kill()
        programs.dispatcher.process.wait()
        programs.start_dispatcher()
        programs.dispatcher.wait_for_log("Relay 127.0.0.1 connected")
        programs.dispatcher.wait_for_log("Listening for the rtpproxy module")
        answer_reply = _udp_command(port, "Lc0 rp-3 127.0.0.1 7000 from-tag;1 to-tag;1", cookie="21_2")
        assert re.match(r"^\d+ 127\.0\.0\.1$", answer_reply) and answer_reply != offer
        assert _udp_command(port, "Uc0 rp-3 127.0.0.1 6000 from-tag;1 to-tag;1", cookie="21_3") == offer  # same port
        (listed,) = json.loads(programs.management(b"sessions"))
        assert listed["call_id"] == "rp-3" and listed["start_time"] is not None
        assert _udp_command(port, "D rp-3 from-tag to-tag", cookie="21_4") == "0"
        wait_until(lambda: "rp-3" in _accounted(tmp_path / "accounting.sqlite"), "the call's accounting record")
    finally:
        programs.kill()


def _accounted(path):
    import sqlite3

    try:
        with sqlite3.connect(path) as connection:
            return [row[0] for row in connection.execute("SELECT call_id FROM media_sessions")]
    except sqlite3.Error:
        return []


def test_real_dispatcher_answers_the_module_on_a_unix_socket(tmp_path):
    programs = Deployment(tmp_path, extra="[Dispatcher]\nrtpproxy_listen = unix:rtpproxy.sock\n")
    try:
        programs.start()
        path = str(programs.runtime / "rtpproxy.sock")
        programs.dispatcher.wait_for_log(f"Listening for the rtpproxy module on unix:{path}")
        assert _unix_command(path, "V") == "20040107\n"
        reply = _unix_command(path, "Uc0 rp-2 127.0.0.1 6000 a;1")
        assert re.match(r"^\d+ 127\.0\.0\.1\n$", reply)
        assert _unix_command(path, "D rp-2 a") == "0\n"
        assert _unix_command(path, "bogus") == "E1\n"
    finally:
        programs.kill()


def test_a_calls_commands_are_done_one_after_another(tmp_path):
    stack = Stack(tmp_path)
    replies = []
    stack.front.execute("Uc0 c4 192.0.2.10 6000 a;1").addCallback(replies.append)
    stack.front.execute("Uc96 c4 192.0.2.10 6002 a;2").addCallback(replies.append)
    stack.front.execute("Uc0 other 192.0.2.10 6000 x;1").addCallback(replies.append)  # another call goes on meanwhile
    first = commands(stack.transport)
    assert [lines[1] for _, _, lines in first] == ["call_id: c4", "call_id: other"]
    for name, seq, lines in first:
        answer(stack.link, seq, stack.relay.manager.update(wire_headers.decode(name, lines), dispatcher="d1"))
    stack.pump()  # only now the second stream of c4, with what the first one kept
    assert len(replies) == 3 and all(ADDRESS_REPLY.match(reply) for reply in replies)
    session = stack.relay.manager.sessions[("c4", "a")]
    assert [stream.media_type for stream in session.streams] == ["audio", "audio"]


def _expire(stack, call_id):
    """The relay reports the call's media as gone quiet."""
    (session,) = [session for key, session in stack.relay.manager.sessions.items() if key[0] == call_id]
    record = reports.session_statistics(stack.relay.manager, session).as_json()
    for stream in record["streams"]:
        stream["status"] = "no-traffic timeout"
    stack.link.lineReceived(b"expired " + json.dumps(record).encode())


def test_an_answered_call_whose_media_stops_is_ended_through_the_proxy_by_its_tags(tmp_path):
    stack = Stack(tmp_path)
    stack.execute("Uc0 c5 192.0.2.10 6000 a;1")
    stack.execute("Lc0 c5 198.51.100.20 7000 a;1 b;1")
    _expire(stack, "c5")
    assert stack.dispatcher.recorder.ended == [("c5", DialogTags("a", "b"))]
    (record,) = stack.dispatcher.recorder.records
    assert record["timed_out"] is True
    # the proxy's BYEs make the module send D: answered at once, accounted no second time
    assert stack.execute("D c5 a b") == "0"
    assert len(stack.dispatcher.recorder.records) == 1 and stack.dispatcher.table.get("c5") is None


def test_an_unanswered_call_whose_media_stops_has_no_dialog_to_end(tmp_path):
    stack = Stack(tmp_path)
    stack.execute("Uc0 c6 192.0.2.10 6000 a;1")
    _expire(stack, "c6")
    assert stack.dispatcher.recorder.ended == []
    assert stack.dispatcher.table.get("c6") is None  # and, never answered, it is not accounted (as for the mediaproxy module)


def test_the_operators_terminate_ends_an_rtpproxy_call_through_the_proxy(tmp_path):
    stack = Stack(tmp_path)
    stack.execute("Uc0 c7 192.0.2.10 6000 a;1")
    stack.execute("Lc0 c7 198.51.100.20 7000 a;1 b;1")
    done = []
    DispatcherView(stack.dispatcher).terminate("c7").addCallback(done.append)
    assert done == [{"done": "dialog ended through the proxy", "proxy": "OK"}]
    assert stack.dispatcher.recorder.ended == [("c7", DialogTags("a", "b"))]


def test_a_repeated_delete_is_answered_without_asking_the_relays_and_forgotten_in_time(tmp_path):
    """The module unforces on the CANCEL and again in the failure route: the second D finds the
    call gone without a search of every relay (and its warning)."""
    stack = Stack(tmp_path)
    stack.execute("Uc0 c8 192.0.2.10 6000 a;1")
    assert stack.execute("D c8 a") == "0"
    asked = len(stack.relayed)
    assert stack.execute("D c8 a") == "E8"
    assert len(stack.relayed) == asked
    stack.clock.advance(31)
    assert stack.execute("D c8 a") == "E8"
    assert [name for name, _ in stack.relayed[asked:]] == ["remove"]  # forgotten: the relays are asked again


def test_the_asymmetric_modifier_makes_the_relay_send_to_that_partys_signalled_address(tmp_path):
    stack = Stack(tmp_path)
    stack.execute("UAc0 c9 192.0.2.10 6000 a;1")
    stack.execute("Lc0 c9 198.51.100.20 7000 a;1 b;1")
    (session,) = stack.relay.manager.sessions.values()
    (stream,) = session.streams
    assert stream.rtp.caller.asymmetric and not stream.rtp.callee.asymmetric
    assert stream.rtp.destination(stream.rtp.caller) == ("192.0.2.10", 6000)
    stack.execute("Uc0 c9 192.0.2.10 6000 a;1 b;1")  # a re-offer without A: latched again
    assert not stream.rtp.caller.asymmetric


def test_a_query_answers_the_relays_packet_counts_of_the_stream(tmp_path):
    stack = Stack(tmp_path)
    facing_callee = int(stack.execute("Uc0 c10 192.0.2.10 6000 a;1").split()[0])
    facing_caller = int(stack.execute("Lc0 c10 198.51.100.20 7000 a;1 b;1").split()[0])
    packet = b"\x80\x00" + b"\x00" * 170
    stack.relay.socket(facing_callee).deliver(packet, ("198.51.100.20", 7000))  # the caller is not known yet: dropped
    for _ in range(3):
        stack.relay.socket(facing_caller).deliver(packet, ("192.0.2.10", 6000))
    stack.relay.socket(facing_callee).deliver(packet, ("198.51.100.20", 7000))
    assert stack.execute("Q c10 a;1 b;1") == "60 3 1 4 0"
    assert stack.execute("Q c10 b;1 a;1") == "60 1 3 4 0"  # counted from the first tag's party
    assert stack.execute("Q c10 a;2 b;2") == "E8"  # no second stream
    stack.execute("D c10 a b")
    assert stack.execute("Q c10 a;1 b;1") == "E8"


def test_datagrams_from_outside_rtpproxy_allow_are_dropped_unanswered(tmp_path):
    stack = Stack(tmp_path)
    allowed = datatypes.ip_network_list("192.0.2.5, 10.1.0.0/16, 2001:db8::/32")
    protocol = RtpproxyDatagram(stack.front, stack.clock, stack.front.refusals, allowed)
    protocol.transport = Datagrams()
    for peer in ("192.0.2.6", "127.0.0.1", "10.2.0.1", "2001:db9::1", "::ffff:10.2.0.1", "not-an-address"):
        protocol.datagramReceived(b"1_1 V", (peer, 5060))
    assert protocol.transport.sent == [] and stack.relayed == []
    for peer in ("192.0.2.5", "10.1.200.3", "2001:db8::7", "::ffff:10.1.0.9"):
        protocol.datagramReceived(b"1_2 V", (peer, 5060))
    assert [data for data, _ in protocol.transport.sent] == [b"1_2 20040107\n"] * 4


def test_rtpproxy_allow_defaults_to_loopback_and_refuses_what_is_not_a_network():
    assert datatypes.address_in("127.0.0.1", RtpproxyDatagram(None, None, None).allowed)
    assert datatypes.address_in("::1", RtpproxyDatagram(None, None, None).allowed)
    assert not datatypes.address_in("192.0.2.1", RtpproxyDatagram(None, None, None).allowed)
    with pytest.raises(ValueError, match="is not an IP network"):
        datatypes.ip_network_list("10.0.0.0/8, proxy.example.com")


def test_an_ended_dialogs_call_is_forgotten_at_the_next_check_without_a_d(tmp_path):
    """The dialog module's BYEs do not run the script, so no D may ever come: the entry goes at
    the next check after a minute, silently, where a mediaproxy-module call waits for its remove."""
    stack = Stack(tmp_path)
    stack.execute("Uc0 c11 192.0.2.10 6000 a;1")
    stack.execute("Lc0 c11 198.51.100.20 7000 a;1 b;1")
    _expire(stack, "c11")
    assert stack.dispatcher.table.get("c11").expire_time is not None
    stack.dispatcher.endings.cleanup_expired()
    assert "c11" in stack.dispatcher.table  # a D may still come
    stack.clock.advance(61)
    stack.dispatcher.endings.cleanup_expired()
    assert "c11" not in stack.dispatcher.table and len(stack.dispatcher.recorder.records) == 1
