"""A real media-dispatcher and media-relay on loopback, and blocking clients to drive them."""

from __future__ import annotations

import json
import socket
import time

from netns import in_namespace

from harness import Program, free_port
from mediaproxy.net import certgen
from mediaproxy.testing import remove, update


class Deployment:
    """Config dir with generated certificates; programs started and restarted on demand.

    ``extra`` holds config.ini sections whose options override the defaults; with ``namespace``
    the programs run in that network namespace (the proxy's UNIX socket is reachable from anywhere).
    """

    def __init__(self, tmp_path, extra: str = "", stream_timeout: int = 3, namespace: str | None = None, files: int | None = None) -> None:
        self.tmp_path = tmp_path
        self.namespace = namespace
        self.files = files  # the dispatcher's open-file limit (soft and hard), when not the default
        self.config = tmp_path / "config"
        self.authority = certgen.generate(str(self.config / "tls"))
        self.relay_port, self.management_port = free_port(), free_port()
        self.runtime = tmp_path / "run"
        self.socket_path = str(self.runtime / "dispatcher.sock")
        sections = {
            "Dispatcher": {
                "listen": f"127.0.0.1:{self.relay_port}",
                "listen_management": f"127.0.0.1:{self.management_port}",
                "management_use_tls": "no",
                "passport": "O:MediaProxy Test, CN:*relay",
                "spool_dir": "spool",
            },
            "Relay": {
                "dispatchers": f"127.0.0.1:{self.relay_port}",
                "relay_ip": "127.0.0.1",
                "port_range": "43000:43998",
                "passport": "CN:mediaproxy-dispatcher",
                "stream_timeout": str(stream_timeout),
                "forwarding": "userspace",
            },
        }
        for name, options in _sections(extra).items():
            sections.setdefault(name, {}).update(options)
        text = "".join(
            f"[{name}]\n" + "".join(f"{key} = {value}\n" for key, value in options.items()) + "\n" for name, options in sections.items()
        )
        (self.config / "config.ini").write_text(text)
        self.dispatcher: Program | None = None
        self.relay: Program | None = None
        self.starts = 0
        self.relay_starts = 0

    def _program(self, name: str, log: str) -> Program:
        prefix = ("ip", "netns", "exec", self.namespace) if self.namespace else ()
        if self.files is not None and name == "media-dispatcher":
            prefix = (*prefix, "prlimit", f"--nofile={self.files}:{self.files}", "--")
        return Program(name, str(self.config), str(self.runtime), str(self.tmp_path / log), prefix=prefix)

    def start_dispatcher(self) -> Program:
        self.starts += 1
        self.dispatcher = self._program("media-dispatcher", f"dispatcher-{self.starts}.log")
        self.dispatcher.wait_for_log("Dispatcher started")
        return self.dispatcher

    def start_relay(self) -> Program:
        self.relay_starts += 1
        self.relay = self._program("media-relay", f"relay-{self.relay_starts}.log")
        self.relay.wait_for_log("Connected to dispatcher")
        return self.relay

    def start(self) -> Deployment:
        self.start_dispatcher()
        self.start_relay()
        self.dispatcher.wait_for_log("connected")
        return self

    def restart_dispatcher(self) -> Program:
        code, _ = self.dispatcher.stop(timeout=10)
        assert code == 0, self.dispatcher.output()
        self.start_dispatcher()
        self.dispatcher.wait_for_log("Relay 127.0.0.1 connected")
        return self.dispatcher

    def proxy(self) -> Proxy:
        return Proxy(self.socket_path)

    def management(self, command: bytes) -> str:
        if self.namespace:
            return in_namespace(self.namespace, management, self.management_port, command)
        return management(self.management_port, command)

    def kill(self) -> None:
        for program in (self.relay, self.dispatcher):
            if program is not None and program.process.poll() is None:
                program.process.kill()
                program.process.wait()


def _sections(text: str) -> dict[str, dict[str, str]]:
    sections: dict[str, dict[str, str]] = {}
    current = None
    for line in text.strip().splitlines():
        line = line.strip()
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
        elif line:
            key, _, value = line.partition("=")
            current[key.strip()] = value.strip()
    return sections


class Proxy:
    """A blocking proxy-module client: one request, one reply line."""

    def __init__(self, path: str) -> None:
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.socket.settimeout(5)
        self.socket.connect(path)
        self.buffer = b""

    def request(self, data: bytes) -> str:
        self.socket.sendall(data)
        while b"\r\n" not in self.buffer:
            chunk = self.socket.recv(8192)
            assert chunk, "dispatcher closed the connection"
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line.decode()

    def close(self) -> None:
        self.socket.close()


def udp_endpoint() -> socket.socket:
    endpoint = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    endpoint.bind(("127.0.0.1", 0))
    endpoint.settimeout(2)
    return endpoint


def rtp_packet(sequence: int, payload_type: int = 0) -> bytes:
    return bytes([0x80, payload_type]) + sequence.to_bytes(2, "big") + b"\x00" * 8 + b"\xd5" * 160


def rss(program: Program) -> int:
    """Resident memory of a running program, in bytes."""
    with open(f"/proc/{program.process.pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def management(port: int, command: bytes) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
        connection.sendall(command + b"\r\n")
        data = b""
        while not data.endswith(b"\r\n"):
            data += connection.recv(65536)
        return data.decode().strip()


def establish(caller: socket.socket, callee: socket.socket, caller_facing: int, callee_facing: int) -> None:
    """Get both parties learnt: the callee speaks first, then the caller until the callee hears it.

    Loopback is not 'routable', so nothing is forwarded before the other party is learnt; polling
    for the first forwarded packet is how we know, without sleeping, that both are latched.
    """
    callee.sendto(rtp_packet(0, 8), ("127.0.0.1", callee_facing))
    callee.settimeout(0.2)
    try:
        for attempt in range(50):
            caller.sendto(rtp_packet(attempt), ("127.0.0.1", caller_facing))
            try:
                callee.recvfrom(2048)
                return
            except TimeoutError:
                continue
        raise AssertionError("the relay never forwarded the caller's media")
    finally:
        callee.settimeout(2)


def call(
    proxy: Proxy,
    call_id: str,
    caller: socket.socket,
    callee: socket.socket,
    caller_agent: str = "test-agent",
    callee_agent: str = "test-agent",
    media_relay: str = "",
) -> tuple[int, int]:
    caller_media = f"audio:127.0.0.1:{caller.getsockname()[1]}:sendrecv:ice=no"
    callee_media = f"audio:127.0.0.1:{callee.getsockname()[1]}:sendrecv:ice=no"
    offer = proxy.request(update(call_id, "ft", media=caller_media, dialog_id="5:6", user_agent=caller_agent, media_relay=media_relay))
    answer = proxy.request(update(call_id, "ft", "tt", kind="reply", media=callee_media, dialog_id="5:6", user_agent=callee_agent))
    relay_ip, callee_facing = offer.split()
    _, caller_facing = answer.split()
    assert relay_ip == "127.0.0.1"
    return int(caller_facing), int(callee_facing)


def exchange(caller: socket.socket, callee: socket.socket, caller_facing: int, callee_facing: int, count: int) -> None:
    """Send ``count`` RTP packets each way through the relay, each one received before the next."""
    for sequence in range(count):
        caller.sendto(rtp_packet(sequence, 0), ("127.0.0.1", caller_facing))
        callee.recvfrom(2048)
        callee.sendto(rtp_packet(sequence, 8), ("127.0.0.1", callee_facing))
        caller.recvfrom(2048)


def answered_call(proxy: Proxy, call_id: str, to_tag: str = "tt") -> None:
    """A call that is offered, answered and removed without media: enough to be accounted."""
    assert proxy.request(update(call_id, "ft", media="audio:127.0.0.1:9:sendrecv:ice=no")) != "error"
    assert proxy.request(update(call_id, "ft", to_tag, kind="reply", media="audio:127.0.0.1:11:sendrecv:ice=no")) != "error"
    assert proxy.request(remove(call_id, "ft", to_tag)) == "removed"


def stream_of(management_port: int, call_id: str) -> dict:
    sessions = json.loads(management(management_port, b"sessions"))
    (session,) = [item for item in sessions if item["call_id"] == call_id]
    (stream,) = session["streams"]
    return stream


def wait_until(condition, what: str, timeout: float = 60.0, interval: float = 0.1) -> None:
    """Poll a condition on real processes until it holds; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
