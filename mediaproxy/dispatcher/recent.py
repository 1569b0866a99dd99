"""A value fetched from the relays that readers share for a while.

Scrapes and web pages poll; each poll asking every relay again would let any number of readers
multiply the relays' work. A :class:`Recent` fetches at most once per ``max_age`` seconds and
at most one fetch at a time: readers that come during a fetch wait for that one.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet import defer

from mediaproxy.runtime.log import Logger

log = Logger(namespace="dispatcher")


class Recent:
    def __init__(self, fetch: Callable[[], defer.Deferred], clock, max_age: float, what: str) -> None:
        self.fetch = fetch
        self.clock = clock
        self.max_age = max_age
        self.what = what
        self.value: object = None
        self.fetched_at: float | None = None
        self._waiting: list[defer.Deferred] | None = None  # not None while a fetch runs

    def get(self) -> defer.Deferred:
        """Fires with the value: the one held, if younger than ``max_age``, else a new one. A
        failed fetch leaves the previous value (None before the first) and logs why."""
        if self.fetched_at is not None and self.clock.seconds() - self.fetched_at < self.max_age:
            return defer.succeed(self.value)
        waiting: defer.Deferred = defer.Deferred()
        if self._waiting is None:
            self._waiting = [waiting]
            defer.maybeDeferred(self.fetch).addCallbacks(self._fetched, self._failed)
        else:
            self._waiting.append(waiting)
        return waiting

    def _fetched(self, value: object) -> None:
        self.value = value
        self.fetched_at = self.clock.seconds()
        self._release()

    def _failed(self, failure) -> None:
        log.warn("Could not get {what}: {error}", what=self.what, error=failure.getErrorMessage())
        self._release()

    def _release(self) -> None:
        waiting, self._waiting = self._waiting or [], None
        for deferred in waiting:
            deferred.callback(self.value)
