"""Routing proxy requests to relays, and what happens when calls end or relays come and go."""

from __future__ import annotations

import time

from twisted.application import service
from twisted.internet import defer

from mediaproxy.dispatcher.endings import Endings
from mediaproxy.dispatcher.lastknown import LastKnown
from mediaproxy.dispatcher.pulls import StatisticsPulls
from mediaproxy.dispatcher.relays import RelayDisconnected, RelayError, RelayLink, RelayRegistry, RelayTimeout
from mediaproxy.dispatcher.sessions import ANSWERED, REOFFERED, SET_UP, TERMINATED, CallEntry, CallTable, call_table_file
from mediaproxy.dispatcher.stats import RequestStats
from mediaproxy.plugin import PluginSet
from mediaproxy.runtime.log import Logger
from mediaproxy.runtime.timers import Periodic
from mediaproxy.wire import statistics
from mediaproxy.wire.control import ProxyRequest, encode_lines
from mediaproxy.wire.update import parse_update_reply

log = Logger(namespace="dispatcher")

EXPIRED_CHECK_INTERVAL = 600


def note_phase(request: ProxyRequest, entry: CallEntry) -> None:
    """One line for the call's answer, one for each re-INVITE's (a 183's SDP and the 200's are one answer)."""
    if request.headers.get("media") is None:
        return
    if request.headers.get("type") == "request":
        if entry.phase == ANSWERED:
            entry.phase = REOFFERED
    elif entry.phase == SET_UP:
        entry.phase = ANSWERED
        log.info("Call {call_id} answered (relay {ip})", call_id=request.call_id, ip=entry.relay_ip)
    elif entry.phase == REOFFERED:
        entry.phase = ANSWERED
        log.info("Call {call_id}: re-INVITE answered (relay {ip})", call_id=request.call_id, ip=entry.relay_ip)


def _listing_failed(failure, ip: str) -> None:  # a Failure
    log.warn("Could not get the sessions of relay {ip}: {error}", ip=ip, error=failure.getErrorMessage())


class Dispatcher:
    def __init__(self, clock, registry: RelayRegistry, plugins: PluginSet, runtime_dir: str, config) -> None:
        self.clock = clock
        self.registry = registry
        registry.listener = self
        self.plugins = plugins
        self.config = config
        self.table = CallTable()
        self.state_file = call_table_file(runtime_dir, clock)
        self.last_known = LastKnown()  # what a call's record says when its relay is lost for good
        self.stopped = False
        self.stats = RequestStats()
        self.timers = service.MultiService()
        self.endings = Endings(clock, self.table, plugins, self.last_known, config)
        Periodic("expired call checks", EXPIRED_CHECK_INTERVAL, self.endings.cleanup_expired, clock).setServiceParent(self.timers)
        self.pulls = StatisticsPulls(clock, registry, self.table, self.last_known)
        if config.statistics_pull_interval:
            Periodic("statistics pulls", config.statistics_pull_interval, self.pulls.pull_all, clock).setServiceParent(self.timers)

    # -- life cycle

    def start(self) -> None:
        restored = self.table.restore(self.state_file)
        if restored:
            log.info("Restored {count} calls from {path}", count=restored, path=self.state_file.path)
        for ip in self.table.relay_ips():
            if self.registry.get(ip) is None:
                self.endings.relay_away(ip)
        self.timers.startService()

    def stop(self) -> None:
        self.stopped = True
        self.timers.stopService()
        self.endings.stop()
        self.table.close()

    # -- proxy requests

    def handle(self, request: ProxyRequest) -> defer.Deferred:
        """Route one proxy request; the Deferred fires with the one-line reply (never fails)."""
        log.debug(
            "Proxy request {command} for {call_id}: {headers}", command=request.command, call_id=request.call_id, headers=request.headers
        )
        started = time.perf_counter()
        handled = defer.maybeDeferred(self._route, request).addErrback(self._unexpected, request)
        return handled.addCallback(self._counted, request.command, started)

    def _counted(self, reply: str, command: str, started: float) -> str:
        seconds = time.perf_counter() - started
        self.stats.record(command, reply, seconds)
        log.debug("Proxy {command} answered {reply!r} in {ms:.2f} ms", command=command, reply=reply, ms=seconds * 1000)
        return reply

    def _unexpected(self, failure, request: ProxyRequest) -> str:
        log.failure(
            "Unexpected failure handling {command} for {call_id}", failure, command=request.command, call_id=request.headers.get("call_id")
        )
        return "error"

    def _route(self, request: ProxyRequest):
        call_id = request.call_id
        entry = self.table.get(call_id)
        if entry is not None and entry.removal is not None:
            if request.command == "remove":
                return "removed"  # a retransmission: the first one is on its way
            log.warn("update for call {call_id}, which is being removed", call_id=call_id)
            return "error"
        if entry is not None and entry.expire_time is None:
            if request.command == "remove":
                return self._remove(request, entry)
            note_phase(request, entry)
            return self._to_known_relay(request, entry)
        if request.command == "update":
            if request.headers.get("to_tag") is not None:
                # in a dialog: perhaps another proxy's dispatcher set the call up on a relay we share
                return self._locate_and_update(request)
            return self._to_new_relay(request)
        if entry is not None:
            self.table.pop(call_id)
            log.info("Call {call_id} removed after its dialog was ended", call_id=call_id)
            return "removed"
        return self._locate_and_remove(request)

    @defer.inlineCallbacks
    def _to_known_relay(self, request: ProxyRequest, entry: CallEntry):
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
        if entry.dialog_id is None and request.headers.get("dialog_id") and self.table.get(request.call_id) is entry:
            entry.dialog_id = request.headers["dialog_id"]
            self.table.set(request.call_id, entry)
        return self._update_reply(request, payload, entry.relay_ip)

    @defer.inlineCallbacks
    def _to_new_relay(self, request: ProxyRequest):
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
            self.table.set(request.call_id, CallEntry(link.ip, request.headers.get("dialog_id"), report=self.last_known.number))
            reply = self._update_reply(request, payload, link.ip)
            if reply != "error":
                log.info("Call {call_id} set up on relay {ip}", call_id=request.call_id, ip=link.ip)
            return reply
        log.error("No suitable relay found for call {call_id}", call_id=request.call_id)
        return "error"

    @defer.inlineCallbacks
    def _locate_and_update(self, request: ProxyRequest):
        """An in-dialog update for a call this dispatcher does not know (a re-INVITE or an answer
        that took another proxy of a cluster): it goes to the relay that has the call. The call
        stays its creator's (expiry and accounting); only a call no relay has gets a new relay."""
        link = yield self._relay_with_call(request)
        if link is None:
            return (yield self._to_new_relay(request))
        log.info(
            "Call {call_id}, unknown here, is on relay {ip}; {kind} sent there",
            call_id=request.call_id,
            ip=link.ip,
            kind=request.headers["type"],
        )
        try:
            payload = yield link.send_command(request.command, request.encode_headers())
        except RelayError as error:
            log.warn("Relay {ip} failed update for call {call_id}: {error}", ip=link.ip, call_id=request.call_id, error=error)
            return "error"
        return self._update_reply(request, payload, link.ip)

    def _relay_with_call(self, request: ProxyRequest) -> defer.Deferred:
        """The first connected relay found to have the call under one of the request's tags, or
        None once all have answered (a relay that fails to answer counts as not having it)."""
        links = self.registry.accepted()
        found: defer.Deferred = defer.Deferred()
        tags = {request.headers["from_tag"], request.headers.get("to_tag")}
        waiting = len(links)

        def answered(listing: statistics.SessionList | None, link: RelayLink) -> None:
            nonlocal waiting
            waiting -= 1
            if found.called:
                return
            if listing is not None and any(record.from_tag in tags for record in listing.records):
                found.callback(link)
            elif waiting == 0:
                found.callback(None)

        if not links:
            found.callback(None)
        for link in links:
            link.fetch_sessions(request.call_id).addErrback(lambda _: None).addCallback(answered, link)
        return found

    def _update_reply(self, request: ProxyRequest, payload: str, relay_ip: str) -> str:
        """Make sure the proxy never gets a reply it would write into the SDP wrongly."""
        try:
            reply = parse_update_reply(payload)
        except ValueError as error:
            log.error(
                "Relay {ip} answered an update for call {call_id} with {error}; answering error",
                ip=relay_ip,
                call_id=request.call_id,
                error=error,
            )
            return "error"
        media = request.headers.get("media")
        if media is None:
            return reply.format() if reply.ports else relay_ip
        expected = len(media)
        if len(reply.ports) != expected:
            log.error(
                "Relay {ip} answered {payload!r} to an update with {count} media streams for call {call_id}; answering error",
                ip=relay_ip,
                payload=payload[:100],
                count=expected,
                call_id=request.call_id,
            )
            return "error"
        return reply.format()

    # -- removing: answered at once (the proxy ignores the answer's body, and a proxy that
    # waits for it may lose the BYE it is about to send); the relay's statistics follow

    def _remove(self, request: ProxyRequest, entry: CallEntry) -> str:
        entry.removal = list(request.lines)
        self.table.set(request.call_id, entry)
        self._send_remove(request.call_id, entry)
        return "removed"

    def terminate_session(self, call_id: str, entry: CallEntry, removal: list[str]) -> None:
        """Remove the call's session on its relay ourselves for the operator (no proxy asked),
        accounted as "terminated"; ``removal`` is the remove's header lines."""
        entry.removal = removal
        entry.phase = TERMINATED
        self.table.set(call_id, entry)
        self._send_remove(call_id, entry)

    def _send_remove(self, call_id: str, entry: CallEntry) -> None:
        link = self.registry.get(entry.relay_ip)
        if link is None:
            log.info("Call {call_id} removed; its relay {ip} is away and is told when it is back", call_id=call_id, ip=entry.relay_ip)
            return
        link.send_command("remove", encode_lines(entry.removal)).addCallbacks(
            self._removed, self._remove_failed, callbackArgs=(call_id, entry), errbackArgs=(call_id, entry)
        )

    def _removed(self, payload: str, call_id: str, entry: CallEntry) -> None:
        if self.table.get(call_id) is not entry:
            return  # accounted meanwhile (its expiry crossed the remove)
        self.table.pop(call_id)
        self.endings.account_removed(payload, call_id, entry)

    def _remove_failed(self, failure, call_id: str, entry: CallEntry) -> None:
        if self.table.get(call_id) is not entry:
            return
        if failure.check(RelayTimeout):
            log.warn("Relay {ip} did not answer the remove of call {call_id}; asking again later", ip=entry.relay_ip, call_id=call_id)
            self.clock.callLater(self.config.relay_recover_interval, self._remove_again, call_id, entry)
        elif failure.check(RelayError) and not failure.check(RelayDisconnected):
            self.table.pop(call_id)
            log.warn("Relay {ip} could not remove call {call_id}: {error}", ip=entry.relay_ip, call_id=call_id, error=failure.value)
        # disconnected: sent again when the relay is back (relay_up)

    def _remove_again(self, call_id: str, entry: CallEntry) -> None:
        if self.table.get(call_id) is entry and not self.stopped:
            self._send_remove(call_id, entry)

    @defer.inlineCallbacks
    def _locate_and_remove(self, request: ProxyRequest):
        """A remove for a call this dispatcher does not know: another proxy may have set it up on a
        relay we share. The relay that has it answers with its statistics; the others say error."""
        links = self.registry.accepted()
        results = yield defer.DeferredList([link.send_command("remove", request.encode_headers()) for link in links], consumeErrors=True)
        for link, (ok, payload) in zip(links, results):
            if not ok:
                continue
            log.info("Call {call_id}, unknown here, was found and removed on relay {ip}", call_id=request.call_id, ip=link.ip)
            self.endings.account_removed(payload, request.call_id, CallEntry(link.ip, request.headers.get("dialog_id")))
            return "removed"
        log.warn("remove for unknown call {call_id}: none of {count} relays has it", call_id=request.call_id, count=len(links))
        return "error"

    # -- relay events

    def relay_up(self, ip: str) -> None:
        self.endings.relay_back(ip)
        link = self.registry.get(ip)
        known = {call_id for call_id, _ in self.table.of_relay(ip)}
        link.fetch_sessions().addCallbacks(self._reconcile, _listing_failed, callbackArgs=(ip, known), errbackArgs=(ip,))

    def _reconcile(self, listing: statistics.SessionList, ip: str, known: set[str]) -> None:
        """A relay (re)connected: its removes that waited go now; calls it no longer has are over;
        calls of ours that only it knows (set up just before a crash) are taken back."""
        present = {record.call_id for record in listing.records}
        log.info("Relay {ip} has {count} sessions", ip=ip, count=len(present))
        for call_id, entry in self.table.of_relay(ip):
            if call_id in known:  # not set up since the question was asked
                self._reconcile_call(call_id, entry, ip, call_id in present)
        adopted = 0
        for record in listing.records:
            if record.yours and record.call_id not in self.table:
                self.table.set(record.call_id, CallEntry(ip, record.dialog_id))
                adopted += 1
        if adopted:
            log.warn("Took back {count} calls from relay {ip} that the call table had lost", count=adopted, ip=ip)
        report = self.last_known.start(ip)
        for record in listing.records:
            self.pulls.remember(report, record)
        report.page_end(self.clock.seconds())
        self.last_known.finish(ip, report)

    def _reconcile_call(self, call_id: str, entry: CallEntry, ip: str, present: bool) -> None:
        if entry.removal is not None:
            if present:
                self._send_remove(call_id, entry)
            else:
                self.table.pop(call_id)
                log.warn("Call {call_id} was removed while relay {ip} was away, and it no longer has it", call_id=call_id, ip=ip)
        elif entry.expire_time is None and not present:
            log.warn("Call {call_id} is no longer on relay {ip}; its statistics are probably lost", call_id=call_id, ip=ip)
            self.table.pop(call_id)
            dialog = entry.dialog()
            if dialog:
                self.plugins.end_dialog(call_id, dialog)

    def relay_down(self, ip: str) -> None:
        if not self.stopped:
            self.endings.relay_away(ip)

    def expired(self, ip: str, text: str) -> None:
        """A relay's expiry of a call (the relay registry's listener)."""
        self.endings.expired(ip, text)
