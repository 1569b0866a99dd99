"""The real media-dispatcher and media-relay programs: start, connect over TLS, relay RTP, stop."""

import json
import os
import signal
import socket
import subprocess
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from deployment import Deployment, Proxy, call, establish, management, rtp_packet, stream_of, udp_endpoint, wait_until

from harness import free_port, program_command
from mediaproxy.net import certgen
from mediaproxy.testing import remove, update


@pytest.fixture
def deployment(tmp_path):
    programs = Deployment(tmp_path)
    try:
        programs.start()
        yield programs.dispatcher, programs.relay, programs.socket_path, programs.management_port
    finally:
        programs.kill()


def test_media_flows_both_ways_through_the_relay(deployment):
    dispatcher, relay, socket_path, management_port = deployment
    caller, callee = udp_endpoint(), udp_endpoint()
    proxy = Proxy(socket_path)
    caller_facing, callee_facing = call(proxy, "it-1", caller, callee)
    assert caller_facing % 2 == 0 and callee_facing % 2 == 0 and caller_facing != callee_facing
    establish(caller, callee, caller_facing, callee_facing)
    for sequence in range(50):
        caller.sendto(rtp_packet(sequence, 0), ("127.0.0.1", caller_facing))
        data, source = callee.recvfrom(2048)
        assert source == ("127.0.0.1", callee_facing) and data == rtp_packet(sequence, 0)
        callee.sendto(rtp_packet(sequence, 8), ("127.0.0.1", callee_facing))
        data, source = caller.recvfrom(2048)
        assert source == ("127.0.0.1", caller_facing) and data == rtp_packet(sequence, 8)
    summary = json.loads(management(management_port, b"summary"))
    assert summary[0]["session_count"] == 1 and summary[0]["stream_count"] == {"audio": 1}
    assert proxy.request(remove("it-1", "ft", "tt")) == "removed"
    assert json.loads(management(management_port, b"sessions")) == []
    code, _ = relay.stop()
    assert code == 0
    code, _ = dispatcher.stop()
    assert code == 0


def test_statistics_count_forwarded_packets_and_bytes(deployment):
    _, _, socket_path, management_port = deployment
    caller, callee = udp_endpoint(), udp_endpoint()
    proxy = Proxy(socket_path)
    caller_facing, callee_facing = call(proxy, "it-2", caller, callee)
    establish(caller, callee, caller_facing, callee_facing)
    before = stream_of(management_port, "it-2")
    for sequence in range(20):
        caller.sendto(rtp_packet(sequence), ("127.0.0.1", caller_facing))
        callee.recvfrom(2048)
    for sequence in range(10):
        callee.sendto(rtp_packet(sequence, 8), ("127.0.0.1", callee_facing))
        caller.recvfrom(2048)
    after = stream_of(management_port, "it-2")
    size = len(rtp_packet(0)) + 28  # counted at IP level, as conntrack does
    assert after["caller_packets"] - before["caller_packets"] == 20
    assert after["caller_bytes"] - before["caller_bytes"] == 20 * size
    assert after["callee_packets"] - before["callee_packets"] == 10
    assert after["callee_bytes"] - before["callee_bytes"] == 10 * size
    assert after["caller_codec"] == "G711u" and after["callee_codec"] == "G711a"
    assert after["caller_remote"] == f"127.0.0.1:{caller.getsockname()[1]}"
    assert proxy.request(remove("it-2", "ft", "tt")) == "removed"


def test_sigterm_keeps_sessions_and_both_stop_within_two_seconds(deployment):
    dispatcher, relay, socket_path, _ = deployment
    proxy = Proxy(socket_path)
    proxy.request(update("it-3", "ft", media="audio:127.0.0.1:9:sendrecv:ice=no"))
    code, elapsed = relay.stop(signal.SIGTERM)
    assert code == 0 and elapsed < 2
    assert "Keeping 1 sessions for the next start" in relay.output()  # for the next start; nothing expired
    dispatcher.wait_for_log("Relay 127.0.0.1 disconnected")
    assert "it-3 expired" not in dispatcher.output()
    code, elapsed = dispatcher.stop(signal.SIGINT)
    assert code == 0 and elapsed < 2
    assert "Traceback" not in dispatcher.output() + relay.output()


def test_sighup_drains_the_relay(deployment):
    dispatcher, relay, socket_path, _ = deployment
    proxy = Proxy(socket_path)
    proxy.request(update("it-4", "ft", media="audio:127.0.0.1:9:sendrecv:ice=no"))
    relay.process.send_signal(signal.SIGHUP)
    relay.wait_for_log("Graceful shutdown")
    assert proxy.request(update("it-5", "ft", media="audio:127.0.0.1:9:sendrecv:ice=no")) == "error"  # halting: no relay left
    assert relay.process.poll() is None
    assert proxy.request(remove("it-4", "ft")) == "removed"
    assert relay.process.wait(timeout=5) == 0
    dispatcher.stop()


def test_stream_timeout_reports_expiry(deployment):
    dispatcher, relay, socket_path, _ = deployment
    proxy = Proxy(socket_path)
    proxy.request(update("it-6", "ft", media="audio:127.0.0.1:9:sendrecv:ice=no", dialog_id="1:2"))
    proxy.request(update("it-6", "ft", "tt", kind="reply", media="audio:127.0.0.1:10:sendrecv:ice=no"))
    dispatcher.wait_for_log("Call it-6 expired on relay 127.0.0.1", timeout=10)
    relay.wait_for_log("Session it-6 expired")


def _daemon_config(tmp_path, relay_port):
    config = tmp_path / "config"
    certgen.generate(str(config / "tls"))
    (config / "config.ini").write_text(f"[Dispatcher]\nlisten = 127.0.0.1:{relay_port}\nlisten_management = 127.0.0.1:{free_port()}\n")
    return config


def test_daemon_mode_writes_pid_file_and_stops_on_sigterm(tmp_path):
    config = _daemon_config(tmp_path, free_port())
    runtime = tmp_path / "run"
    command = [*program_command("media-dispatcher"), "--config-dir", str(config), "--runtime-dir", str(runtime)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    pid_file = runtime / "media-dispatcher.pid"
    pid = int(pid_file.read_text())
    os.kill(pid, 0)  # running in the background
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 5
    while pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_file.exists()


def test_daemon_start_failure_is_reported_by_the_parent(tmp_path):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    config = _daemon_config(tmp_path, busy.getsockname()[1])
    command = [*program_command("media-dispatcher"), "--config-dir", str(config), "--runtime-dir", str(tmp_path / "run")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=30)
    busy.close()
    assert result.returncode == 1
    assert "Failed to create the listening socket" in result.stderr


def test_tls_rechecks_drop_a_revoked_relay_without_a_traceback(tmp_path):
    """verify_interval = 1: the periodic re-check (expiry, CRL re-read) runs on every library version we support."""
    programs = Deployment(tmp_path, "[TLS]\nverify_interval = 1\n")
    try:
        programs.start()
        programs.dispatcher.wait_for_log("Relay 127.0.0.1 connected")
        with open(programs.config / "tls" / "relay.crt", "rb") as file:
            programs.authority.revoke(x509.load_pem_x509_certificate(file.read()))
        (programs.config / "tls" / "crl.pem").write_bytes(programs.authority.crl().public_bytes(serialization.Encoding.PEM))
        programs.dispatcher.wait_for_log("Dropping relay 127.0.0.1: certificate revoked by the CRL", timeout=15)
        # the relay keeps trying and is refused at the handshake from now on
        wait_until(
            lambda: "certificate revoked" in programs.dispatcher.output().split("Dropping relay")[-1],
            "the refused reconnection",
            timeout=30,
        )
        for program in (programs.dispatcher, programs.relay):
            assert "Traceback" not in program.output() and "CRITICAL" not in program.output(), program.output()
    finally:
        programs.kill()
