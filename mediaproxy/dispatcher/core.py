"""Routing proxy requests to relays, and what happens when calls end or relays come and go."""

from __future__ import annotations

import os

from twisted.internet import defer, task
from twisted.logger import Logger

from mediaproxy.dispatcher.relays import RelayError, RelayRegistry
from mediaproxy.dispatcher.sessions import STATE_FILE, CallEntry, CallTable
from mediaproxy.plugin import PluginSet
from mediaproxy.wire import statistics
from mediaproxy.wire.control import ProxyRequest

log = Logger(namespace="dispatcher")

UNSELECTED_ICE = "unselected ICE candidate"
EXPIRED_CHECK_INTERVAL = 600
STATE_SAVE_INTERVAL = 5


class Dispatcher:
    def __init__(self, clock, registry: RelayRegistry, plugins: PluginSet, runtime_dir: str, config) -> None:  # noqa: ANN001
        self.clock = clock
        self.registry = registry
        registry.listener = self
        self.plugins = plugins
        self.config = config
        self.table = CallTable()
        self.state_path = os.path.join(runtime_dir, STATE_FILE)
        self.dead_relay_timers: dict[str, object] = {}
        self.stopped = False
        self._loops = [
            self._loop(self.cleanup_expired_sessions, EXPIRED_CHECK_INTERVAL),
            self._loop(self.save_state_if_changed, STATE_SAVE_INTERVAL),
        ]

    def _loop(self, function, interval: int) -> tuple[task.LoopingCall, int]:  # noqa: ANN001
        loop = task.LoopingCall(function)
        loop.clock = self.clock
        return loop, interval

    # -- life cycle

    def start(self) -> None:
        restored = self.table.load(self.state_path)
        if restored:
            log.info("Restored {count} calls from {path}", count=restored, path=self.state_path)
        for ip in self.table.relay_ips():
            if self.registry.get(ip) is None:
                self._start_dead_relay_timer(ip)
        for loop, interval in self._loops:
            loop.start(interval, now=False)

    def stop(self) -> None:
        self.stopped = True
        for loop, _ in self._loops:
            if loop.running:
                loop.stop()
        for timer in self.dead_relay_timers.values():
            if timer.active():
                timer.cancel()
        self.dead_relay_timers.clear()
        self.save_state()

    def save_state(self) -> None:
        try:
            self.table.save(self.state_path)
        except OSError as error:
            log.error("Cannot save the call table to {path}: {error}", path=self.state_path, error=error)

    def save_state_if_changed(self) -> None:
        if self.table.dirty:
            self.save_state()

    # -- proxy requests

    def handle(self, request: ProxyRequest) -> defer.Deferred:
        """Route one proxy request; the Deferred fires with the one-line reply (never fails)."""
        return defer.maybeDeferred(self._route, request).addErrback(self._unexpected, request)

    def _unexpected(self, failure, request: ProxyRequest) -> str:  # noqa: ANN001
        log.failure(
            "Unexpected failure handling {command} for {call_id}", failure, command=request.command, call_id=request.headers.get("call_id")
        )
        return "error"

    def _route(self, request: ProxyRequest):  # noqa: ANN202
        call_id = request.call_id
        entry = self.table.get(call_id)
        if entry is not None and entry.expire_time is None:
            return self._to_known_relay(request, entry)
        if request.command == "update":
            return self._to_new_relay(request)
        if entry is not None and request.command == "remove":
            self.table.pop(call_id)
            log.info("Call {call_id} removed after its dialog was ended", call_id=call_id)
            return "removed"
        log.warn("{command} for unknown call {call_id}", command=request.command, call_id=call_id)
        return "error"

    @defer.inlineCallbacks
    def _to_known_relay(self, request: ProxyRequest, entry: CallEntry):  # noqa: ANN202
        link = self.registry.get(entry.relay_ip)
        if link is None:
            log.warn(
                "{command} for call {call_id}: its relay {ip} is not connected",
                command=request.command,
                call_id=request.call_id,
                ip=entry.relay_ip,
            )
            return "error"
        try:
            payload = yield link.send_command(request.command, request.encode_headers())
        except RelayError as error:
            log.warn(
                "Relay {ip} failed {command} for call {call_id}: {error}",
                ip=entry.relay_ip,
                command=request.command,
                call_id=request.call_id,
                error=error,
            )
            return "error"
        if request.command == "remove":
            return self._removed(request.call_id, entry, payload)
        if entry.dialog_id is None and request.headers.get("dialog_id"):
            entry.dialog_id = request.headers["dialog_id"]
            self.table.dirty = True
        return self._update_reply(request, payload, entry.relay_ip)

    @defer.inlineCallbacks
    def _to_new_relay(self, request: ProxyRequest):  # noqa: ANN202
        for link in self.registry.candidates(request.headers.get("media_relay")):
            try:
                payload = yield link.send_command(request.command, request.encode_headers())
            except RelayError as error:
                log.info(
                    "Relay {ip} did not take call {call_id} ({error}); trying the next one",
                    ip=link.ip,
                    call_id=request.call_id,
                    error=error,
                )
                continue
            self.table.set(request.call_id, CallEntry(link.ip, request.headers.get("dialog_id")))
            return self._update_reply(request, payload, link.ip)
        log.error("No suitable relay found for call {call_id}", call_id=request.call_id)
        return "error"

    def _update_reply(self, request: ProxyRequest, payload: str, relay_ip: str) -> str:
        """Make sure the proxy never gets a reply it would write into the SDP wrongly."""
        tokens = payload.split()
        media = request.headers.get("media")
        if media is None:
            return payload if len(tokens) > 1 else relay_ip
        expected = len(media)
        if len(tokens) != expected + 1:
            log.error(
                "Relay {ip} answered {payload!r} to an update with {count} media streams for call {call_id}; answering error",
                ip=relay_ip,
                payload=payload[:100],
                count=expected,
                call_id=request.call_id,
            )
            return "error"
        return payload

    def _removed(self, call_id: str, entry: CallEntry, payload: str) -> str:
        self.table.pop(call_id)
        try:
            record = statistics.parse_record(payload)
        except ValueError as error:
            log.error("Relay {ip} sent undecodable statistics for call {call_id}: {error}", ip=entry.relay_ip, call_id=call_id, error=error)
            return "removed"
        record["dialog_id"] = entry.dialog_id
        record["timed_out"] = False
        self._account(record)
        return "removed"

    def _account(self, record: dict) -> None:
        if record.get("start_time") is not None:
            self.plugins.session_ended(record)

    # -- relay events

    def relay_up(self, ip: str) -> None:
        timer = self.dead_relay_timers.pop(ip, None)
        if timer is not None and timer.active():
            timer.cancel()
        link = self.registry.get(ip)
        link.send_command("sessions").addCallbacks(self._purge, self._purge_failed, callbackArgs=(ip,), errbackArgs=(ip,))

    def _purge(self, payload: str, ip: str) -> None:
        try:
            present = {item["call_id"] for item in statistics.parse_sessions(payload)}
        except ValueError as error:
            log.error("Relay {ip} sent an undecodable sessions list: {error}", ip=ip, error=error)
            return
        for call_id, entry in self.table.of_relay(ip):
            if entry.expire_time is None and call_id not in present:
                log.warn("Call {call_id} is no longer on relay {ip}; its statistics are probably lost", call_id=call_id, ip=ip)
                self.table.pop(call_id)
                if entry.dialog_id:
                    self.plugins.end_dialog(call_id, entry.dialog_id)

    def _purge_failed(self, failure, ip: str) -> None:  # noqa: ANN001
        log.warn("Could not get the sessions of relay {ip}: {error}", ip=ip, error=failure.getErrorMessage())

    def relay_down(self, ip: str) -> None:
        if not self.stopped:
            self._start_dead_relay_timer(ip)

    def _start_dead_relay_timer(self, ip: str) -> None:
        if ip not in self.dead_relay_timers:
            self.dead_relay_timers[ip] = self.clock.callLater(self.config.cleanup_dead_relays_after, self._forget_dead_relay, ip)

    def _forget_dead_relay(self, ip: str) -> None:
        self.dead_relay_timers.pop(ip, None)
        calls = self.table.of_relay(ip)
        for call_id, _ in calls:
            self.table.pop(call_id)
        if calls:
            log.warn(
                "Relay {ip} stayed away for {after}s; forgot its {count} calls",
                ip=ip,
                after=self.config.cleanup_dead_relays_after,
                count=len(calls),
            )

    def expired(self, ip: str, text: str) -> None:
        try:
            record = statistics.parse_record(text)
        except ValueError as error:
            log.error("Relay {ip} sent an undecodable expired message: {error}; skipped it", ip=ip, error=error)
            return
        call_id = record["call_id"]
        all_streams_ice = all(stream.get("status") == UNSELECTED_ICE for stream in record.get("streams", []))
        entry = self.table.get(call_id)
        if entry is None:
            log.error("Relay {ip} reported unknown call {call_id} as expired", ip=ip, call_id=call_id)
            return
        if entry.relay_ip != ip:
            log.info(
                "Ignoring expiry of call {call_id} from relay {ip}: the call is on {owner}", call_id=call_id, ip=ip, owner=entry.relay_ip
            )
            return
        record["all_streams_ice"] = all_streams_ice
        record["timed_out"] = not all_streams_ice
        record["dialog_id"] = entry.dialog_id
        log.info("Call {call_id} expired on relay {ip}", call_id=call_id, ip=ip)
        self._account(record)
        if entry.dialog_id and record.get("start_time") is not None and not all_streams_ice:
            self.table.mark_expired(call_id, self.clock.seconds())
            self.plugins.end_dialog(call_id, entry.dialog_id)
        else:
            self.table.pop(call_id)

    def cleanup_expired_sessions(self) -> None:
        deadline = self.clock.seconds() - self.config.cleanup_expired_sessions_after
        stale = self.table.expired_before(deadline)
        for call_id in stale:
            self.table.pop(call_id)
        if stale:
            log.warn(
                "Removed {count} calls whose dialogs were ended more than {after}s ago without a remove",
                count=len(stale),
                after=self.config.cleanup_expired_sessions_after,
            )

    # -- management

    def _gather(self, command: str, parse) -> defer.Deferred:  # noqa: ANN001
        links = list(self.registry.relays.values())
        deferreds = [link.send_command(command).addCallback(parse) for link in links]
        return defer.DeferredList(deferreds, consumeErrors=True).addCallback(
            lambda results: [(link.ip, ok, value) for link, (ok, value) in zip(links, results)]
        )

    def relay_summaries(self) -> defer.Deferred:
        return self._gather("summary", statistics.parse_summary).addCallback(
            lambda results: [value if ok and isinstance(value, dict) else {"status": "error", "ip": ip} for ip, ok, value in results]
        )

    def relay_sessions(self) -> defer.Deferred:
        def concatenate(results: list) -> list:
            sessions = []
            for _ip, ok, value in results:
                if ok:
                    sessions.extend(value)
            return sessions

        return self._gather("sessions", statistics.parse_sessions).addCallback(concatenate)
