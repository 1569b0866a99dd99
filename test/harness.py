"""A dispatcher and relays running in the test's own reactor, over real sockets and real TLS."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import replace

from twisted.internet import defer, protocol, reactor, task
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.protocols.basic import LineOnlyReceiver

from mediaproxy.configuration import Configuration, DispatcherConfig, RelayConfig
from mediaproxy.datatypes import Endpoint, NetworkAddress, PortRange
from mediaproxy.dispatcher.service import DispatcherService
from mediaproxy.net import certgen
from mediaproxy.net.tls import ClientContextFactory, Credentials
from mediaproxy.plugins.management import ManagementPluginFactory
from mediaproxy.relay.service import RelayService
from mediaproxy.testing import ProxyClient
from mediaproxy.wire.statistics import SessionRecord
from mediaproxy.wire.update import UpdateReply


class LogCollector:
    """Keeps every log event of a test so it can assert on errors and warnings."""

    def __init__(self) -> None:
        self.events: list[dict] = []

    def __call__(self, event: dict) -> None:
        self.events.append(event)

    def at_least(self, level: LogLevel) -> list[str]:
        return [formatEvent(event) for event in self.events if event.get("log_level") is not None and event["log_level"] >= level]

    def at(self, level: LogLevel) -> list[str]:
        return [formatEvent(event) for event in self.events if event.get("log_level") == level]

    def text(self) -> str:
        return "\n".join(formatEvent(event) for event in self.events)


def loopback_socket() -> socket.socket:
    """A UDP socket on a free loopback port, blocking with a 2 s timeout (a peer in a test)."""
    endpoint = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    endpoint.bind(("127.0.0.1", 0))
    endpoint.settimeout(2)
    return endpoint


@contextlib.contextmanager
def logged():  # a context giving the LogCollector of what was logged inside it
    collector = LogCollector()
    globalLogPublisher.addObserver(collector)
    try:
        yield collector
    finally:
        globalLogPublisher.removeObserver(collector)


def collect_logs(test) -> LogCollector:
    collector = LogCollector()
    globalLogPublisher.addObserver(collector)
    test.addCleanup(globalLogPublisher.removeObserver, collector)
    return collector


@defer.inlineCallbacks
def wait_for(condition, timeout: float = 10.0, what: str = "condition"):
    """Poll ``condition`` in the reactor until true; fails the test after ``timeout`` seconds."""
    deadline = reactor.seconds() + timeout
    while not condition():
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        yield task.deferLater(reactor, 0.01, lambda: None)


class Stack:
    def __init__(self, test, relay_ips=("127.0.0.1",), dispatcher_options=None, relay_options=None, plugin_factories=None) -> None:
        self.test = test
        self.directory = tempfile.mkdtemp(prefix="mp-test-")
        test.addCleanup(shutil.rmtree, self.directory, True)
        self.certs = os.path.join(self.directory, "tls")
        certgen.generate(self.certs)
        self.relay_ips = relay_ips
        self.dispatcher_options = dispatcher_options or {}
        self.relay_options = relay_options or {}
        self.plugin_factories = [ManagementPluginFactory] if plugin_factories is None else plugin_factories
        self.relays: dict[str, RelayService] = {}
        self.runtime = os.path.join(self.directory, "run")
        os.makedirs(self.runtime)

    @property
    def configuration(self) -> Configuration:
        options = {
            "listen": NetworkAddress("127.0.0.1", 0),
            "listen_management": NetworkAddress("127.0.0.1", 0),
            "management_use_tls": False,
            **self.dispatcher_options,
        }
        dispatcher = DispatcherConfig(**options)
        return Configuration(dispatcher=dispatcher, search_path=(self.directory,))

    @defer.inlineCallbacks
    def start(self, relays: bool = True):
        self.dispatcher = DispatcherService(
            self.configuration, Credentials(self.certs, "dispatcher"), self.runtime, reactor, self.plugin_factories
        )
        yield self.dispatcher.startService()
        self.test.addCleanup(self.stop_dispatcher)
        if relays:
            for ip in self.relay_ips:
                yield self.start_relay(ip)

    @property
    def relay_port(self) -> int:
        return self.dispatcher.relay_port.getHost().port

    @property
    def management_port(self) -> int:
        return self.dispatcher.plugins.plugins[0].port.getHost().port

    def relay_config(self, ip: str) -> RelayConfig:
        base = RelayConfig(
            dispatchers=(Endpoint("127.0.0.1", self.relay_port),),
            relay_ip=ip,
            link_source_ip=ip,
            port_range=PortRange(42000, 42400),
            reconnect_delay=1,
            forwarding="userspace",
            userspace_workers=0,  # in process, with the test's reactor: no worker processes
        )
        return replace(base, **self.relay_options)

    @defer.inlineCallbacks
    def start_relay(self, ip: str):
        configuration = Configuration(relay=self.relay_config(ip), search_path=(self.directory,))
        relay = RelayService(configuration, Credentials(self.certs, "relay"), reactor)
        relay.startService()
        self.relays[ip] = relay
        self.test.addCleanup(self.stop_relay, ip)
        yield wait_for(lambda: ip in self.dispatcher.registry.relays, what=f"relay {ip} to connect")
        return relay

    def stop_relay(self, ip: str) -> defer.Deferred:
        relay = self.relays.pop(ip, None)
        if relay is None:
            return defer.succeed(None)
        deferred = relay.stopService()
        return deferred.addCallback(lambda _: wait_for(lambda: ip not in self.dispatcher.registry.relays, what=f"relay {ip} to go"))

    def stop_dispatcher(self) -> defer.Deferred:
        if not self.dispatcher.running:
            return defer.succeed(None)
        return self.dispatcher.stopService()

    def proxy(self) -> defer.Deferred:
        def connected(client: ProxyClient) -> ProxyClient:
            self.test.addCleanup(client.close)
            return client

        return ProxyClient.connect(reactor, self.dispatcher.socket_path).addCallback(connected)


class FakeRelayLink(LineOnlyReceiver):
    """A relay that answers as the test says: 'ok' (with ports), 'error', 'halting' or 'hang'."""

    delimiter = b"\r\n"

    def __init__(self, relay: FakeRelay) -> None:
        self.relay = relay
        self.current: list[str] | None = None

    def connectionMade(self) -> None:
        self.relay.link = self

    def connectionLost(self, reason) -> None:
        if self.relay.link is self:
            self.relay.link = None

    def lineReceived(self, raw: bytes) -> None:
        line = raw.decode()
        if line == "pong":
            self.relay.pongs += 1
            return
        if self.current is None:
            self.current = [line]
            return
        if line:
            self.current.append(line)
            return
        command, self.current = self.current, None
        name, seq = command[0].split()
        self.relay.commands.append((name, command[1:]))
        call_id = next((value[len("call_id: ") :] for value in command if value.startswith("call_id: ")), None)
        if name == "sessions":
            self.sendLine(f"{seq} {json.dumps(self.relay.sessions)}".encode())
        elif name == "summary":
            self.sendLine(f"{seq} {json.dumps({'ip': self.relay.ip, 'status': 'active'})}".encode())
        elif self.relay.mode == "hang":
            return
        elif self.relay.mode in ("error", "halting"):
            self.sendLine(f"{seq} {self.relay.mode}".encode())
        elif name == "remove":
            if call_id in self.relay.calls:
                self.relay.calls.discard(call_id)
                self.sendLine(f"{seq} {json.dumps(self.relay.statistics)}".encode())
            else:
                self.sendLine(f"{seq} error".encode())
        else:
            self.relay.calls.add(call_id)
            media = next((value for value in command if value.startswith("media: ")), None)
            count = len(media.split(",")) if media else 0
            self.sendLine(f"{seq} {UpdateReply(self.relay.ip, (50000,) * count).format()}".encode())


class FakeRelay(protocol.ClientFactory):
    noisy = False

    def __init__(self, ip: str, mode: str = "ok") -> None:
        self.ip = ip
        self.mode = mode
        self.link: FakeRelayLink | None = None
        self.commands: list[tuple[str, list[str]]] = []
        self.sessions: list[dict] = []
        self.calls: set[str] = set()  # call ids it was sent updates for and not removes
        self.statistics = SessionRecord(call_id="x", from_tag="ft", start_time=1.0).as_json()
        self.pongs = 0

    def buildProtocol(self, addr) -> FakeRelayLink:
        return FakeRelayLink(self)

    def connect(self, stack: Stack) -> defer.Deferred:
        self.connector = reactor.connectSSL(
            "127.0.0.1", stack.relay_port, self, ClientContextFactory(Credentials(stack.certs, "relay")), bindAddress=(self.ip, 0)
        )
        stack.test.addCleanup(self.connector.disconnect)
        return wait_for(lambda: self.ip in stack.dispatcher.registry.relays, what=f"fake relay {self.ip}")

    def updates(self) -> list[list[str]]:
        return [headers for name, headers in self.commands if name == "update"]


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# MEDIAPROXY_TEST_INSTALLED=1: the suite tests the installed Debian packages (/usr/bin/media-*,
# Debian's python3 libraries) instead of the checkout; test/run sets it for its second run
INSTALLED = os.environ.get("MEDIAPROXY_TEST_INSTALLED") == "1"


def program_command(name: str) -> list[str]:
    """How to run one of our programs: the installed one, or the checkout's with this interpreter."""
    if INSTALLED:
        return [f"/usr/bin/{name}"]
    return [sys.executable, os.path.join(ROOT, name)]


# Ports for the programs under test come from below the kernel's ephemeral range (32768-60999 on
# Debian): a port the kernel handed out for a probe is free again the moment the probe closes, and
# any outgoing connection can take it before the program binds it (a CI run failed that way).
_PORTS = itertools.cycle(range(26000, 32000))


def free_port(kind=socket.SOCK_STREAM):
    """A loopback port no socket holds now, never the same twice in a row within a run."""
    for _ in range(6000):
        port = next(_PORTS)
        try:
            for family_kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                with socket.socket(socket.AF_INET, family_kind) as probe:
                    probe.bind(("127.0.0.1", port))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port between 26000 and 32000")


class Program:
    """One of our programs run as a real process in the foreground, its output in a file."""

    def __init__(self, name, config_dir, runtime_dir, log_path, prefix=()):
        self.log_path = log_path
        self.log = open(log_path, "w")
        command = [*prefix, *program_command(name), "--no-fork", "--config-dir", config_dir, "--runtime-dir", runtime_dir]
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT)

    def output(self):
        with open(self.log_path) as stream:
            return stream.read()

    def wait_for_log(self, text, timeout=15):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.output():
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not logged; output:\n{self.output()}")

    def stop(self, sig=signal.SIGTERM, timeout=2.0):
        started = time.monotonic()
        self.process.send_signal(sig)
        code = self.process.wait(timeout=timeout)
        self.log.close()
        return code, time.monotonic() - started
