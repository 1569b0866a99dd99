"""What the benchmarks share: a two-namespace network, our stack as processes, rtpengine, /proc readings.

    generator 192.0.2.2 (callers and callees) ==veth== 192.0.2.1 relay namespace (relays, rtpengine)

The relay namespace has one address per system under test, so they all run at once and the
rounds alternate between them on the same machine state.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "test"))

from deployment import Deployment, Proxy  # noqa: E402
from netns import Topology, in_namespace, udp_socket  # noqa: E402

from mediaproxy.testing import remove, update  # noqa: E402

GENERATOR_IP = "192.0.2.2"
RELAY_NET = "192.0.2.1/24"
ADDRESSES = {
    "userspace": "192.0.2.11",
    "kernel": "192.0.2.12",
    "rtpengine": "192.0.2.13",
    "userspace-1": "192.0.2.14",
    "against": "192.0.2.15",
    "userspace-2": "192.0.2.16",
    "rtpengine-1": "192.0.2.17",
}
PAYLOAD = 172  # G.711 20 ms: 160 bytes of audio and a 12-byte RTP header


def network() -> Topology:
    # SIGTERM unwinds like Ctrl-C, so every script's finally removes its namespaces and processes
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    net = Topology()
    net.add("gen")
    net.add("relay")
    net.link("gen", f"{GENERATOR_IP}/24", "relay", RELAY_NET)
    for address in ADDRESSES.values():
        net.run("relay", f"ip addr add {address}/32 dev lo")
    return net


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@contextlib.contextmanager
def checked_out(revision: str):
    """Another git revision of this checkout, in a worktree of its own that is removed
    afterwards; yields its path (programs started with ``harness.ROOT`` set to it run its code)."""
    with tempfile.TemporaryDirectory(prefix="mp-bench-") as scratch:
        tree = os.path.join(scratch, "tree")
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", tree, revision], check=True)
        try:
            yield tree
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", tree], check=False)


@contextlib.contextmanager
def one_stack(name: str, port_range: str, stream_timeout: int = 60):
    """A network with one of our stacks (userspace forwarding) in it, both gone afterwards."""
    net = network()
    stack = None
    try:
        stack = OurStack(net, "userspace", port_range, name=name, stream_timeout=stream_timeout)
        yield stack
    finally:
        if stack is not None:
            stack.stop()
        net.remove()


class OurStack:
    """media-dispatcher and media-relay processes in the relay namespace."""

    def __init__(
        self, net: Topology, forwarding: str, port_range: str, name: str | None = None, extra: str = "", stream_timeout: int = 60
    ) -> None:
        self.name = name or forwarding
        self.directory = Path(tempfile.mkdtemp(prefix=f"mp-bench-{self.name}-"))
        ip = ADDRESSES.get(self.name, ADDRESSES.get(forwarding, ADDRESSES["userspace"]))
        self.deployment = Deployment(
            self.directory,
            f"[Relay]\nrelay_ip = {ip}\nforwarding = {forwarding}\nport_range = {port_range}\nstream_timeout = {stream_timeout}\n"
            f"traffic_sampling_period = 0\nconntrack_mark = {0x4D60 + len(self.name)}\n{extra}",
            namespace=net.name("relay"),
        )
        try:
            self.deployment.start()
            self.proxy = Proxy(self.deployment.socket_path)
        except BaseException:
            self.deployment.kill()
            raise

    @property
    def relay_pid(self) -> int:
        return self.deployment.relay.process.pid  # `ip netns exec` execs the program: same pid

    @property
    def dispatcher_pid(self) -> int:
        return self.deployment.dispatcher.process.pid

    def open(self, call_id: str, caller: tuple[str, int], callee: tuple[str, int]) -> tuple[tuple[str, int], tuple[str, int]]:
        """Set up a call; returns the relay's (caller-facing, callee-facing) addresses."""
        offer = self.proxy.request(update(call_id, "ft", media=f"audio:{caller[0]}:{caller[1]}:sendrecv:ice=no"))
        answer = self.proxy.request(update(call_id, "ft", "tt", kind="reply", media=f"audio:{callee[0]}:{callee[1]}:sendrecv:ice=no"))
        ip, callee_port = offer.split()
        _, caller_port = answer.split()
        return (ip, int(caller_port)), (ip, int(callee_port))

    def close(self, call_id: str) -> None:
        assert self.proxy.request(remove(call_id, "ft", "tt")) == "removed"

    def stop(self) -> None:
        self.proxy.close()
        self.deployment.kill()
        shutil.rmtree(self.directory, ignore_errors=True)


class Rtpengine:
    """Debian's rtpengine-daemon in userspace mode, driven over its ng protocol (bencode over UDP)."""

    def __init__(self, net: Topology, port_min: int, port_max: int, threads: int = 2, name: str = "rtpengine", timeout: int = 60) -> None:
        if shutil.which("rtpengine") is None:
            raise SystemExit("rtpengine is not installed: apt-get install rtpengine-daemon")
        self.net = net
        # listening ports of its own (Debian's rtpengine.conf names fixed ones): several run at once
        self.control_port = 22223 + list(ADDRESSES).index(name)
        self.log = tempfile.NamedTemporaryFile(prefix=f"mp-bench-{name}-", suffix=".log", delete=False)
        ip = ADDRESSES[name]
        command = ["ip", "netns", "exec", net.name("relay"), "rtpengine", "--foreground", "--log-stderr", "--table=-1"]
        command += [f"--interface={ip}", f"--listen-ng=127.0.0.1:{self.control_port}", f"--listen-cli=127.0.0.1:{self.control_port + 1000}"]
        command += [f"--listen-http=127.0.0.1:{self.control_port + 2000}"]
        command += [f"--port-min={port_min}", f"--port-max={port_max}", "--log-level=3", f"--num-threads={threads}", "--delete-delay=0"]
        command += [f"--timeout={timeout}", f"--silent-timeout={timeout}"]  # a call without media is ended after that
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT)
        self.control = in_namespace(net.name("relay"), _udp_client)
        self.cookie = 0
        deadline = time.monotonic() + 10
        while True:
            try:
                if self.command({"command": "ping"}).get(b"result") == b"pong":
                    break
            except TimeoutError:
                pass
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise SystemExit("rtpengine did not start: " + Path(self.log.name).read_text()[-2000:])

    @property
    def pid(self) -> int:
        return self.process.pid

    def command(self, message: dict) -> dict:
        self.cookie += 1
        cookie = str(self.cookie).encode()
        self.control.sendto(cookie + b" " + bencode(message), ("127.0.0.1", self.control_port))
        while True:
            data = self.control.recv(65536)
            reply_cookie, _, body = data.partition(b" ")
            if reply_cookie == cookie:
                value, _ = bdecode(body)
                return value

    def open(self, call_id: str, caller: tuple[str, int], callee: tuple[str, int]) -> tuple[tuple[str, int], tuple[str, int]]:
        offer = self._ok(self.command({"command": "offer", "call-id": call_id, "from-tag": "ft", "sdp": _sdp(*caller)}))
        answer = self._ok(self.command({"command": "answer", "call-id": call_id, "from-tag": "ft", "to-tag": "tt", "sdp": _sdp(*callee)}))
        # the offer's SDP goes to the callee (the port facing it); the answer's to the caller
        return _media_address(answer[b"sdp"]), _media_address(offer[b"sdp"])

    def close(self, call_id: str) -> None:
        self.command({"command": "delete", "call-id": call_id, "from-tag": "ft"})

    @staticmethod
    def _ok(reply: dict) -> dict:
        if reply.get(b"result") != b"ok":
            raise SystemExit(f"rtpengine refused: {reply.get(b'error-reason', reply)!r}")
        return reply

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.control.close()
        os.unlink(self.log.name)


def _udp_client() -> socket.socket:
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind(("127.0.0.1", 0))
    client.settimeout(2)
    return client


def _sdp(ip: str, port: int) -> str:
    return (
        f"v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n"
    )


def _media_address(sdp: bytes) -> tuple[str, int]:
    text = sdp.decode()
    ip = next(line.split()[-1] for line in text.splitlines() if line.startswith("c="))
    port = int(next(line.split()[1] for line in text.splitlines() if line.startswith("m=")))
    return ip, port


def bencode(value: object) -> bytes:
    if isinstance(value, dict):
        return b"d" + b"".join(bencode(key) + bencode(value[key]) for key in sorted(value)) + b"e"
    if isinstance(value, list):
        return b"l" + b"".join(bencode(item) for item in value) + b"e"
    if isinstance(value, int):
        return b"i%de" % value
    data = value.encode() if isinstance(value, str) else value
    return b"%d:%s" % (len(data), data)


def bdecode(data: bytes, index: int = 0) -> tuple[object, int]:
    kind = data[index : index + 1]
    if kind == b"i":
        end = data.index(b"e", index)
        return int(data[index + 1 : end]), end + 1
    if kind in (b"l", b"d"):
        index += 1
        items = []
        while data[index : index + 1] != b"e":
            item, index = bdecode(data, index)
            items.append(item)
        return (dict(zip(items[::2], items[1::2])) if kind == b"d" else items), index + 1
    colon = data.index(b":", index)
    length = int(data[index:colon])
    return data[colon + 1 : colon + 1 + length], colon + 1 + length


def generator_sockets(net: Topology, count: int, first_port: int) -> list[socket.socket]:
    sockets = [udp_socket(net.name("gen"), (GENERATOR_IP, first_port + 2 * index), timeout=0) for index in range(count)]
    for endpoint in sockets:
        endpoint.setblocking(False)
        endpoint.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    return sockets
