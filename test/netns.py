"""Network namespaces for tests: hosts joined by veth pairs, a NAT in between, sockets inside them.

Every namespace is named ``mp-<tag>-<role>`` and removed by ``Topology.remove()``; nothing here
touches the host's own network. A socket created inside a namespace stays there, so the test
process can drive UDP endpoints in several namespaces at once.
"""

from __future__ import annotations

import ctypes
import os
import socket
import subprocess
import threading
import uuid

import pytest

CLONE_NEWNET = 0x40000000


def require_root_and_tools() -> None:
    if os.geteuid() != 0:
        pytest.fail("network namespace tests need root (CI runs as root)", pytrace=False)
    for tool, package in (("ip", "iproute2"), ("iptables", "iptables"), ("nft", "nftables")):
        if subprocess.run(["sh", "-c", f"command -v {tool}"], capture_output=True).returncode != 0:
            pytest.fail(f"{tool} is not installed: apt-get install {package} (.ci/run does this)", pytrace=False)


def _setns(name: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            error = ctypes.get_errno()
            raise OSError(error, os.strerror(error))
    finally:
        os.close(fd)


def in_namespace(name: str, function, *args):
    """Run ``function`` in a thread that has entered namespace ``name``; returns its result."""
    outcome: dict = {}

    def run() -> None:
        try:
            _setns(name)
            outcome["value"] = function(*args)
        except BaseException as error:  # noqa: BLE001 - re-raised in the caller's thread
            outcome["error"] = error

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def udp_socket(namespace: str, address: tuple[str, int], timeout: float = 2.0) -> socket.socket:
    def make() -> socket.socket:
        endpoint = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        endpoint.bind(address)
        endpoint.settimeout(timeout)
        return endpoint

    return in_namespace(namespace, make)


class Topology:
    """Namespaces by role; ``link`` joins two with a veth pair; ``run`` executes a command in one."""

    def __init__(self) -> None:
        self.tag = uuid.uuid4().hex[:6]
        self.namespaces: list[str] = []
        self.links = 0

    def name(self, role: str) -> str:
        return f"mp-{self.tag}-{role}"

    def add(self, role: str) -> str:
        name = self.name(role)
        subprocess.run(["ip", "netns", "add", name], check=True)
        self.namespaces.append(name)
        self.run(role, "ip link set lo up")
        return name

    def run(self, role: str, command: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.name(role), "sh", "-c", command], check=check, capture_output=True, text=True)

    def link(self, left: str, left_address: str, right: str, right_address: str) -> tuple[str, str]:
        """A veth pair between two namespaces with an address (``ip/len``) at each end."""
        self.links += 1
        left_if, right_if = f"mp{self.tag}a{self.links}", f"mp{self.tag}b{self.links}"
        subprocess.run(["ip", "link", "add", left_if, "type", "veth", "peer", "name", right_if], check=True)
        for interface, role, address in ((left_if, left, left_address), (right_if, right, right_address)):
            subprocess.run(["ip", "link", "set", interface, "netns", self.name(role)], check=True)
            self.run(role, f"ip addr add {address} dev {interface} && ip link set {interface} up")
        return left_if, right_if

    def remove(self) -> None:
        for name in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "delete", name], capture_output=True)
        self.namespaces.clear()


# The NAT topology of the media tests:
#   caller 10.0.0.2 -- nat 10.0.0.1 | 203.0.113.2 (MASQUERADE) -- 203.0.113.1 relay 198.51.100.1 -- callee 198.51.100.2
NAT_RELAY_IP = "203.0.113.1"
NAT_CALLER_IP = "10.0.0.2"
NAT_CALLEE_IP = "198.51.100.2"
# where the caller's packets (its SIP too) come from: the NAT's outside address, the proxy's signaling_ip
NAT_PUBLIC_IP = "203.0.113.2"


def relay_behind_nat(udp_stream_timeout: int | None = None) -> Topology:
    """The caller behind a masquerading NAT, the relay, the callee on the relay's other side.

    ``udp_stream_timeout`` shortens the relay namespace's conntrack timeout for replied UDP flows,
    so an idle call expires in seconds."""
    network = Topology()
    try:
        for role in ("caller", "nat", "relay", "callee"):
            network.add(role)
        network.link("caller", f"{NAT_CALLER_IP}/24", "nat", "10.0.0.1/24")
        _, public = network.link("relay", f"{NAT_RELAY_IP}/24", "nat", f"{NAT_PUBLIC_IP}/24")
        network.link("relay", "198.51.100.1/24", "callee", f"{NAT_CALLEE_IP}/24")
        network.run("caller", "ip route add default via 10.0.0.1")
        network.run("callee", "ip route add default via 198.51.100.1")
        network.run("nat", f"sysctl -qw net.ipv4.ip_forward=1 && iptables -t nat -A POSTROUTING -o {public} -j MASQUERADE")
        if udp_stream_timeout is not None:
            network.run("relay", f"sysctl -qw net.netfilter.nf_conntrack_udp_timeout_stream={udp_stream_timeout}")
    except BaseException:
        network.remove()
        raise
    return network


def rtp(sequence: int, payload_type: int) -> bytes:
    """An RTP packet whose payload tells the sequence: a receiver sees gaps and reordering."""
    return bytes([0x80, payload_type]) + sequence.to_bytes(2, "big") + b"\x00" * 8 + bytes([sequence % 256]) * 160
