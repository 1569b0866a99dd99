"""Values that many sessions hold alike, each held once.

A relay holds thousands of sessions, and some of what each keeps repeats from one to the next (a
network's few phone models, the configured timeouts, the first CSeq numbers): a table hands back
the one copy it holds of a value equal to the one given. Tables are bounded, so values a peer
chooses cannot make one grow without end; past its size, a value is just not shared.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import TypeVar

T = TypeVar("T", bound=Hashable)


class SharedValues:
    """A bounded table of shared values: calling it with a value gives the equal one it holds."""

    __slots__ = ("_held", "limit")

    def __init__(self, limit: int) -> None:
        self._held: dict = {}
        self.limit = limit

    def __call__(self, value: T) -> T:
        held = self._held.get(value)
        if held is None:
            if len(self._held) >= self.limit:
                return value
            held = self._held[value] = value
        return held

    def __len__(self) -> int:
        return len(self._held)
