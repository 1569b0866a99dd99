"""One reactor timer for the deadlines of every stream (a DelayedCall per stream costs KiBs).

The model keeps each side's deadline as a number; this keeps a heap of (when, stream) and wakes
for the earliest. A stream whose deadline moved later is found with nothing due and watched
again; entries of streams that moved or ended are dropped lazily, and the heap is rebuilt when
they outnumber the live ones.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable

# the reactor may wake a hair before a float deadline
EARLY = 1e-6


class Deadlines:
    def __init__(self, clock, due: Callable[[object, float], None]) -> None:  # an IReactorTime
        self.clock = clock
        self.due = due  # called with (stream, now) when the stream's next deadline has come
        self._heap: list[tuple[float, int, object]] = []
        self._at: dict[object, float] = {}  # stream → the time its live heap entry is for
        self._order = itertools.count()
        self._timer = None

    def watch(self, stream) -> None:  # a model Stream
        """Wake for the stream's next deadline (``stream.next_deadline``), if any and earlier than known."""
        when = stream.next_deadline
        if when is None:
            return
        known = self._at.get(stream)
        if known is not None and known <= when:
            return
        self._at[stream] = when
        heapq.heappush(self._heap, (when, next(self._order), stream))
        if len(self._heap) > 2 * len(self._at) + 1000:
            self._heap = [(when, order, stream) for when, order, stream in self._heap if self._at.get(stream) == when]
            heapq.heapify(self._heap)
        self._arm()

    def forget(self, stream) -> None:
        self._at.pop(stream, None)
        if not self._at:
            self._heap.clear()
            self.stop()  # nothing left to wake for

    def stop(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _arm(self) -> None:
        while self._heap and self._at.get(self._heap[0][2]) != self._heap[0][0]:
            heapq.heappop(self._heap)  # stale: the stream moved or ended
        if not self._heap:
            self.stop()
            return
        first = self._heap[0][0]
        delay = max(first - self.clock.seconds(), 0)
        if self._timer is not None and self._timer.active():
            if self._timer.getTime() <= first:
                return
            self._timer.reset(delay)
        else:
            self._timer = self.clock.callLater(delay, self._wake)

    def _wake(self) -> None:
        self._timer = None
        now = self.clock.seconds() + EARLY
        heap = self._heap
        while heap and heap[0][0] <= now:
            when, _, stream = heapq.heappop(heap)
            if self._at.get(stream) != when:
                continue
            del self._at[stream]
            self.due(stream, now)
        self._arm()
