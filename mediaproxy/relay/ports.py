"""RTP/RTCP port pairs: even port for RTP, the next odd one for RTCP; taken FIFO, bad pairs parked."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TypeVar

from mediaproxy.datatypes import PortRange

T = TypeVar("T")


class PortsExhausted(Exception):
    pass


class PortPool:
    def __init__(self, port_range: PortRange) -> None:
        self.free: deque[int] = deque(range(port_range.start, port_range.end, 2))
        self.bad: deque[int] = deque()
        self.in_use: set[int] = set()
        self.total = len(self.free)

    def allocate(self, bind: Callable[[int], T]) -> tuple[int, T]:
        """Take the next pair that ``bind(rtp_port)`` accepts; ``bind`` raises OSError for a bad pair."""
        for _attempt in range(self.total):
            if len(self.bad) > len(self.free):
                # a port that failed to bind is usually free again later; give it another chance
                self.free.extend(self.bad)
                self.bad.clear()
            if not self.free:
                break
            port = self.free.popleft()
            try:
                bound = bind(port)
            except OSError:
                self.bad.append(port)
                continue
            self.in_use.add(port)
            return port, bound
        raise PortsExhausted(f"no free RTP/RTCP port pair left ({len(self.in_use)} in use, {len(self.bad)} failed to bind)")

    def release(self, port: int) -> None:
        if port in self.in_use:
            self.in_use.remove(port)
            self.free.append(port)
