"""What the model's transitions ask of the rest of the relay, queued in a session's ``outbox``.

The session manager carries each out in order: kernel entries, sockets, ports, the state file,
logs and refusal counters. Small named tuples: a busy relay makes many.
"""

from __future__ import annotations

from typing import NamedTuple


class Changed(NamedTuple):
    """Something the call's state file should hold changed (a latch, first media, a path)."""

    session: object


class OldCseq(NamedTuple):
    """An offer or answer older than the session's latest: its SDP was ignored."""

    session: object
    cseq: int


class Learnt(NamedTuple):
    """A side of a substream was latched to ``address`` (taken from ``replaced``, if any)."""

    substream: object
    party: str
    address: tuple[str, int]
    replaced: tuple[str, int] | None


class Offload(NamedTuple):
    """Both parties of the substream are known: hand it to the kernel, then set its path."""

    substream: object


class Unload(NamedTuple):
    """The substream's kernel entry must go; its last counters go back to the substream."""

    substream: object


class PathChanged(NamedTuple):
    """The substream's packets now take another path (learning, userspace, kernel, lapsed)."""

    substream: object
    old: str
    new: str


class HoldChanged(NamedTuple):
    stream: object
    on_hold: bool


class Moved(NamedTuple):
    """A party's SDP announced another address for the stream: it is learnt again."""

    stream: object
    party: str
    address: tuple[str, int]


class Relearning(NamedTuple):
    """RTCP went quiet; it is learnt afresh instead of ending the call."""

    substream: object
    reason: str


class IceUnselected(NamedTuple):
    """An ICE stream expired: the parties chose another candidate (``probed``: a binding request was seen)."""

    stream: object
    probed: bool


class StreamEnded(NamedTuple):
    """The stream is over: its sockets close and its ports go back to the pool."""

    stream: object


class SessionExpired(NamedTuple):
    """Every stream of the session ended without a ``remove``: report it to its dispatcher."""

    session: object
    reason: str


class Refused(NamedTuple):
    """A peer was refused something (``kind`` is the refusal counter's name)."""

    kind: str
    peer: str
    substream: object
    detail: str = ""
