"""Counts the dispatcher keeps for monitoring: proxy requests by command and result, and how long
they took. Plain numbers; the metrics plugin turns them into Prometheus families when scraped."""

from __future__ import annotations

import bisect

# upper bounds in seconds: a remove is answered in well under a millisecond, an update waits for
# its relay (a few ms), a relay that times out takes seconds
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Histogram:
    """Observations counted into fixed buckets, as a Prometheus histogram exposes them."""

    __slots__ = ("bounds", "counts", "total", "count")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        """(upper bound, observations at or below it) for each bucket, ending with +Inf."""
        buckets, running = [], 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts):
            running += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), running))
        return buckets


class RequestStats:
    """Proxy requests handled: how many by (command, result), and their latency by command."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str], int] = {}
        self.latency: dict[str, Histogram] = {}

    def record(self, command: str, reply: str, seconds: float) -> None:
        result = "error" if reply == "error" else "ok"
        self.requests[(command, result)] = self.requests.get((command, result), 0) + 1
        histogram = self.latency.get(command)
        if histogram is None:
            histogram = self.latency[command] = Histogram()
        histogram.observe(seconds)
