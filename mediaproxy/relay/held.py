"""Statistics of sessions that expired while their dispatcher was away, held until it is back.

They are the only account of those calls the dispatcher will get, so they are kept in the state
directory as well as in memory: a relay restarted (or crashed) while a dispatcher is away still
reports them when that dispatcher returns.
"""

from __future__ import annotations

import itertools
from collections import deque

from mediaproxy.runtime.log import Logger
from mediaproxy.statefile import StateFile

log = Logger(namespace="relay")

Dispatcher = tuple[str, int]  # (host, port), as the relay connects to it


class HeldExpiries:
    """Per dispatcher, in the order they expired; at most ``limit`` each (the oldest go first)."""

    def __init__(self, state: StateFile | None, limit: int) -> None:
        self.state = state
        self.limit = limit
        self._held: dict[Dispatcher, deque[tuple[str, dict]]] = {}
        self._ids = itertools.count(1)

    def restore(self) -> int:
        """Take back what the last run held; then keep every change. Returns how many came back."""
        if self.state is None:
            return 0
        kept = self.state.load()
        restored = []
        for key, entry in kept.items():
            try:
                number = int(key)
                host, port = entry["dispatcher"]
                dispatcher = (str(host), int(port))
                statistics = entry["statistics"]
                if not isinstance(statistics, dict):
                    raise TypeError("statistics is not an object")
            except (ValueError, TypeError, KeyError) as error:
                log.error("Cannot take back held expiry {key}: {error}", key=key, error=error)
                continue
            restored.append((number, dispatcher, statistics))
        restored.sort(key=lambda item: item[0])
        for number, dispatcher, statistics in restored:
            self._held.setdefault(dispatcher, deque()).append((str(number), statistics))
        self._ids = itertools.count(max((number for number, _, _ in restored), default=0) + 1)
        self.state.open(self._everything, self.total)
        return len(restored)

    def _everything(self) -> dict:
        return {key: _kept(dispatcher, statistics) for dispatcher, held in self._held.items() for key, statistics in held}

    def total(self) -> int:
        return sum(len(held) for held in self._held.values())

    def count(self, dispatcher: Dispatcher) -> int:
        return len(self._held.get(dispatcher, ()))

    def dispatchers(self) -> list[Dispatcher]:
        return [dispatcher for dispatcher, held in self._held.items() if held]

    def hold(self, dispatcher: Dispatcher, statistics: dict) -> dict | None:
        """Hold one; returns the oldest held for that dispatcher when it had to go to make room."""
        held = self._held.setdefault(dispatcher, deque())
        dropped = None
        if len(held) >= self.limit:
            key, dropped = held.popleft()
            self._forget(key)
        key = str(next(self._ids))
        held.append((key, statistics))
        if self.state is not None:
            self.state.set(key, _kept(dispatcher, statistics))
        return dropped

    def take(self, dispatcher: Dispatcher) -> list[dict]:
        """All held for ``dispatcher``, oldest first, forgotten here (they are being sent)."""
        held = self._held.pop(dispatcher, deque())
        for key, _ in held:
            self._forget(key)
        return [statistics for _, statistics in held]

    def _forget(self, key: str) -> None:
        if self.state is not None:
            self.state.pop(key)

    def close(self) -> None:
        if self.state is not None:
            self.state.close()


def _kept(dispatcher: Dispatcher, statistics: dict) -> dict:
    """One held expiry as the state file keeps it (what restore reads back)."""
    return {"dispatcher": list(dispatcher), "statistics": statistics}
