"""The statistics pull: every ``statistics_pull_interval`` each relay lists its sessions, one
record at a time, into the last-known report (the record a call gets if its relay is lost for
good); a live call of ours it no longer lists was removed through another dispatcher."""

from __future__ import annotations

from twisted.internet import defer
from twisted.python.failure import Failure

from mediaproxy.dispatcher.lastknown import LastKnown, Report
from mediaproxy.dispatcher.relays import RelayLink, RelayRegistry
from mediaproxy.dispatcher.sessions import CallEntry, CallTable
from mediaproxy.runtime import heap
from mediaproxy.runtime.log import Logger
from mediaproxy.wire import statistics

log = Logger(namespace="dispatcher")


def _give_back(result: object) -> object:
    """After a pull: the pages its parsed listings took go back to the system, once for all relays."""
    heap.give_back()
    return result


class StatisticsPulls:
    def __init__(self, clock, registry: RelayRegistry, table: CallTable, last_known: LastKnown) -> None:  # an IReactorTime
        self.clock = clock
        self.registry = registry
        self.table = table
        self.last_known = last_known

    def pull_all(self) -> defer.Deferred:
        links = self.registry.accepted()
        return defer.DeferredList([self._pull(link) for link in links], consumeErrors=True).addCallback(_give_back)

    def _pull(self, link: RelayLink) -> defer.Deferred:
        # our live calls on the relay; each it lists is taken out, and what is left it no longer has
        unlisted = {
            call_id: entry for call_id, entry in self.table.of_relay(link.ip) if entry.removal is None and entry.expire_time is None
        }
        report = self.last_known.start(link.ip)

        def listed(record: statistics.SessionRecord) -> None:
            unlisted.pop(record.call_id, None)
            self.remember(report, record)

        def failed(failure: Failure) -> Failure:
            self.last_known.abandon(link.ip, report)
            return failure

        pulled = link.fetch_sessions(each_record=listed, each_page=lambda: report.page_end(self.clock.seconds()))
        pulled.addCallbacks(lambda _: self.last_known.finish(link.ip, report), failed)
        return pulled.addCallback(lambda _: self._pulled(unlisted, link.ip))

    def remember(self, report: Report, record: statistics.SessionRecord) -> None:
        """Keep in ``report`` a record that is of a call of ours, answered."""
        if record.call_id in self.table and record.start_time is not None:
            report.add(record)

    def _pulled(self, unlisted: dict[str, CallEntry], ip: str) -> None:
        """A live call of ours that its relay no longer has, with no expiry from it (which would
        have come first on the link), was removed through another proxy's dispatcher, which
        accounted it: forget it here."""
        gone = [
            call_id
            for call_id, entry in unlisted.items()
            if self.table.get(call_id) is entry and entry.removal is None and entry.expire_time is None
        ]
        for call_id in gone:
            self.table.pop(call_id)
            log.info("Call {call_id} is no longer on relay {ip}: it was removed through another dispatcher", call_id=call_id, ip=ip)
