"""mediaproxy-demo: dispatcher + relay on loopback with generated certificates and a demo call.

Everything lives in one directory (default ./mediaproxy-demo): test certificates, config.ini,
the runtime directory, both programs' logs and the SQLite accounting database. The demo call
speaks the proxy protocol exactly as Kamailio's mediaproxy module does, sends RTP from two local
endpoints through the relay, and ends by showing the accounting record the dispatcher wrote.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time

from mediaproxy.cli.sessions import ManagementError, query
from mediaproxy.demo import sip as demo_sip
from mediaproxy.net import certgen
from mediaproxy.testing import remove, update

CONFIG = """\
; written by mediaproxy-demo: everything on loopback
[Dispatcher]
listen = 127.0.0.1:{relay_port}
listen_management = 127.0.0.1:{management_port}
management_use_tls = no
accounting = database
spool_dir = {directory}/spool

[Database]
dburi = sqlite://{database}

[Relay]
dispatchers = 127.0.0.1:{relay_port}
relay_ip = 127.0.0.1
port_range = 40000:40200
; the demo leaves the machine's kernel settings alone
forwarding = userspace
"""


def _program(name: str) -> list[str]:
    """The installed program beside this Python (a venv's bin/), on PATH, or in a source checkout."""
    candidates = [
        os.path.join(os.path.dirname(sys.executable), name),
        shutil.which(name) or "",
        os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), name),
    ]
    for candidate in candidates:
        if candidate and os.path.isfile(candidate):
            return [sys.executable, candidate]
    raise SystemExit(f"demo: cannot find the {name} program; install MediaProxy with pip first")


def _wait_for(path: str, text: str, process: subprocess.Popen, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(path) as stream:
            if text in stream.read():
                return
        if process.poll() is not None:
            break
        time.sleep(0.1)
    with open(path) as stream:
        raise SystemExit(f"demo: {text!r} did not appear in {path}:\n{stream.read()}")


def _request(connection: socket.socket, data: bytes) -> str:
    connection.sendall(data)
    reply = b""
    while not reply.endswith(b"\r\n"):
        chunk = connection.recv(8192)
        if not chunk:
            raise SystemExit("demo: the dispatcher closed the proxy connection")
        reply += chunk
    return reply.decode().strip()


def _sessions(port: int) -> list:
    """The relays' sessions, asked through the management interface as media-sessions does."""
    try:
        return query("127.0.0.1", port, ["sessions"], None)[0]
    except ManagementError as error:
        raise SystemExit(f"demo: {error}") from None


def _rtp(sequence: int, payload_type: int) -> bytes:
    return (
        bytes([0x80, payload_type])
        + (sequence & 0xFFFF).to_bytes(2, "big")
        + (sequence * 160).to_bytes(4, "big")
        + b"\x12\x34\x56\x78"
        + b"\xd5" * 160
    )


def endpoints() -> tuple[socket.socket, socket.socket]:
    """The caller's and the callee's RTP sockets on loopback."""
    pair = tuple(socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2))
    for endpoint in pair:
        endpoint.bind(("127.0.0.1", 0))
    return pair


def talk(caller: socket.socket, callee: socket.socket, caller_side: tuple[str, int], callee_side: tuple[str, int], seconds: float) -> None:
    """Both parties send RTP through the relay for ``seconds``, with a progress line of what arrived."""
    received = {"caller": 0, "callee": 0}
    started = time.monotonic()
    sequence = 0
    while time.monotonic() - started < seconds:
        callee.sendto(_rtp(sequence, 8), callee_side)
        caller.sendto(_rtp(sequence, 0), caller_side)
        for name, endpoint in (("callee", callee), ("caller", caller)):
            endpoint.settimeout(0.02)
            try:
                while True:
                    endpoint.recvfrom(2048)
                    received[name] += 1
            except TimeoutError:
                pass
        sequence += 1
        if sequence % 25 == 0:
            print(
                f"\r  sent {sequence} packets each way; relayed to callee: {received['callee']}, to caller: {received['caller']}",
                end="",
                flush=True,
            )
    print()
    if not received["caller"] or not received["callee"]:
        raise SystemExit("demo: media did not flow through the relay")


def demo_call(socket_path: str, management_port: int, seconds: float) -> dict:
    """A call set up by speaking the proxy protocol exactly as Kamailio's mediaproxy module does."""
    caller, callee = endpoints()
    proxy = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    proxy.settimeout(5)
    proxy.connect(socket_path)
    call_id = f"demo-{os.getpid()}@127.0.0.1"
    caller_sdp = f"audio:127.0.0.1:{caller.getsockname()[1]}:sendrecv:ice=no"
    callee_sdp = f"audio:127.0.0.1:{callee.getsockname()[1]}:sendrecv:ice=no"
    offer = _request(proxy, update(call_id, "demo-caller", media=caller_sdp, dialog_id="1:1", user_agent="demo caller"))
    answer = _request(
        proxy, update(call_id, "demo-caller", "demo-callee", kind="reply", media=callee_sdp, dialog_id="1:1", user_agent="demo callee")
    )
    print(f"INVITE SDP rewritten to the relay: {offer}   200 OK SDP rewritten: {answer}")
    relay_ip, callee_facing = offer.split()
    caller_facing = int(answer.split()[1])
    talk(caller, callee, (relay_ip, caller_facing), (relay_ip, int(callee_facing)), seconds)
    statistics = _sessions(management_port)
    reply = _request(proxy, remove(call_id, "demo-caller", "demo-callee"))
    proxy.close()
    if reply != "removed":
        raise SystemExit(f"demo: remove answered {reply!r}")
    return statistics[0] if statistics else {}


def _totals(statistics: dict) -> str:
    streams = statistics.get("streams") or [{}]
    stream = streams[0]
    return (
        f"{stream.get('caller_packets', 0)} packets ({stream.get('caller_bytes', 0)} bytes) from the caller and "
        f"{stream.get('callee_packets', 0)} packets ({stream.get('callee_bytes', 0)} bytes) from the callee"
    )


def _accounting_record(database: str, call_id: str | None, timeout: float = 15) -> dict:
    """The row the database accounting plugin wrote for the call (it writes from its own thread)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with sqlite3.connect(database) as connection:
                row = connection.execute("SELECT info FROM media_sessions WHERE call_id = ?", (call_id,)).fetchone()
            if row is not None:
                return json.loads(row[0])
        except sqlite3.OperationalError:
            pass  # the table is created with the first record
        time.sleep(0.2)
    raise SystemExit(f"demo: no accounting record for {call_id} in {database}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mediaproxy-demo", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--directory", default="mediaproxy-demo", help="where certificates, config, logs and sockets go (default: %(default)s)"
    )
    parser.add_argument("--seconds", type=float, default=5, help="length of the demo call (default: %(default)s)")
    parser.add_argument(
        "--client",
        choices=("auto", "kamailio", "builtin"),
        default="auto",
        help="who places the call: Kamailio + sipp when installed (auto), or the built-in client (default: %(default)s)",
    )
    parser.add_argument("--keep-running", action="store_true", help="leave dispatcher and relay running after the call until Ctrl-C")
    args = parser.parse_args(argv)
    directory = os.path.abspath(args.directory)
    certs = os.path.join(directory, "tls")
    if not os.path.exists(os.path.join(certs, "ca.pem")):
        certgen.generate(certs)
        print(f"Generated test certificates in {certs}")
    relay_port, management_port = 25060, 25061
    database = os.path.join(directory, "accounting.sqlite")
    with open(os.path.join(directory, "config.ini"), "w") as stream:
        stream.write(CONFIG.format(relay_port=relay_port, management_port=management_port, directory=directory, database=database))
    runtime = os.path.join(directory, "run")
    processes = []
    try:
        for name, ready in (("media-dispatcher", "Dispatcher started"), ("media-relay", "Connected to dispatcher")):
            log_path = os.path.join(directory, f"{name}.log")
            log = open(log_path, "w")
            command = [*_program(name), "--no-fork", "--config-dir", directory, "--runtime-dir", runtime]
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
            processes.append(process)
            _wait_for(log_path, ready, process)
            print(f"{name} running (pid {process.pid}, log {log_path})")
        _wait_for(os.path.join(directory, "media-dispatcher.log"), "Relay 127.0.0.1 connected", processes[0])
        print("The relay is connected to the dispatcher over mutual TLS.")
        socket_path = os.path.join(runtime, "dispatcher.sock")
        if args.client == "kamailio" or (args.client == "auto" and demo_sip.available()):
            print("Demo call: sipp calls sipp through Kamailio (engage_media_proxy); RTP flows through the relay")
            statistics = demo_sip.call(directory, socket_path, lambda: _sessions(management_port), args.seconds, endpoints, talk)
        else:
            print("Demo call: the proxy protocol spoken as Kamailio's module does; two RTP endpoints talk through the relay")
            statistics = demo_call(socket_path, management_port, args.seconds)
        print(f"While the call was up the relay counted {_totals(statistics)}.")
        record = _accounting_record(database, statistics.get("call_id"))
        print(f"Accounting record the dispatcher wrote to {database} (table media_sessions):")
        print(json.dumps(record, indent=2))
        print(f"Query it yourself: sqlite3 {database} 'SELECT call_id, info FROM media_sessions'")
        if args.keep_running:
            print(f"Dispatcher and relay keep running; management on 127.0.0.1:{management_port}. Ctrl-C stops them.")
            signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        for process in reversed(processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=10)
    print("Dispatcher and relay stopped.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
