"""Management interface plugin: ``summary``, ``sessions``, ``counters``, ``version``, ``quit`` over TLS or TCP.

A client is held to: one command running at a time, at most ``MAX_BACKLOG`` waiting (past that its
socket is not read), no command started while the transport says its unread output is full, and
``management_idle_timeout`` seconds without a command or with its output stuck, then it is closed.
"""

from __future__ import annotations

import json

from twisted.internet import defer, protocol
from twisted.internet.interfaces import IHandshakeListener
from twisted.plugin import IPlugin
from twisted.protocols.policies import TimeoutMixin
from zope.interface import implementer, provider

from mediaproxy import __version__, datatypes
from mediaproxy.dispatcher.relays import RelayError
from mediaproxy.net.ratelimit import Refusals
from mediaproxy.net.tls import ContextFactory, PeerVerifier
from mediaproxy.plugin import IDispatcherPlugin, IDispatcherPluginFactory, PluginBase
from mediaproxy.runtime.log import Logger, level_name, set_level
from mediaproxy.wire.lines import LineSplitter, OverlongLine
from mediaproxy.wire.management import CONTROL

log = Logger(namespace="management")


def _dump(value: object) -> str:
    return json.dumps(value)


MAX_BACKLOG = 16
QUIT = ("quit", "exit")


@implementer(IHandshakeListener)
class ManagementProtocol(protocol.Protocol, TimeoutMixin):
    delimiter = b"\r\n"
    MAX_LENGTH = 1024

    def __init__(self, plugin: ManagementPlugin) -> None:
        self.plugin = plugin
        # the same lines whatever the segmentation: a line of MAX_LENGTH bytes is taken, one byte
        # more is refused, however its CR and LF arrive
        self.lines = LineSplitter(self.MAX_LENGTH)
        self.closing = False  # closed by us: nothing more is answered
        self.quitting = False  # quit read: nothing after it is read (it closes once what came before is answered)
        self.accepted = plugin.verifier is None
        self.busy = False
        self.output_full = False  # the transport asked us to stop producing
        self.reading = True
        self.backlog: list[str] = []
        self.callLater = plugin.context.reactor.callLater

    def handshakeCompleted(self) -> None:  # noqa: N802
        self.accepted = self.plugin.verifier.accept(self.transport)
        if self.accepted:
            self._drain_backlog()

    def connectionMade(self) -> None:  # noqa: N802
        self.plugin.connections.add(self)
        self.transport.registerProducer(self, True)
        self.setTimeout(self.plugin.config.management_idle_timeout)

    def connectionLost(self, reason) -> None:  # noqa: N802
        self.setTimeout(None)
        self.plugin.connections.discard(self)
        if self.plugin.verifier is not None:
            self.plugin.verifier.forget(self.transport)

    def timeoutConnection(self) -> None:  # noqa: N802
        peer = self.transport.getPeer().host
        stuck = "its output unread" if self.output_full else "no command"
        self.plugin.refusals.refuse(
            "management_timeout", peer, log, "Management client {peer}: {stuck} for {timeout}s; closing", stuck=stuck, timeout=self.timeOut
        )
        self.transport.abortConnection()

    def close(self) -> None:
        self.closing = True
        self.backlog.clear()
        # a transport with a producer registered would wait for it before closing
        self.transport.unregisterProducer()
        self.transport.loseConnection()

    def sendLine(self, line: bytes) -> None:  # noqa: N802
        self.transport.write(line + self.delimiter)

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if self.closing or self.quitting:
            return
        for line in self.lines.feed(data):
            if isinstance(line, OverlongLine):
                self.lineLengthExceeded(line.head)
                return
            self.lineReceived(line)
            if self.closing or self.quitting:
                return
        if self.lines.discarding:
            # refused as soon as it is over the limit, not when (if ever) its LF comes
            self.lineLengthExceeded(b"")

    # the transport's producer interface: it calls these as its unread output grows and drains

    def pauseProducing(self) -> None:  # noqa: N802
        self.output_full = True

    def resumeProducing(self) -> None:  # noqa: N802
        self.output_full = False
        self._drain_backlog()

    def stopProducing(self) -> None:  # noqa: N802
        self.backlog.clear()

    def lineLengthExceeded(self, line: bytes) -> None:  # noqa: N802
        log.warn(
            "Management client {peer} sent a line longer than {limit} bytes; closing",
            peer=self.transport.getPeer().host,
            limit=self.MAX_LENGTH,
        )
        self.sendLine(b"error")
        self.close()

    def lineReceived(self, raw: bytes) -> None:  # noqa: N802 - only dataReceived calls it, and not once closing or quitting
        self.resetTimeout()
        command = raw.decode("utf-8", "replace").strip()
        self.quitting = command in QUIT
        self.backlog.append(command)
        if len(self.backlog) >= MAX_BACKLOG and self.reading:
            self.reading = False
            self.transport.pauseProducing()  # its commands wait in its own socket, not in our memory
        if self.accepted:
            self._drain_backlog()

    def _drain_backlog(self) -> None:
        while self.backlog and not self.busy and not self.output_full and self.connected:
            command = self.backlog.pop(0)
            if command in QUIT:
                self.close()
                return
            self.busy = True
            defer.maybeDeferred(self._run, command).addErrback(self._failed, command).addCallback(self._reply)
        if not self.reading and len(self.backlog) < MAX_BACKLOG // 2 and self.connected:
            self.reading = True
            self.transport.resumeProducing()

    def _run(self, command: str):
        dispatcher = self.plugin.dispatcher
        if command == "summary":
            return dispatcher.relay_summaries().addCallback(_dump)
        if command == "sessions":
            return dispatcher.relay_sessions().addCallback(lambda records: _dump([record.as_json() for record in records]))
        if command == "version":
            return __version__
        if command == "accounting":
            return _dump(dispatcher.accounting_status())
        if command == "counters":
            return dispatcher.relay_summaries().addCallback(self._counters)
        name, _, argument = command.partition(" ")
        if name in CONTROL:
            return self._control(name, argument.split())
        log.info("Unknown management command {command!r}", command=command[:80])
        return "error"

    def _control(self, name: str, arguments: list[str]):  # the answer, or a Deferred of it
        """terminate CALL_ID | loglevel LEVEL [RELAY_IP] | drain RELAY_IP | undrain RELAY_IP; each
        answers a JSON object, or error with one log line saying why."""
        peer = self.transport.getPeer().host
        if not CONTROL[name].accepts(arguments):
            log.warn("Management client {peer}: {name} takes {usage}", peer=peer, name=name, usage=CONTROL[name].usage)
            return "error"
        dispatcher = self.plugin.dispatcher
        try:
            if name == "terminate":
                (call_id,) = arguments
                log.info("Management client {peer} terminates call {call_id}", peer=peer, call_id=call_id)
                done = dispatcher.terminate(call_id).addCallback(lambda outcome: _dump({"call_id": call_id, **outcome}))
                return done.addErrback(self._refused, name, peer)
            if name == "loglevel":
                if len(arguments) == 1:
                    level = set_level(arguments[0])
                    log.info("Log level is now {name} (asked by management client {peer})", name=level, peer=peer)
                    return _dump({"dispatcher": level})
                level, relay = level_name(arguments[0]), datatypes.ipv4_address(arguments[1])
                done = dispatcher.relay_log_level(relay, level).addCallback(lambda answer: _dump({"relay": relay, "level": answer}))
                return done.addErrback(self._refused, name, peer)
            relay = datatypes.ipv4_address(arguments[0])
            dispatcher.drain(relay, name == "drain")
            return _dump({"relay": relay, "drained": name == "drain"})
        except ValueError as error:
            log.warn("Management client {peer}: {name} refused: {error}", peer=peer, name=name, error=error)
            return "error"

    def _refused(self, failure, name: str, peer: str) -> str:
        failure.trap(ValueError, RelayError)
        log.warn("Management client {peer}: {name} refused: {error}", peer=peer, name=name, error=failure.getErrorMessage())
        return "error"

    def _counters(self, summaries: list) -> str:
        relays = {item.get("ip", "?"): item.get("refused", {}) for item in summaries}
        return _dump({"dispatcher": self.plugin.refusals.snapshot(), "relays": relays})

    def _failed(self, failure, command: str) -> str:
        log.failure("Management command {command} failed", failure, command=command)
        return "error"

    def _reply(self, line: str) -> None:
        self.busy = False
        if self.transport is not None and self.connected and not self.closing:
            self.resetTimeout()
            self.sendLine(line.encode())
            self._drain_backlog()


class ManagementFactory(protocol.Factory):
    noisy = False

    def __init__(self, plugin: ManagementPlugin) -> None:
        self.plugin = plugin

    def buildProtocol(self, addr) -> ManagementProtocol:  # noqa: N802
        return ManagementProtocol(self.plugin)


@implementer(IDispatcherPlugin)
class ManagementPlugin(PluginBase):
    name = "management"

    def __init__(self, config, context) -> None:
        self.config = config.dispatcher
        self.context = context
        self.dispatcher = context.dispatcher
        self.connections: set = set()
        self.verifier = None
        self.refusals = context.refusals or Refusals(context.reactor)
        if self.config.management_use_tls:
            self.verifier = PeerVerifier(
                context.credentials,
                self.config.management_passport,
                config.tls.verify_interval,
                context.reactor,
                "management client",
                self.refusals,
            )
        self.port = None

    def start(self) -> None:
        address = self.config.listen_management
        factory = ManagementFactory(self)
        tls = ContextFactory(self.context.credentials) if self.verifier is not None else None
        self.port = self.context.listen(factory, "management", address, tls)
        if self.verifier is not None:
            self.verifier.start()
        log.info("Management interface listening on {address} ({kind})", address=str(address), kind="TLS" if self.verifier else "plain TCP")

    def stop(self) -> defer.Deferred | None:
        if self.verifier is not None:
            self.verifier.stop()
        for connection in list(self.connections):
            connection.close()
        if self.port is not None:
            return defer.maybeDeferred(self.port.stopListening)
        return None


@provider(IPlugin, IDispatcherPluginFactory)
class ManagementPluginFactory:
    name = "management"

    @staticmethod
    def create(config, context) -> ManagementPlugin:
        return ManagementPlugin(config, context)
