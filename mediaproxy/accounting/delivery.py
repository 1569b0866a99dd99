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
from twisted.logger import Logger
from twisted.python import failure

from mediaproxy.accounting.spool import Entry, Spool

log = Logger(namespace="accounting")

MIN_BACKOFF = 1.0
MAX_BACKOFF = 60.0
BACKLOG_REPORT_INTERVAL = 60.0


class BackendUnavailable(Exception):
    """The backend cannot take records now (server down, timeout); retry later."""


class RecordRejected(Exception):
    """The backend will never take this record (bad data); set it aside."""


class Backend(Protocol):
    """What a delivery queue needs from a backend. Every method runs in the worker thread."""

    def deliver(self, record: dict) -> str | None:
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

    def __init__(self, reactor, name: str) -> None:  # noqa: ANN001
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

    def __init__(self, name: str, backend: Backend, spool: Spool, clock, run: Callable[..., defer.Deferred]) -> None:  # noqa: ANN001
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

    def add(self, record: dict) -> None:
        try:
            self.spool.append(record, self.clock.seconds())
        except OSError as error:
            # the record must survive somewhere: the log is the last durable place left
            log.critical(
                "{name} accounting cannot spool the record of call {call_id} ({error}); the record: {record}",
                name=self.name,
                call_id=record.get("call_id"),
                error=error,
                record=json.dumps(record),
            )
            return
        self._next()

    def status(self) -> dict:
        now = self.clock.seconds()
        age = self.spool.oldest_age(now)
        return {
            "backend": self.name,
            "state": "unavailable" if self.outage_since is not None else "delivering" if len(self.spool) else "idle",
            "spooled": len(self.spool),
            "oldest_age": None if age is None else int(age),
            "delivered": self.delivered,
            "rejected": self.rejected,
            "last_error": self.last_error,
            "spool": self.spool.directory,
        }

    def stop(self) -> defer.Deferred:
        """Stop after the record in flight (if any); spooled records wait for the next start."""
        self.stopping = True
        if self.retry_timer is not None and self.retry_timer.active():
            self.retry_timer.cancel()
        self.retry_timer = None
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
            record = self.spool.read(entry)
        except (OSError, ValueError) as error:
            self._set_aside(entry, f"unreadable spool file: {error}")
            self._next()
            return
        self.in_flight = self.run(self.backend.deliver, record)
        self.in_flight.addCallbacks(self._delivered, self._failed, callbackArgs=(entry, record), errbackArgs=(entry, record))

    def _delivered(self, note: str | None, entry: Entry, record: dict) -> None:
        self.in_flight = None
        self.spool.remove(entry)
        self.delivered += 1
        if note:
            log.info("{name} accounting: call {call_id}: {note}", name=self.name, call_id=record.get("call_id"), note=note)
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

    def _failed(self, failure, entry: Entry, record: dict) -> None:  # noqa: ANN001
        self.in_flight = None
        if failure.check(RecordRejected):
            self._set_aside(entry, failure.getErrorMessage(), record)
            self._next()
            return
        if failure.check(BackendUnavailable):
            reason = failure.getErrorMessage()
        else:
            log.failure(
                "{name} accounting: unexpected failure delivering call {call_id}", failure, name=self.name, call_id=record.get("call_id")
            )
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

    def _set_aside(self, entry: Entry, reason: str, record: dict | None = None) -> None:
        self.rejected += 1
        try:
            target = self.spool.reject(entry, reason)
        except OSError as error:
            target = f"{entry.path} (could not be moved aside: {error})"
        call_id = record.get("call_id") if record else None
        log.error(
            "{name} accounting refused the record of call {call_id} ({reason}); kept in {target}",
            name=self.name,
            call_id=call_id,
            reason=reason,
            target=target,
        )
