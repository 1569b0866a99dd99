"""Keeping the relay's sessions across restarts: every command's change at once, what packets
changed (a latch, first media, the kernel path) at the end of the reactor turn, the userspace
counters every COUNTERS_INTERVAL, all of it in a statefile.StateFile.

The session manager owns one :class:`Keeping`; it takes the sessions back at start (their ports
and kernel entries are the plane's) and then opens the keeping on the restored sessions.
"""

from __future__ import annotations

from collections.abc import Callable

from mediaproxy.relay.model import serialize
from mediaproxy.relay.model.paths import KERNEL
from mediaproxy.relay.model.session import Session
from mediaproxy.runtime import heap

# how often sessions whose userspace counters moved are kept (a crash loses at most this much counting)
COUNTERS_INTERVAL = 60

Sessions = dict[tuple[str, str], Session]


def take_counts(session: Session, take: Callable) -> bool:
    """Fold what a forwarder whose counts end with the relay (userspace workers) counted into the
    substreams' own counts, so it is kept; ``take`` is its checkpoint or remove. True when anything moved."""
    moved = False
    for stream in session.streams:
        for substream in (stream.rtp, stream.rtcp):
            if substream.path == KERNEL:
                counts = take(substream)
                if counts is not None and any(counts):
                    substream.add_kernel_counts(*counts)
                    moved = True
    return moved


class Keeping:
    """The sessions of ``sessions`` (the manager's registry, by key) kept in a state file, once
    :meth:`open` gave it one."""

    def __init__(self, clock, sessions: Sessions, checkpoint: Callable) -> None:  # an IReactorTime
        self.clock = clock
        self.sessions = sessions
        self.checkpoint = checkpoint  # the forwarder's (IForwarder.checkpoint)
        self.state = None  # a statefile.StateFile, once open
        self._changed: set[tuple[str, str]] = set()
        self._pending = None  # the call that keeps what changed in this reactor turn

    def open(self, state) -> None:  # a statefile.StateFile
        self.state = state
        state.open(
            lambda: {session.key: serialize.dump_session(session) for session in self.sessions.values()},
            lambda: len(self.sessions),
        )
        for session in self.sessions.values():
            session.kept_packets = session.userspace_packets()

    def changed(self, session: Session) -> None:
        """Something no command made changed (a latch, first media, the kernel path): keep it at the
        end of this reactor turn, so a relay killed right after still finds it (and its kernel entry)."""
        if self.state is not None and session.key in self.sessions:
            self._changed.add(session.key)
            if self._pending is None:
                self._pending = self.clock.callLater(0, self.keep_changed)

    def keep(self, session: Session) -> None:
        if self.state is not None and self.sessions.get(session.key) is session:
            self.state.set(session.key, serialize.dump_session(session))
            self._changed.discard(session.key)
            session.kept_packets = session.userspace_packets()

    def forget(self, session: Session) -> None:
        """The session ended: it is kept no more."""
        self._changed.discard(session.key)
        if self.state is not None:
            self.state.pop(session.key)

    def keep_changed(self) -> None:
        self._pending = None
        changed, self._changed = self._changed, set()
        for key in changed:
            session = self.sessions.get(key)
            if session is not None:
                self.keep(session)

    def keep_counters(self) -> None:
        """Keep the userspace counters that moved (every COUNTERS_INTERVAL: not worth a write a packet)."""
        if self.state is None:
            return
        for session in self.sessions.values():
            moved = take_counts(session, self.checkpoint)
            if moved or session.userspace_packets() != session.kept_packets:
                self.keep(session)
        self.state.squeeze()  # what the last minute's commands kept, deflated off their path
        heap.give_back()  # the texts squeezed and the last statistics listing's pages

    def close(self) -> None:
        """The whole state written once more, and closed."""
        if self._pending is not None and self._pending.active():
            self._pending.cancel()
        self._pending = None
        if self.state is not None:
            self.state.close()
            self.state = None
