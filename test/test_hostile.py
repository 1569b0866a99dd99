"""Hostile peers against the real programs: floods, unread output, injected commands, sprayed
ports and TLS peers in the wrong role. Each test states the bound the issue asks for."""

from __future__ import annotations

import json
import os
import resource
import select
import socket
import sqlite3
import ssl
import struct
import time
from functools import partial

import pytest
from deployment import Deployment, call, management, rss, rtp_packet, udp_endpoint, wait_until

from mediaproxy.testing import remove, update

MIB = 1024 * 1024


def stun(size: int) -> bytes:
    return struct.pack("!HHI", 0x0001, size - 20, 0x2112A442) + os.urandom(12) + b"\x00" * (size - 20)


def counters(programs: Deployment) -> dict:
    return json.loads(programs.management(b"counters"))


def test_stun_flood_to_an_unlearnt_peer_keeps_the_relay_small(tmp_path):
    programs = Deployment(tmp_path).start()
    try:
        proxy = programs.proxy()
        caller, callee = udp_endpoint(), udp_endpoint()
        caller_facing, _ = call(proxy, "stun-flood", caller, callee)
        before = rss(programs.relay)
        packet = stun(8192)
        caller.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * MIB)
        for _ in range(60_000):
            caller.sendto(packet, ("127.0.0.1", caller_facing))
        # the relay counts every packet past the queue's bound; once the count stops moving it has read them all
        wait_until(lambda: counters(programs)["relays"]["127.0.0.1"].get("stun_queue_full", 0) > 1000, "STUN drops counted")
        seen = -1
        while seen != (seen := counters(programs)["relays"]["127.0.0.1"]["stun_queue_full"]):
            time.sleep(0.5)
        grown = rss(programs.relay) - before
        assert grown < 20 * MIB, f"relay grew {grown / MIB:.1f} MiB"
        assert "dropped: the queue waiting for the other party is full" in programs.relay.output()
        assert programs.relay.output().count("STUN from 127.0.0.1") == 1  # once per peer per minute
    finally:
        programs.kill()


def _raise_own_file_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))


def _open_idle(port: int, count: int) -> list[socket.socket]:
    sockets = []
    for _ in range(count):
        connection = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        connection.setblocking(False)
        connection.connect_ex(("127.0.0.1", port))
        sockets.append(connection)
    return sockets


def test_idle_connection_floods_leave_the_proxy_and_accounting_working(tmp_path):
    _raise_own_file_limit(8192)
    database = tmp_path / "accounting.sqlite"
    programs = Deployment(tmp_path, f"[Dispatcher]\naccounting = database\n[Database]\ndburi = sqlite://{database}\n", files=1024)
    programs.start()
    idle: list[socket.socket] = []
    try:
        proxy = programs.proxy()
        assert proxy.request(update("before", "ft", media="audio:127.0.0.1:9:sendrecv")) != "error"
        for port in (programs.relay_port, programs.management_port):
            idle += _open_idle(port, 2000)
        programs.dispatcher.wait_for_log("connections from this address already")
        started = time.monotonic()
        reply = proxy.request(update("during", "ft", media="audio:127.0.0.1:9:sendrecv"))
        assert time.monotonic() - started < 0.1 and reply.split()[0] == "127.0.0.1"
        # a call that ends meanwhile is accounted
        assert proxy.request(update("before", "ft", "tt", kind="reply", media="audio:127.0.0.1:11:sendrecv")) != "error"
        assert proxy.request(remove("before", "ft", "tt")) == "removed"
        wait_until(lambda: _call_ids(database) == ["before"], "the accounting record of the call that ended", timeout=10)
        # the operator on the same address as the flood gets in once the flood is gone
        for connection in idle:
            connection.close()
        wait_until(lambda: _management_answers(programs), "the management interface to take connections again", timeout=15)
        refused = counters(programs)["dispatcher"]
        # how many of the 4,000 got past the kernel's accept backlog before they closed depends on timing; that
        # the dispatcher refused and counted them, rather than holding them, does not
        assert refused["address_full"] > 0
        assert "Cannot save" not in programs.dispatcher.output() and "Too many open files" not in programs.dispatcher.output()
    finally:
        for connection in idle:
            connection.close()
        programs.kill()


@pytest.mark.parametrize("listener", ["relay", "management"])
def test_refused_tls_connections_are_closed_and_leave_the_proxy_socket_working(tmp_path, listener):
    # the dispatcher at 1,024 descriptors; 1,500 connections from one address to a TLS listener,
    # none of them handshaking: each past max_connections_per_ip is closed at once
    _raise_own_file_limit(8192)
    database = tmp_path / "accounting.sqlite"
    extra = f"[Dispatcher]\naccounting = database\nmanagement_use_tls = yes\n[Database]\ndburi = sqlite://{database}\n"
    programs = Deployment(tmp_path, extra, stream_timeout=60, files=1024).start()
    idle: list[socket.socket] = []
    try:
        proxy = programs.proxy()
        assert proxy.request(update("before", "ft", media="audio:127.0.0.1:9:sendrecv")) != "error"
        port = programs.relay_port if listener == "relay" else programs.management_port
        # in bursts the listen backlog holds (beyond it the kernel drops SYNs and the client sends
        # them again seconds later): every connection past the 50 admitted is closed by the dispatcher
        while len(idle) < 1500:
            idle += _open_idle(port, 25)
            wait_until(partial(_all_refused_closed, list(idle), 50), f"{len(idle) - 50} refused connections closed", timeout=10)
            assert _descriptors(programs) < 1024 - 128
        started = time.monotonic()
        fresh = programs.proxy()
        reply = fresh.request(update("during", "ft", media="audio:127.0.0.1:9:sendrecv"))
        assert time.monotonic() - started < 0.1 and reply.split()[0] == "127.0.0.1", reply
        assert proxy.request(update("before", "ft", "tt", kind="reply", media="audio:127.0.0.1:11:sendrecv")) != "error"
        assert proxy.request(remove("before", "ft", "tt")) == "removed"
        wait_until(lambda: _call_ids(database) == ["before"], "the accounting record of the call that ended", timeout=10)
        output = programs.dispatcher.output()
        assert "Unhandled Error" not in output and "Traceback" not in output, output[-3000:]
        # one line for the address (rate-limited), however many were refused
        assert output.count("connections from this address already") == 1
    finally:
        for connection in idle:
            connection.close()
        programs.kill()


def _all_refused_closed(sockets: list[socket.socket], admitted: int) -> bool:
    return _closed_by_peer(sockets) >= len(sockets) - admitted


def _closed_by_peer(sockets: list[socket.socket]) -> int:
    poller = select.poll()
    for connection in sockets:
        poller.register(connection, select.POLLIN | select.POLLHUP | select.POLLERR)
    return len(poller.poll(0))


def _descriptors(programs: Deployment) -> int:
    return len(os.listdir(f"/proc/{programs.dispatcher.process.pid}/fd"))


def _management_answers(programs: Deployment) -> bool:
    try:
        return programs.management(b"version") != ""
    except OSError:
        return False


def _call_ids(database) -> list[str]:
    try:
        return [call_id for (call_id,) in sqlite3.connect(database).execute("SELECT call_id FROM media_sessions")]
    except sqlite3.OperationalError:
        return []


def test_unread_management_output_is_not_buffered_without_bound(tmp_path):
    programs = Deployment(tmp_path, stream_timeout=60).start()
    client = None
    try:
        proxy = programs.proxy()
        for number in range(100):
            assert proxy.request(update(f"call-{number}", "ft", media="audio:127.0.0.1:9:sendrecv")) != "error"
            assert proxy.request(update(f"call-{number}", "ft", "tt", kind="reply", media="audio:127.0.0.1:11:sendrecv")) != "error"
        size = len(management(programs.management_port, b"sessions"))
        assert size > 20_000  # 2,000 answers would be > 40 MB if they were all kept
        before = rss(programs.dispatcher)
        client = socket.create_connection(("127.0.0.1", programs.management_port))
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.setblocking(False)
        commands = b"sessions\r\n" * 2000
        sent = 0
        deadline = time.monotonic() + 10
        while sent < len(commands) and time.monotonic() < deadline:
            try:
                sent += client.send(commands[sent:])
            except BlockingIOError:
                time.sleep(0.01)  # the dispatcher stopped reading us: what we wanted to see
        peak = before
        for _ in range(30):  # watch it for 3 s: it must stay flat, not grow towards 40 MB
            peak = max(peak, rss(programs.dispatcher))
            time.sleep(0.1)
        assert peak - before < 30 * MIB, f"dispatcher grew {(peak - before) / MIB:.1f} MiB"
        # everyone else is still served
        summary = json.loads(management(programs.management_port, b"summary"))
        assert summary[0]["session_count"] == 100, summary
    finally:
        if client is not None:
            client.close()
        programs.kill()


def test_command_injection_is_refused_and_the_relay_link_stays_healthy(tmp_path):
    programs = Deployment(tmp_path).start()
    try:
        proxy = programs.proxy()
        assert proxy.request(update("known", "ft", media="audio:127.0.0.1:9:sendrecv")) != "error"
        injected = update("known", "ft", media="audio:127.0.0.1:9:sendrecv").replace(b"update\r\n", b"update x\r\n", 1)
        assert proxy.request(injected) == "error"
        twice = b"remove\r\ncall_id: attacker\r\ncall_id: known\r\nfrom_tag: ft\r\n\r\n"
        assert proxy.request(twice) == "error"
        started = time.monotonic()
        reply = proxy.request(update("next", "ft", media="audio:127.0.0.1:9:sendrecv"))
        assert time.monotonic() - started < 0.1 and reply.split()[0] == "127.0.0.1"
        assert len(json.loads(programs.management(b"sessions"))) == 2  # the victim's session is still there
        log = programs.dispatcher.output()
        assert "command 'update x' is neither update nor remove" in log and "header 'call_id' appears twice" in log
    finally:
        programs.kill()


@pytest.mark.parametrize("workers", [0, 2])
def test_a_third_party_spraying_every_port_hijacks_no_call(tmp_path, workers):
    """A blind attacker sprays every port of the range before the parties speak: it hijacks no
    call and receives no media at all (RTP Bleed), as a stranger's latch is provisional. Also
    with userspace workers, which get a substream only once both sides are trusted."""
    programs = Deployment(tmp_path, f"[Relay]\nuserspace_workers = {workers}\n", stream_timeout=30).start()
    try:
        proxy = programs.proxy()
        calls = []
        for number in range(40):
            caller, callee = udp_endpoint(), udp_endpoint()
            calls.append((caller, callee, *call(proxy, f"spray-{number}", caller, callee)))
        attacker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        attacker.bind(("127.0.0.2", 0))
        attacker.setblocking(False)
        for port in range(43000, 43998):
            attacker.sendto(rtp_packet(0, 18), ("127.0.0.1", port))
        # every relay port has seen the attacker first; wait until the relay has read them all
        wait_until(lambda: _latched_to_attacker(programs) >= 80, "the attacker's packets to reach the relay", timeout=10)
        assert _ports_in_order(programs) < 10  # random ports: the next call's cannot be told from this one's
        hijacked = 0
        for caller, callee, caller_facing, callee_facing in calls:
            callee.sendto(rtp_packet(0, 8), ("127.0.0.1", callee_facing))
            caller.sendto(rtp_packet(0, 0), ("127.0.0.1", caller_facing))
            callee.settimeout(1)
            received = []
            for sequence in range(1, 6):
                caller.sendto(rtp_packet(sequence, 0), ("127.0.0.1", caller_facing))
            try:
                while len(received) < 5:
                    data, _ = callee.recvfrom(2048)
                    if data[2:4] != b"\x00\x00":
                        received.append(data)
            except TimeoutError:
                pass
            hijacked += len(received) < 5
            # and the caller hears the callee
            callee.sendto(rtp_packet(1, 8), ("127.0.0.1", callee_facing))
            caller.settimeout(1)
            while caller.recvfrom(2048)[0][:4] != rtp_packet(1, 8)[:4]:
                pass
        assert hijacked == 0
        leaked = 0
        try:
            while True:
                data, _ = attacker.recvfrom(2048)
                leaked += data[1] in (0, 8)  # the parties' payload types (the attacker sends 18)
        except BlockingIOError:
            pass
        assert leaked == 0  # not one media packet went to the attacker
        # each party's packets came from its SDP address: the RTP latches are final and the sockets
        # connected, so sprayed packets are dropped by the kernel before the relay reads them
        refused = counters(programs)["relays"]["127.0.0.1"].get("latch_refused", 0)
        unclaimed = _udp_no_ports()
        for port in range(43000, 43998, 2):
            attacker.sendto(rtp_packet(0, 18), ("127.0.0.1", port))
        assert _udp_no_ports() - unclaimed >= 2 * len(calls)  # both RTP sockets of every call
        for caller, callee, caller_facing, _ in calls:
            caller.sendto(rtp_packet(9, 0), ("127.0.0.1", caller_facing))
            while callee.recvfrom(2048)[0][2:4] != b"\x00\x09":  # and the calls go on (a timeout fails)
                pass
        assert counters(programs)["relays"]["127.0.0.1"].get("latch_refused", 0) == refused
    finally:
        programs.kill()


def _ports_in_order(programs: Deployment) -> int:
    """How many calls' caller-facing ports come next after the call before's (sorted by set-up)."""
    sessions = json.loads(programs.management(b"sessions"))
    ports = [int(session["streams"][0]["caller_local"].rsplit(":", 1)[1]) for session in sessions]
    return sum(later - earlier in (2, 4) for earlier, later in zip(ports, ports[1:]))


def _udp_no_ports() -> int:
    """The kernel's count of UDP datagrams that no socket took (this network namespace's)."""
    with open("/proc/net/snmp") as snmp:
        names, values = [line.split() for line in snmp if line.startswith("Udp:")][:2]
    return int(values[names.index("NoPorts")])


def _latched_to_attacker(programs: Deployment) -> int:
    sessions = json.loads(programs.management(b"sessions"))
    return sum(
        1
        for session in sessions
        for stream in session["streams"]
        for key in ("caller_remote", "callee_remote")
        if stream[key].startswith("127.0.0.2:")
    )


def _tls_client(certs, role: str | None, **versions) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(str(certs / "ca.pem"))
    if role is not None:
        context.load_cert_chain(str(certs / f"{role}.crt"), str(certs / f"{role}.key"))
    if versions:
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
        context.minimum_version = versions["minimum"]
        context.maximum_version = versions["maximum"]
    return context


def _try_tls(port: int, context: ssl.SSLContext, source: str = "127.0.0.1") -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0)) as raw:
        try:
            with context.wrap_socket(raw) as connection:
                connection.sendall(b"ping\r\n")
                connection.recv(100)  # the dispatcher closes on us
        except (ssl.SSLError, OSError):
            pass


def test_tls_peers_in_the_wrong_role_without_certificate_old_or_plain_are_refused_and_logged(tmp_path):
    programs = Deployment(tmp_path, "[Dispatcher]\ntls_handshake_timeout = 1\n").start()
    try:
        certs, port = programs.config / "tls", programs.relay_port
        _try_tls(port, _tls_client(certs, "client"))
        programs.dispatcher.wait_for_log("has the client role, not relay")
        # one log line per address and minute: each attempt comes from its own address
        _try_tls(port, _tls_client(certs, None), source="127.0.0.2")
        programs.dispatcher.wait_for_log("connection from 127.0.0.2 TLS handshake failed: peer did not return a certificate")
        with socket.create_connection(("127.0.0.1", port), timeout=5, source_address=("127.0.0.3", 0)) as plain:
            plain.sendall(b"GET / HTTP/1.0\r\n\r\n")
            plain.recv(100)
        programs.dispatcher.wait_for_log("connection from 127.0.0.3 TLS handshake failed: http request")
        with socket.create_connection(("127.0.0.1", port), timeout=5, source_address=("127.0.0.4", 0)):
            programs.dispatcher.wait_for_log("connection from 127.0.0.4 no TLS handshake within 1s")
        refused = counters(programs)["dispatcher"]
        assert refused["wrong_role"] == 1 and refused["tls_handshake_timeout"] == 1 and refused["tls_failed"] >= 2
        # the real relay is still connected and serving
        assert json.loads(programs.management(b"summary"))[0]["status"] == "active"
    finally:
        programs.kill()


def test_tls_1_1_is_refused_and_logged(tmp_path):
    programs = Deployment(tmp_path).start()
    try:
        try:
            context = _tls_client(programs.config / "tls", "relay", minimum=ssl.TLSVersion.TLSv1, maximum=ssl.TLSVersion.TLSv1_1)
        except (ValueError, ssl.SSLError):
            pytest.skip("this OpenSSL cannot even offer TLS 1.1")
        _try_tls(programs.relay_port, context, source="127.0.0.5")
        programs.dispatcher.wait_for_log("TLS handshake failed: unsupported protocol")
    finally:
        programs.kill()


def test_a_relay_refuses_a_dispatcher_presenting_a_relay_certificate(tmp_path):
    fake = socket.socket()
    fake.bind(("127.0.0.1", 0))
    fake.listen(4)
    port = fake.getsockname()[1]
    programs = Deployment(tmp_path, f"[Relay]\ndispatchers = 127.0.0.1:{port}\npassport = \n")
    certs = programs.config / "tls"
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(str(certs / "relay.crt"), str(certs / "relay.key"))
    server.load_verify_locations(str(certs / "ca.pem"))
    server.verify_mode = ssl.CERT_REQUIRED
    relay = programs._program("media-relay", "relay.log")
    try:
        fake.settimeout(10)
        connection, _ = fake.accept()
        with connection:
            try:
                server.wrap_socket(connection, server_side=True).recv(100)
            except (ssl.SSLError, OSError):
                pass
        relay.wait_for_log("unsupported certificate purpose")
        relay.wait_for_log("TLS handshake failed")
        assert "Connected to dispatcher" not in relay.output()
    finally:
        relay.process.kill()
        relay.process.wait()
        fake.close()


def test_terminate_with_no_proxy_listening_removes_the_session_and_says_so(tmp_path):
    database = tmp_path / "accounting.sqlite"
    extra = f"[Dispatcher]\naccounting = database\n[Database]\ndburi = sqlite://{database}\n[OpenSIPS]\nsocket_path = {tmp_path}/no-proxy.sock\n"
    programs = Deployment(tmp_path, extra, stream_timeout=60).start()
    try:
        proxy = programs.proxy()
        assert proxy.request(update("stuck", "ft", media="audio:127.0.0.1:9:sendrecv", dialog_id="12:34")) != "error"
        assert proxy.request(update("stuck", "ft", "tt", kind="reply", media="audio:127.0.0.1:11:sendrecv", dialog_id="12:34")) != "error"
        started = time.monotonic()
        answer = json.loads(programs.management(b"terminate stuck"))
        assert time.monotonic() - started < 3
        assert answer["done"] == "session removed" and "the proxy could not be reached" in answer["proxy"], answer
        wait_until(lambda: "stuck" not in programs.management(b"sessions"), "the session gone", timeout=2)
        wait_until(lambda: _end_reasons(database) == [("stuck", "terminated")], "the call accounted", timeout=10)
    finally:
        programs.kill()


def _end_reasons(database) -> list[tuple[str, str]]:
    try:
        return list(sqlite3.connect(database).execute("SELECT call_id, end_reason FROM media_sessions"))
    except sqlite3.OperationalError:
        return []
