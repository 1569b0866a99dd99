"""RTP/RTCP port pairs: even port for RTP, the next odd one for RTCP; bad pairs parked.

Pairs are handed out at random, so nobody can guess the ports of the next call and send to
them first; a released pair cools down behind the more recently released half of the pool
before it can be chosen again, so late packets of an ended call rarely meet a new one.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Iterable
from typing import TypeVar

from zope.interface import implementer

from mediaproxy.datatypes import PortRange
from mediaproxy.relay.plane.interfaces import IPortPool

T = TypeVar("T")


class PortsExhausted(Exception):
    pass


class PairsInUse:
    """The pairs in use: a byte per pair of the range (a set of ports took some 65 bytes a port)."""

    __slots__ = ("start", "flags", "count")

    def __init__(self, port_range: PortRange) -> None:
        self.start = port_range.start
        self.flags = bytearray((port_range.end - port_range.start) // 2 + 1)
        self.count = 0

    def _index(self, port: int) -> int | None:
        index, odd = divmod(port - self.start, 2)
        return index if not odd and 0 <= index < len(self.flags) else None

    def __contains__(self, port: int) -> bool:
        index = self._index(port)
        return index is not None and self.flags[index] == 1

    def __len__(self) -> int:
        return self.count

    def add(self, port: int) -> None:
        index = self._index(port)
        if index is None:
            raise ValueError(f"port {port} is not a pair of the range")
        if not self.flags[index]:
            self.flags[index] = 1
            self.count += 1

    def remove(self, port: int) -> None:
        index = self._index(port)
        if index is None or not self.flags[index]:
            raise KeyError(port)
        self.flags[index] = 0
        self.count -= 1


@implementer(IPortPool)
class PortPool:
    def __init__(self, port_range: PortRange, rng: random.Random | None = None) -> None:
        # highest first: a chooser that always takes the last one hands out ascending ports (tests)
        self.free: list[int] = list(range(port_range.end - 2, port_range.start - 2, -2))
        self.cooling: deque[int] = deque()
        self.bad: deque[int] = deque()
        self.in_use = PairsInUse(port_range)
        self.reserved: set[int] = set()  # for the sessions being taken back at start
        self.total = len(self.free)
        self.rng = rng or random.SystemRandom()

    def _take(self) -> int | None:
        while self.cooling and (not self.free or len(self.cooling) > self.total // 2):
            self.free.append(self.cooling.popleft())
        if not self.free:
            return None
        index = self.rng.randrange(len(self.free))
        free = self.free
        free[index], free[-1] = free[-1], free[index]
        return free.pop()

    def allocate(self, bind: Callable[[int], T]) -> tuple[int, T]:
        """Take a random pair that ``bind(rtp_port)`` accepts; ``bind`` raises OSError for a bad pair."""
        for _attempt in range(self.total):
            if len(self.bad) > len(self.free) + len(self.cooling):
                # a port that failed to bind is usually free again later; give it another chance
                self.free.extend(self.bad)
                self.bad.clear()
            port = self._take()
            if port is None:
                break
            try:
                return port, self._bind(port, bind)
            except OSError:
                continue
        raise PortsExhausted(f"no free RTP/RTCP port pair left ({len(self.in_use)} in use, {len(self.bad)} failed to bind)")

    def reserve(self, ports: Iterable[int]) -> None:
        """Set aside the pairs that sessions kept from the last run are about to claim, in one pass
        over the free ones: claiming 40,000 pairs one by one from the list is quadratic."""
        wanted = set(ports)
        self.reserved = wanted.intersection(self.free)
        if self.reserved:
            self.free = [port for port in self.free if port not in self.reserved]

    def unreserve(self) -> None:
        """What was reserved and not claimed (a kept session that could not come back) is free again."""
        self.free.extend(self.reserved)
        self.reserved = set()

    def claim(self, port: int, bind: Callable[[int], T]) -> tuple[int, T]:
        """Take this very pair (a session kept across a restart had it); OSError when ``bind`` fails,
        PortsExhausted when it is not free."""
        if port in self.reserved:
            self.reserved.discard(port)
        else:
            for pool in (self.free, self.cooling, self.bad):
                if port in pool:
                    pool.remove(port)
                    break
            else:
                raise PortsExhausted(f"port {port} is not in port_range or already in use")
        return port, self._bind(port, bind)

    def _bind(self, port: int, bind: Callable[[int], T]) -> T:
        """A pair taken out of the free ones goes in use, or is parked as bad when it does not bind."""
        try:
            bound = bind(port)
        except OSError:
            self.bad.append(port)
            raise
        self.in_use.add(port)
        return bound

    def release(self, port: int) -> None:
        if port in self.in_use:
            self.in_use.remove(port)
            self.cooling.append(port)
