"""Delivering spooled accounting records to one backend, in order, off the reactor thread.

The reactor side only writes the spool and schedules; the backend's blocking calls (a database
driver, a RADIUS exchange with its timeouts and retries) run in a single worker thread, so one
record is in flight at a time and records arrive in the order calls ended. A backend that is
unavailable is retried with exponential backoff; a record it refuses for good is set aside.
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Callable
from typing import Protocol

from twisted.internet import defer
from twisted.python import failure

from mediaproxy.accounting.spool import Entry, Spool, SpoolFull
from mediaproxy.runtime.log import Logger
from mediaproxy.wire.statistics import SessionRecord

log = Logger(namespace="accounting")

MIN_BACKOFF = 1.0
MAX_BACKOFF = 60.0
BACKLOG_REPORT_INTERVAL = 60.0
HELD_RETRY_INTERVAL = 5.0


class BackendUnavailable(Exception):
    """The backend cannot take records now (server down, timeout); retry later."""


class RecordRejected(Exception):
    """The backend will never take this record (bad data); set it aside."""


class Backend(Protocol):
    """What a delivery queue needs from a backend. Every method runs in the worker thread."""

    def deliver(self, record: SessionRecord) -> str | None:
        """Store one record; return a note for the log (e.g. "already recorded") or None.

        Raises BackendUnavailable or RecordRejected; anything else counts as unavailable.
        """

    def close(self) -> None:
        """Release connections; called once, at stop."""


class ThreadRunner:
    """Runs functions one at a time, in order, in a dedicated daemon thread; results come back as Deferreds.

    The thread is a daemon and is never joined: a driver call stuck on an unreachable server must
    not hold up the dispatcher's shutdown (its record stays spooled and is sent after the restart).
    """

    def __init__(self, reactor, name: str) -> None:
        self.reactor = reactor
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._work, name=name, daemon=True)
        self.thread.start()

    def __call__(self, function: Callable, *args: object) -> defer.Deferred:
        result = defer.Deferred()
        self.jobs.put((function, args, result))
        return result

    def _work(self) -> None:
        while (job := self.jobs.get()) is not None:
            function, args, result = job
            try:
                outcome = function(*args)
            except BaseException:  # noqa: BLE001 - every failure goes back to the reactor thread
                self.reactor.callFromThread(_fire, result, failure.Failure())
            else:
                self.reactor.callFromThread(_fire, result, outcome)

    def stop(self) -> None:
        self.jobs.put(None)


def _fire(result: defer.Deferred, outcome: object) -> None:
    if result.called:  # given up on (timed out at shutdown)
        return
    if isinstance(outcome, failure.Failure):
        result.errback(outcome)
    else:
        result.callback(outcome)


class DeliveryQueue:
    """Moves records from a spool to a backend; ``status()`` tells how far behind it is."""

    def __init__(self, name: str, backend: Backend, spool: Spool, clock, run: Callable[..., defer.Deferred]) -> None:
        self.name = name
        self.backend = backend
        self.spool = spool
        self.clock = clock
        self.run = run
        self.in_flight: defer.Deferred | None = None
        self.retry_timer = None
        self.backoff = MIN_BACKOFF
        self.outage_since: float | None = None
        self.last_error: str | None = None
        self.last_report = 0.0
        self.delivered = 0
        self.rejected = 0
        self.stopping = False
        self.held_timer = None

    # -- reactor side

    def start(self) -> None:
        if len(self.spool):
            log.info(
                "{name} accounting: {count} records left in the spool {path} from an earlier run; delivering them first",
                name=self.name,
                count=len(self.spool),
                path=self.spool.directory,
            )
        self._next()

    def add(self, record: SessionRecord) -> None:
        document = record.as_json()
        held_before = self.spool.held
        try:
            entry = self.spool.append(document, self.clock.seconds())
        except SpoolFull as error:
            self._last_resort(document, f"not kept: {error}")
            return
        if entry.held:
            # delivered from memory, and written to the spool once it can be; the log gets a
            # copy for a dispatcher stopped before either happens
            if not held_before:
                log.critical(
                    "{name} accounting cannot write to its spool {path} ({error}); holding records in memory until it can",
                    name=self.name,
                    path=self.spool.directory,
                    error=self.spool.last_error,
                )
            self._last_resort(document, "held in memory only")
            if self.held_timer is None:
                self.held_timer = self.clock.callLater(HELD_RETRY_INTERVAL, self._write_held)
        self._next()

    def _last_resort(self, record: dict, why: str) -> None:
        """The record's JSON in the log, when it cannot be kept anywhere else."""
        log.critical(
            "{name} accounting: the record of call {call_id} is {why}; the record: {record}",
            name=self.name,
            call_id=record.get("call_id"),
            why=why,
            record=json.dumps(record),
        )

    def _write_held(self) -> None:
        self.held_timer = None
        left = self.spool.write_held()
        if left:
            self.held_timer = self.clock.callLater(HELD_RETRY_INTERVAL, self._write_held)
        else:
            log.info("{name} accounting writes to its spool {path} again", name=self.name, path=self.spool.directory)

    def status(self) -> dict:
        now = self.clock.seconds()
        age = self.spool.oldest_age(now)
        return {
            "backend": self.name,
            "state": "unavailable" if self.outage_since is not None else "delivering" if len(self.spool) else "idle",
            "spooled": len(self.spool),
            "held_in_memory": self.spool.held,
            "oldest_age": None if age is None else int(age),
            "delivered": self.delivered,
            "rejected": self.rejected,
            "last_error": self.last_error,
            "spool": self.spool.directory,
        }

    def stop(self) -> defer.Deferred:
        """Stop after the record in flight (if any); spooled records wait for the next start."""
        self.stopping = True
        for timer in (self.retry_timer, self.held_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self.retry_timer = self.held_timer = None
        if self.spool.held and self.spool.write_held():
            log.critical(
                "{name} accounting: {count} records held in memory could not be spooled; they are in this log",
                name=self.name,
                count=self.spool.held,
            )
        if len(self.spool):
            log.info(
                "{name} accounting: {count} records stay spooled in {path}",
                name=self.name,
                count=len(self.spool),
                path=self.spool.directory,
            )
        waiting = defer.Deferred()
        if self.in_flight is None:
            waiting.callback(None)
        else:
            self.in_flight.addBoth(lambda _: None if waiting.called else waiting.callback(None))
        return waiting

    def _next(self) -> None:
        if self.stopping or self.in_flight is not None or self.retry_timer is not None:
            return
        entry = self.spool.first()
        if entry is None:
            return
        try:
            record = SessionRecord.from_json(self.spool.read(entry))
        except (OSError, ValueError) as error:
            self._set_aside(entry, f"unreadable spool file: {error}")
            self._next()
            return
        self.in_flight = self.run(self.backend.deliver, record)
        self.in_flight.addCallbacks(self._delivered, self._failed, callbackArgs=(entry, record), errbackArgs=(entry, record))

    def _delivered(self, note: str | None, entry: Entry, record: SessionRecord) -> None:
        self.in_flight = None
        self.spool.remove(entry)
        self.delivered += 1
        if note:
            log.info("{name} accounting: call {call_id}: {note}", name=self.name, call_id=record.call_id, note=note)
        if self.outage_since is not None:
            log.info(
                "{name} accounting is available again after {seconds:.0f}s; {count} records still spooled",
                name=self.name,
                seconds=self.clock.seconds() - self.outage_since,
                count=len(self.spool),
            )
            self.outage_since = None
            self.last_error = None
        self.backoff = MIN_BACKOFF
        self._next()

    def _failed(self, failure, entry: Entry, record: SessionRecord) -> None:
        self.in_flight = None
        if failure.check(RecordRejected):
            self._set_aside(entry, failure.getErrorMessage(), record)
            self._next()
            return
        if failure.check(BackendUnavailable):
            reason = failure.getErrorMessage()
        else:
            log.failure("{name} accounting: unexpected failure delivering call {call_id}", failure, name=self.name, call_id=record.call_id)
            reason = f"{failure.type.__name__}: {failure.getErrorMessage()}"
        self._unavailable(reason)

    def _unavailable(self, reason: str) -> None:
        now = self.clock.seconds()
        if self.outage_since is None:
            self.outage_since = now
            self.last_report = now
            log.warn(
                "{name} accounting is unavailable ({reason}); records are kept in {path} and retried",
                name=self.name,
                reason=reason,
                path=self.spool.directory,
            )
        elif reason != self.last_error or now - self.last_report >= BACKLOG_REPORT_INTERVAL:
            self.last_report = now
            log.warn(
                "{name} accounting still unavailable ({reason}); {count} records spooled, oldest {age:.0f}s",
                name=self.name,
                reason=reason,
                count=len(self.spool),
                age=self.spool.oldest_age(now) or 0.0,
            )
        self.last_error = reason
        if self.stopping:
            return
        self.retry_timer = self.clock.callLater(self.backoff, self._retry)
        self.backoff = min(self.backoff * 2, MAX_BACKOFF)

    def _retry(self) -> None:
        self.retry_timer = None
        self._next()

    def _set_aside(self, entry: Entry, reason: str, record: SessionRecord | None = None) -> None:
        self.rejected += 1
        try:
            target = self.spool.reject(entry, reason)
        except OSError as error:
            target = f"{entry.path} (could not be moved aside: {error})"
            if entry.held:
                self._last_resort(entry.record, f"refused and not kept in {self.spool.rejected_directory}")
        call_id = record.call_id if record else None
        log.error(
            "{name} accounting refused the record of call {call_id} ({reason}); kept in {target}",
            name=self.name,
            call_id=call_id,
            reason=reason,
            target=target,
        )
