"""What plugins see of the dispatcher (IDispatcherView): counts, the relays' summaries and
sessions, and the operator's controls (terminate, drain, log levels), over the core."""

from __future__ import annotations

from twisted.internet import defer
from zope.interface import implementer

from mediaproxy.dialogs import Dialog, DialogEnding
from mediaproxy.dispatcher.core import Dispatcher
from mediaproxy.dispatcher.relays import RelayLink
from mediaproxy.dispatcher.sessions import CallEntry
from mediaproxy.dispatcher.stats import RequestStats
from mediaproxy.plugin import IDispatcherView
from mediaproxy.runtime.log import Logger
from mediaproxy.wire import relaylink, statistics

log = Logger(namespace="dispatcher")

# how long the operator's terminate waits for the proxy to end a dialog before removing the session itself
TERMINATE_DEADLINE = 2.0


@implementer(IDispatcherView)
class DispatcherView:
    def __init__(self, core: Dispatcher) -> None:
        self.core = core
        self.registry = core.registry

    @property
    def request_stats(self) -> RequestStats:
        return self.core.stats

    def call_count(self) -> int:
        return len(self.core.table)

    def connected_relays(self) -> list[RelayLink]:
        return self.registry.accepted()

    def accounting_status(self) -> list[dict]:
        return self.core.plugins.accounting_status()

    # -- control (the management interface's commands)

    @defer.inlineCallbacks
    def terminate(self, call_id: str):  # a Deferred firing with what was done
        """End a call now: through the proxy when it has a dialog (both parties get a BYE and the
        proxy's remove accounts it). Where it has none, or the proxy does not end it within
        TERMINATE_DEADLINE (refused, no answer, not reachable), its session on the relay is
        removed and accounted as "terminated". Fires with a dict: ``done``, and ``proxy`` (what
        the proxy answered) where it was asked. ValueError when there is nothing to end."""
        entry = self._live_entry(call_id)
        dialog = entry.dialog()
        answer = None
        if dialog:
            log.info("Call {call_id} terminated by the operator: its dialog {dialog} is ended", call_id=call_id, dialog=str(dialog))
            ending = yield self._end_dialog_within(call_id, dialog, TERMINATE_DEADLINE)
            if ending.ended:
                return {"done": "dialog ended through the proxy", "proxy": ending.answer}
            answer = ending.answer
            log.warn(
                "Call {call_id}: the proxy did not end dialog {dialog} ({answer}); removing its session on relay {ip}",
                call_id=call_id,
                dialog=str(dialog),
                answer=answer,
                ip=entry.relay_ip,
            )
            entry = self._live_entry(call_id)
        link = self.registry.get(entry.relay_ip)
        if link is None:
            raise ValueError(f"the relay of call {call_id}, {entry.relay_ip}, is not connected")
        listing = yield link.fetch_sessions(call_id)
        if not listing.records or self.core.table.get(call_id) is not entry or entry.removal is not None:
            raise ValueError(f"relay {entry.relay_ip} no longer has call {call_id}")
        record = listing.records[0]
        log.info("Call {call_id} terminated by the operator: its session on relay {ip} is removed", call_id=call_id, ip=entry.relay_ip)
        removal = [f"call_id: {call_id}", f"from_tag: {record.from_tag}", f"to_tag: {record.to_tag or ''}"]
        self.core.terminate_session(call_id, entry, removal)
        done = {"done": "session removed"}
        return done if answer is None else {**done, "proxy": answer}

    def _live_entry(self, call_id: str) -> CallEntry:
        entry = self.core.table.get(call_id)
        if entry is None or entry.expire_time is not None:
            raise ValueError(f"no call {call_id}")
        if entry.removal is not None:
            raise ValueError(f"call {call_id} is being removed already")
        return entry

    def _end_dialog_within(self, call_id: str, dialog: Dialog, deadline: float) -> defer.Deferred:
        """The proxy's DialogEnding, given up (the plugin told so) after ``deadline`` seconds."""
        ending = self.core.plugins.end_dialog(call_id, dialog)
        if ending is None:
            return defer.succeed(DialogEnding(False, "no plugin here ends dialogs"))
        ending.addTimeout(deadline, self.core.clock)
        return ending.addErrback(lambda failure: DialogEnding(False, f"no answer within {deadline:g}s ({failure.getErrorMessage()})"))

    def drain(self, ip: str, on: bool = True) -> None:
        """Give relay ``ip`` no new calls (its calls go on), or new calls again."""
        if on:
            self.registry.drained.add(ip)
        else:
            self.registry.drained.discard(ip)
        log.info("Relay {ip} {state}", ip=ip, state="takes no new calls (drained)" if on else "takes new calls again")

    def relay_log_level(self, ip: str, level: str) -> defer.Deferred:
        link = self.registry.get(ip)
        if link is None:
            return defer.fail(ValueError(f"relay {ip} is not connected"))
        return link.send_command("loglevel", f"{relaylink.LEVEL_HEADER}: {level}\r\n".encode())

    # -- management

    def _gather(self, fetch) -> defer.Deferred:
        links = list(self.registry.relays.values())
        return defer.DeferredList([fetch(link) for link in links], consumeErrors=True).addCallback(
            lambda results: [(link.ip, ok, value) for link, (ok, value) in zip(links, results)]
        )

    def relay_summaries(self) -> defer.Deferred:
        def listed(results: list) -> list[dict]:
            summaries = [value if ok and isinstance(value, dict) else {"status": "error", "ip": ip} for ip, ok, value in results]
            for summary, (ip, _, _) in zip(summaries, results):
                if ip in self.registry.drained:
                    summary["drained"] = True
            return summaries

        return self._gather(lambda link: link.send_command("summary").addCallback(statistics.parse_summary)).addCallback(listed)

    def relay_sessions(self) -> defer.Deferred:
        def concatenate(results: list) -> list:
            sessions = []
            for ip, ok, listing in results:
                if ok:
                    for record in listing.records:
                        record.yours = None
                        record.relay = ip
                        sessions.append(record)
            return sessions

        return self._gather(lambda link: link.fetch_sessions()).addCallback(concatenate)
