"""Management interface plugin: ``summary``, ``sessions``, ``version``, ``quit`` over TLS or TCP."""

from __future__ import annotations

import json

from twisted.internet import defer, protocol
from twisted.internet.interfaces import IHandshakeListener
from twisted.logger import Logger
from twisted.plugin import IPlugin
from twisted.protocols.basic import LineOnlyReceiver
from zope.interface import implementer, provider

from mediaproxy import __version__
from mediaproxy.plugin import IDispatcherPlugin, IDispatcherPluginFactory, PluginBase
from mediaproxy.tls import ContextFactory, PeerVerifier

log = Logger(namespace="management")


def _dump(value: object) -> str:
    return json.dumps(value)


@implementer(IHandshakeListener)
class ManagementProtocol(LineOnlyReceiver):
    delimiter = b"\r\n"
    MAX_LENGTH = 1024

    def __init__(self, plugin: ManagementPlugin) -> None:
        self.plugin = plugin
        self.accepted = plugin.verifier is None
        self.busy = False
        self.backlog: list[str] = []

    def handshakeCompleted(self) -> None:  # noqa: N802
        self.accepted = self.plugin.verifier.accept(self.transport)
        if self.accepted:
            self._drain_backlog()

    def connectionMade(self) -> None:  # noqa: N802
        self.plugin.connections.add(self)

    def connectionLost(self, reason) -> None:  # noqa: N802, ANN001
        self.plugin.connections.discard(self)
        if self.plugin.verifier is not None:
            self.plugin.verifier.forget(self.transport)

    def lineLengthExceeded(self, line: bytes) -> None:  # noqa: N802
        log.warn(
            "Management client {peer} sent a line longer than {limit} bytes; closing",
            peer=self.transport.getPeer().host,
            limit=self.MAX_LENGTH,
        )
        self.sendLine(b"error")
        self.transport.loseConnection()

    def lineReceived(self, raw: bytes) -> None:  # noqa: N802
        self.backlog.append(raw.decode("utf-8", "replace").strip())
        if self.accepted:
            self._drain_backlog()

    def _drain_backlog(self) -> None:
        while self.backlog and not self.busy:
            command = self.backlog.pop(0)
            if command in ("quit", "exit"):
                self.transport.loseConnection()
                self.backlog.clear()
                return
            self.busy = True
            defer.maybeDeferred(self._run, command).addErrback(self._failed, command).addCallback(self._reply)

    def _run(self, command: str):  # noqa: ANN202
        dispatcher = self.plugin.dispatcher
        if command == "summary":
            return dispatcher.relay_summaries().addCallback(_dump)
        if command == "sessions":
            return dispatcher.relay_sessions().addCallback(_dump)
        if command == "version":
            return __version__
        if command == "accounting":
            return _dump(dispatcher.plugins.accounting_status())
        log.info("Unknown management command {command!r}", command=command[:80])
        return "error"

    def _failed(self, failure, command: str) -> str:  # noqa: ANN001
        log.failure("Management command {command} failed", failure, command=command)
        return "error"

    def _reply(self, line: str) -> None:
        self.busy = False
        if self.transport is not None and self.connected:
            self.sendLine(line.encode())
            self._drain_backlog()


class ManagementFactory(protocol.Factory):
    noisy = False

    def __init__(self, plugin: ManagementPlugin) -> None:
        self.plugin = plugin

    def buildProtocol(self, addr) -> ManagementProtocol:  # noqa: N802, ANN001
        return ManagementProtocol(self.plugin)


@implementer(IDispatcherPlugin)
class ManagementPlugin(PluginBase):
    name = "management"

    def __init__(self, config, context) -> None:  # noqa: ANN001
        self.config = config.dispatcher
        self.context = context
        self.dispatcher = context.dispatcher
        self.connections: set = set()
        self.verifier = None
        if self.config.management_use_tls:
            self.verifier = PeerVerifier(
                context.credentials, self.config.management_passport, config.tls.verify_interval, context.reactor, "management client"
            )
        self.port = None

    def start(self) -> None:
        address = self.config.listen_management
        factory = ManagementFactory(self)
        reactor = self.context.reactor
        if self.verifier is not None:
            self.port = reactor.listenSSL(address.port, factory, ContextFactory(self.context.credentials), interface=address.host)
            self.verifier.start()
        else:
            self.port = reactor.listenTCP(address.port, factory, interface=address.host)
        log.info("Management interface listening on {address} ({kind})", address=str(address), kind="TLS" if self.verifier else "plain TCP")

    def stop(self) -> defer.Deferred | None:
        if self.verifier is not None:
            self.verifier.stop()
        for connection in list(self.connections):
            connection.transport.loseConnection()
        if self.port is not None:
            return defer.maybeDeferred(self.port.stopListening)
        return None


@provider(IPlugin, IDispatcherPluginFactory)
class ManagementPluginFactory:
    name = "management"

    @staticmethod
    def create(config, context) -> ManagementPlugin:  # noqa: ANN001
        return ManagementPlugin(config, context)
