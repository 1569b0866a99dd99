"""The relay's sessions by key, by call and in creation order (for the dispatchers' paged
listings), kept in step; nothing of the plane."""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterator

from mediaproxy.relay.model.session import Session


class SessionRegistry:
    def __init__(self) -> None:
        self.sessions: dict[tuple[str, str], Session] = {}  # in creation order: ascending serials
        # for the dispatchers' listings: pages start at a serial, lookups name a call
        self._serials: list[int] = []  # ascending
        self._ordered: list[Session] = []  # the sessions of _serials, in the same order
        # call_id → its session, or for the rare call with several (forked), a dict of them by key:
        # a dict for every call would cost a few hundred bytes each
        self._by_call: dict[str, Session | dict[tuple[str, str], Session]] = {}

    def find(self, call_id: str, from_tag: str, to_tag: str | None) -> Session | None:
        session = self.sessions.get((call_id, from_tag))
        if session is None and to_tag:
            session = self.sessions.get((call_id, to_tag))
        return session

    def add(self, session: Session) -> None:
        replaced = self.sessions.get(session.key)
        if replaced is not None:
            self.discard(replaced)
        self.sessions[session.key] = session
        self._serials.append(session.serial)  # serials only grow: the list stays sorted
        self._ordered.append(session)
        of_call = self._by_call.get(session.call_id)
        if of_call is None:
            self._by_call[session.call_id] = session
        elif isinstance(of_call, dict):
            of_call[session.key] = session
        else:
            self._by_call[session.call_id] = {of_call.key: of_call, session.key: session}

    def discard(self, session: Session) -> None:
        if self.sessions.pop(session.key, None) is None:
            return
        index = bisect.bisect_left(self._serials, session.serial)
        del self._serials[index]
        del self._ordered[index]
        of_call = self._by_call[session.call_id]
        if not isinstance(of_call, dict):
            del self._by_call[session.call_id]
            return
        del of_call[session.key]
        if len(of_call) == 1:
            (self._by_call[session.call_id],) = of_call.values()

    def listing(self, position: int, call_id: str | None = None) -> Iterator[Session]:
        """The sessions from serial ``position`` on, in serial order; only ``call_id``'s when given.
        Finds where to start without walking the sessions before it."""
        if call_id is not None:
            of_call = self._by_call.get(call_id)
            found = [] if of_call is None else of_call.values() if isinstance(of_call, dict) else [of_call]
            return (session for session in found if session.serial >= position)
        start = bisect.bisect_left(self._serials, position)
        return itertools.islice(self._ordered, start, None)
