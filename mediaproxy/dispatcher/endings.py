"""How the dispatcher's calls end: each accounted once with its end reason (the plugins'
``session_ended``), and its dialog ended through the proxy where its media stopped or its relay
was lost (the plugins' ``end_dialog``). Below the core: it knows the call table and the plugins,
nothing of routing."""

from __future__ import annotations

from mediaproxy.dispatcher.lastknown import LastKnown
from mediaproxy.dispatcher.sessions import TERMINATED, CallEntry, CallTable
from mediaproxy.plugin import PluginSet
from mediaproxy.runtime.log import Logger
from mediaproxy.wire import statistics

log = Logger(namespace="dispatcher")

# how long an rtpproxy call whose dialog the proxy was asked to end waits for a D (see cleanup_expired)
RTPPROXY_EXPIRED_KEPT = 60


class Endings:
    def __init__(
        self, clock, table: CallTable, plugins: PluginSet, last_known: LastKnown, config
    ) -> None:  # an IReactorTime, a DispatcherConfig
        self.clock = clock
        self.table = table
        self.plugins = plugins
        self.last_known = last_known
        self.config = config
        self.lost_relays: dict[str, object] = {}  # ip → the timer that ends its calls

    def relay_away(self, ip: str) -> None:
        """Relay ``ip`` is not connected: its calls end if it stays away (``lost_relay_grace``)."""
        if ip not in self.lost_relays:
            grace = min(self.config.lost_relay_grace, self.config.cleanup_dead_relays_after)
            self.lost_relays[ip] = self.clock.callLater(grace, self.relay_lost, ip, grace)

    def relay_back(self, ip: str) -> None:
        timer = self.lost_relays.pop(ip, None)
        if timer is not None and timer.active():
            timer.cancel()

    def stop(self) -> None:
        for timer in self.lost_relays.values():
            if timer.active():
                timer.cancel()
        self.lost_relays.clear()

    def account(self, record: statistics.SessionRecord, entry: CallEntry, end_reason: str) -> None:
        record.dialog_id = entry.dialog_id or record.dialog_id
        record.end_reason = end_reason
        record.timed_out = end_reason in statistics.MEDIA_TIMEOUTS
        record.relay = entry.relay_ip
        record.username = record.username or statistics.uri_user(record.from_uri)  # an original relay leaves it null
        log.info(
            "Call {call_id} ended ({reason}) after {duration}s on relay {ip}; {traffic}",
            call_id=record.call_id,
            reason=end_reason,
            duration=record.duration,
            ip=entry.relay_ip,
            traffic=record.traffic(),
        )
        if record.start_time is not None:
            self.plugins.session_ended(record)

    def account_removed(self, payload: str, call_id: str, entry: CallEntry) -> None:
        """Account the statistics a relay answered a remove with."""
        try:
            record = statistics.parse_record(payload)
        except ValueError as error:
            log.error("Relay {ip} sent undecodable statistics for call {call_id}: {error}", ip=entry.relay_ip, call_id=call_id, error=error)
            return
        self.account(record, entry, statistics.TERMINATED if entry.phase == TERMINATED else statistics.BYE)

    def expired(self, ip: str, text: str) -> None:
        try:
            record = statistics.parse_record(text)
        except ValueError as error:
            log.error("Relay {ip} sent an undecodable expired message: {error}; skipped it", ip=ip, error=error)
            return
        call_id = record.call_id
        entry = self.table.get(call_id)
        if entry is None:
            log.error("Relay {ip} reported unknown call {call_id} as expired", ip=ip, call_id=call_id)
            return
        if entry.relay_ip != ip:
            log.info(
                "Ignoring expiry of call {call_id} from relay {ip}: the call is on {owner}", call_id=call_id, ip=ip, owner=entry.relay_ip
            )
            return
        reason = statistics.expiry_reason(record)
        record.all_streams_ice = reason == statistics.UNSELECTED_ICE
        log.info("Call {call_id} expired on relay {ip} ({reason})", call_id=call_id, ip=ip, reason=reason)
        self.account(record, entry, reason)
        ends_dialog = reason != statistics.UNSELECTED_ICE and entry.removal is None
        dialog = entry.dialog()
        if dialog and record.start_time is not None and ends_dialog:
            self.table.mark_expired(call_id, self.clock.seconds())
            self.plugins.end_dialog(call_id, dialog)
        else:
            self.table.pop(call_id)

    def relay_lost(self, ip: str, grace: int) -> None:
        """A relay stayed away: its calls end, each with the last statistics it reported."""
        self.lost_relays.pop(ip, None)
        calls = self.table.of_relay(ip)
        if calls:
            log.error("Relay {ip} stayed away for {after}s; ending its {count} calls", ip=ip, after=grace, count=len(calls))
        known = self.last_known.take(ip, dict(calls))
        for call_id, entry in calls:
            self.table.pop(call_id)
            record = known.get(call_id)
            if record is not None:
                self.account(record, entry, statistics.BYE if entry.removal is not None else statistics.RELAY_LOST)
            dialog = entry.dialog()
            if dialog and entry.removal is None and entry.expire_time is None:
                self.plugins.end_dialog(call_id, dialog)

    def cleanup_expired(self) -> None:
        now = self.clock.seconds()
        # the rtpproxy module sends no D when the dialog module BYEs both parties (its BYEs skip
        # the script): such a call is forgotten once a D from the script could have come
        for call_id in self.table.expired_before(now - RTPPROXY_EXPIRED_KEPT):
            if self.table.get(call_id).rtpproxy is not None:
                self.table.pop(call_id)
        deadline = now - self.config.cleanup_expired_sessions_after
        stale = self.table.expired_before(deadline)
        for call_id in stale:
            self.table.pop(call_id)
        if stale:
            log.warn(
                "Removed {count} calls whose dialogs were ended more than {after}s ago without a remove",
                count=len(stale),
                after=self.config.cleanup_expired_sessions_after,
            )
