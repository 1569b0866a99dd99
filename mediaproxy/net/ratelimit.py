"""Log lines and counters for what peers make us refuse: one line per peer per interval, every
refusal counted (the counts appear in the management ``counters`` and the relay's summary)."""

from __future__ import annotations

from collections import Counter

from mediaproxy.runtime.log import Logger

INTERVAL = 60
# distinct peers remembered; a spoofed flood from many sources must not grow this without bound
MAX_KEYS = 4096


class Refusals:
    """Counts refusals by kind and decides which of them get a log line."""

    def __init__(self, clock, interval: float = INTERVAL) -> None:
        self.clock = clock
        self.interval = interval
        self.counts: Counter[str] = Counter()
        self._last: dict[tuple[str, str], float] = {}
        self._suppressed: Counter[tuple[str, str]] = Counter()

    def refuse(self, kind: str, peer: str, log: Logger, text: str, level: str = "warn", **fields: object) -> None:
        """Count one refusal of ``kind`` from ``peer`` and log ``text`` if this peer had none logged lately."""
        self.count(kind)
        key = (kind, peer)
        now = self.clock.seconds()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._suppressed[key] += 1
            return
        if len(self._last) >= MAX_KEYS:
            self._forget_old(now)
        self._last[key] = now
        suppressed = self._suppressed.pop(key, 0)
        more = f" ({suppressed} more since the last report)" if suppressed else ""
        getattr(log, level)(text + "{more}", peer=peer, more=more, **fields)

    def _forget_old(self, now: float) -> None:
        for key, when in list(self._last.items()):
            if now - when >= self.interval:
                del self._last[key]
                self._suppressed.pop(key, None)
        if len(self._last) >= MAX_KEYS:
            self._last.clear()
            self._suppressed.clear()

    def count(self, kind: str) -> None:
        """Count a refusal that is logged by its own rules (one line per bad proxy request, say)."""
        self.counts[kind] += 1

    def snapshot(self) -> dict[str, int]:
        return dict(sorted(self.counts.items()))
