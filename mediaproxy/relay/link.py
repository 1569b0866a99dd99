"""The relay's end of a dispatcher link: commands in, replies/pings/expired out, keepalives."""

from __future__ import annotations

import json

from twisted.internet import protocol
from twisted.internet.interfaces import IHandshakeListener
from zope.interface import implementer

from mediaproxy.net.lineprotocol import BoundedLineReceiver
from mediaproxy.relay import reports
from mediaproxy.relay.sessions import Halting, UpdateError
from mediaproxy.runtime.log import Logger, set_level
from mediaproxy.runtime.timers import Periodic
from mediaproxy.wire import headers as wire_headers
from mediaproxy.wire import relaylink, statistics
from mediaproxy.wire.lines import OverlongLine

log = Logger(namespace="relay.link")

MAX_OUTSTANDING_PINGS = 3


@implementer(IHandshakeListener)
class DispatcherLink(BoundedLineReceiver):
    MAX_LENGTH = relaylink.MAX_COMMAND_LINE

    def __init__(self, connector) -> None:
        self.connector = connector
        self.framer = relaylink.CommandFramer()
        self.outstanding_pings = 0
        self.accepted = False
        self._keepalive = None

    def handshakeCompleted(self) -> None:  # noqa: N802
        relay = self.connector.relay
        if not relay.verifier.accept(self.transport, self.connector.name_to_verify):
            return
        self.accepted = True
        relay = self.connector.relay
        self._keepalive = Periodic("dispatcher keepalive", relay.config.keepalive_interval, self._ping, relay.reactor)
        self._keepalive.startService()
        self.connector.link_up(self)

    def connectionLost(self, reason) -> None:  # noqa: N802
        self.connector.relay.verifier.forget(self.transport)
        if self._keepalive is not None and self._keepalive.running:
            self._keepalive.stopService()
        self.connector.link_down(self, reason)

    def _ping(self) -> None:
        if self.outstanding_pings >= MAX_OUTSTANDING_PINGS:
            log.warn(
                "Dispatcher {dispatcher} missed {count} pongs; reconnecting", dispatcher=self.connector.name, count=self.outstanding_pings
            )
            self.transport.abortConnection()
            return
        self.outstanding_pings += 1
        self.sendLine(b"ping")

    def lineTooLong(self, line: OverlongLine) -> None:  # noqa: N802
        log.error(
            "Dispatcher {dispatcher} sent a line longer than {limit} bytes ({head!r}...); skipped it",
            dispatcher=self.connector.name,
            limit=line.limit,
            head=line.head[:40],
        )
        self.framer.spoil(f"a line longer than {line.limit} bytes")

    def lineReceived(self, raw: bytes) -> None:  # noqa: N802
        if not self.accepted:
            return
        line = raw.decode("utf-8", "surrogateescape")
        if line == "pong" and self.framer.between_commands:
            self.outstanding_pings = max(self.outstanding_pings - 1, 0)
            return
        event = self.framer.line(line)
        if event is None:
            return
        kind, value = event
        if kind == "bad":
            log.error("Dispatcher {dispatcher}: {problem}", dispatcher=self.connector.name, problem=value)
        elif kind == "unknown":
            log.error("Dispatcher {dispatcher} sent an unknown command (seq {seq})", dispatcher=self.connector.name, seq=value)
            self.reply(value, "error")
        else:
            self.reply(value.seq, self.execute(value))

    def execute(self, command: relaylink.RelayCommand) -> str:
        relay = self.connector.relay
        manager = relay.sessions
        headers: dict = {}
        try:
            if command.problem is not None:
                raise UpdateError(command.problem)
            if command.command in wire_headers.COMMANDS:
                try:
                    headers = wire_headers.decode(command.command, command.lines)
                except wire_headers.HeaderError as error:
                    raise UpdateError(str(error)) from None
            if command.command == "update":
                return manager.update(headers, self.connector.key)
            if command.command == "remove":
                statistics = manager.remove(headers)
                relay.session_gone()
                return json.dumps(statistics)
            if command.command == "summary":
                return json.dumps(relay.summary())
            if command.command == "loglevel":
                return self.set_log_level(command.lines)
            return self.sessions_answer(command.lines)
        except Halting:
            return "halting"
        except UpdateError as error:
            log.warn("{command} failed: {error}", command=command.command, error=str(error))
            return "error"
        except Exception:  # noqa: BLE001 - a bug in one call must not take the relay down
            log.failure("{command} for call {call_id} failed", command=command.command, call_id=headers.get("call_id"))
            return "error"

    def set_log_level(self, lines: list[str]) -> str:
        """``loglevel`` with ``level: NAME``: the relay's log level, as the dispatcher's management asks."""
        values = dict(line.partition(": ")[::2] for line in lines)
        try:
            level = set_level(values.get(relaylink.LEVEL_HEADER, ""))
        except ValueError as error:
            raise UpdateError(str(error)) from None
        log.info("Log level is now {name} (asked by dispatcher {dispatcher})", name=level, dispatcher=self.connector.name)
        return level

    def sessions_answer(self, lines: list[str]) -> str:
        """All sessions at once for a dispatcher that asks so (the original), else the page of
        about PAGE_BYTES that starts at the asked position (of one call's sessions, when it names
        one), marking this dispatcher's own sessions."""
        try:
            request = relaylink.parse_sessions_request(lines)
        except ValueError as error:
            raise UpdateError(str(error)) from None
        manager = self.connector.relay.sessions
        self.connector.relay.listed()
        if request.position is None:
            return json.dumps(reports.statistics(manager))
        page: list[str] = []
        size = 0
        for session in manager.registry.listing(request.position, request.call_id):
            if size >= statistics.PAGE_BYTES:
                return statistics.format_page(page, session.serial)
            record = reports.session_statistics(manager, session)
            if session.dispatcher == self.connector.key:
                record.yours = True
            page.append(json.dumps(record.as_json()))
            size += len(page[-1])
        return statistics.format_page(page, None)

    def reply(self, seq: str, payload: str) -> None:
        self.transport.write(relaylink.format_reply(seq, payload))

    def send_expired(self, statistics: dict) -> None:
        self.sendLine(b"expired " + json.dumps(statistics).encode())


class LinkFactory(protocol.Factory):
    noisy = False

    def __init__(self, connector) -> None:
        self.connector = connector

    def buildProtocol(self, addr) -> DispatcherLink:  # noqa: N802
        return DispatcherLink(self.connector)
