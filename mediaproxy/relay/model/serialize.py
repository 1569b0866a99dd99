"""A session as plain JSON and back, so calls outlive the relay process.

What is kept is what the relay learnt and counted: the signalling (offers and answers), the ports,
each side's latched address and its counters, the timers' deadlines (wall-clock times) and each
substream's path. A restarted relay re-binds the same ports, takes the kernel's entries back
instead of deleting them, and goes on as if it had never stopped; kernel-forwarded media does not
even notice. Nothing here binds or touches the kernel: :func:`load_session` gives back the model,
and the session manager re-attaches its sockets and entries.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from mediaproxy.relay.model.media import ALIVE, Substream
from mediaproxy.relay.model.paths import KERNEL, LAPSED, LEARNING, PATHS
from mediaproxy.relay.model.policy import MediaPolicy
from mediaproxy.relay.model.session import Session, shared_pair, shared_text
from mediaproxy.relay.model.sides import CALLEE, CALLER, Side
from mediaproxy.relay.model.stream import Stream
from mediaproxy.wire.headers import SignalingInfo

P = ParamSpec("P")
T = TypeVar("T")

VERSION = 2  # 2: positional lists (what follows); 1: objects with named fields, still read
_SIDE_FIELDS = (
    "in_use", "got_rtp", "got_stun_probing", "deadline", "timer_reason", "timer_seconds", "packets", "bytes", "latch_level",
    "latched_at", "kernel_packets", "kernel_bytes", "codec",
)  # fmt: skip
_PARTY_FIELDS = ("ip", "port", "direction", "uses_ice", "seen", "signaling_ip", "asymmetric")
_STREAM_FIELDS = ("media_type", "status", "timeout_wait", "create_time", "start_time", "end_time", "first_media_time")
_SESSION_FIELDS = ("call_id", "caller_tag", "from_uri", "to_uri", "to_tag", "caller_ua", "callee_ua", "created", "start_time", "dialog_id")
_SIGNALING_FIELDS = ("caller_ip", "destination_ip", "username")

# A session is journalled at every command that changes it, so its form is positional: without the
# field names a one-stream session is a third of the text and encodes in half the time. The lists hold
# the fields above in their order (new fields go at the end); :func:`named` gives them their names
# back, and the loaders read that form, which is also what version 1 kept.


def _damage_is_value_error(read: Callable[P, T]) -> Callable[P, T]:
    """A reader of kept state that raises ValueError, not IndexError, for a list too short (the
    relay skips a damaged session with a line and takes back the others)."""

    @functools.wraps(read)
    def reading(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return read(*args, **kwargs)
        except IndexError as error:
            raise ValueError(f"not a kept session ({error})") from None

    return reading


def key_text(key: tuple[str, str]) -> str:
    """A session's key (call_id, caller's tag) as the kept state's files name it."""
    return f"{key[0]} {key[1]}"


def dump_session(session: Session) -> list:
    streams = session.streams
    index = {id(stream): number for number, stream in enumerate(streams)}
    signaling = session.signaling
    dispatcher = session.dispatcher
    return [
        *[getattr(session, name) for name in _SESSION_FIELDS],
        [signaling.caller_ip, signaling.destination_ip, signaling.username],
        list(dispatcher) if isinstance(dispatcher, tuple) else dispatcher,
        session.pair,
        session.previous_pair,
        [[pair[0], pair[1], [index[id(stream)] for stream in offered]] for pair, offered in session.offers],
        [_dump_stream(stream) for stream in streams],
    ]


def _dump_stream(stream: Stream) -> list:
    return [
        *[getattr(stream, name) for name in _STREAM_FIELDS],
        [stream.caller_port, stream.callee_port],
        stream.local_ips,
        [getattr(stream.caller, name) for name in _PARTY_FIELDS],
        [getattr(stream.callee, name) for name in _PARTY_FIELDS],
        _dump_substream(stream.rtp),
        _dump_substream(stream.rtcp),
    ]


def _dump_substream(substream: Substream) -> list:
    return [substream.path, _dump_side(substream.caller), _dump_side(substream.callee)]


def _dump_side(side: Side) -> list:
    # the fields of _SIDE_FIELDS in their order, read directly: a side keeps some of them in
    # shared tuples, whose properties by name cost a dump a sixteenth more
    timer_reason, timer_seconds = side.timer
    latch_level, latched_at = side.latch
    kernel_packets, kernel_bytes = side.kernel
    return [
        side.remote, side.in_use, side.got_rtp, side.got_stun_probing, side.deadline, timer_reason, timer_seconds, side.packets,
        side.bytes, latch_level, latched_at, kernel_packets, kernel_bytes, side.codec,
    ]  # fmt: skip


@_damage_is_value_error
def named(state: dict | list) -> dict:
    """A kept session with its fields named (the form of version 1, which is returned as it is).
    Raises TypeError or ValueError for a list that is not a session's."""
    if isinstance(state, dict):
        return state
    if not isinstance(state, list) or len(state) < len(_SESSION_FIELDS) + 6:
        raise ValueError("not a kept session")
    return _named_session(state)


def _named_session(state: list) -> dict:
    fields = len(_SESSION_FIELDS)
    signaling, dispatcher, pair, previous_pair, offers, streams = state[fields : fields + 6]
    return {
        **dict(zip(_SESSION_FIELDS, state, strict=False)),
        "signaling": dict(zip(_SIGNALING_FIELDS, signaling, strict=False)),
        "dispatcher": dispatcher,
        "pair": pair,
        "previous_pair": previous_pair,
        "offers": offers,
        "streams": [_named_stream(stream) for stream in streams],
    }


def _named_stream(stream: list) -> dict:
    fields = len(_STREAM_FIELDS)
    ports, local_ips, caller, callee, rtp, rtcp = stream[fields : fields + 6]
    return {
        **dict(zip(_STREAM_FIELDS, stream, strict=False)),
        "ports": ports,
        "local_ips": local_ips,
        "parties": {CALLER: dict(zip(_PARTY_FIELDS, caller, strict=False)), CALLEE: dict(zip(_PARTY_FIELDS, callee, strict=False))},
        "rtp": _named_substream(rtp),
        "rtcp": _named_substream(rtcp),
    }


def _named_substream(substream: list) -> dict:
    path, caller, callee = substream
    return {"path": path, CALLER: _named_side(caller), CALLEE: _named_side(callee)}


def _named_side(side: list) -> dict:
    return {"remote": side[0], **dict(zip(_SIDE_FIELDS, side[1:], strict=False))}


@_damage_is_value_error
def kernel_flows(state: dict | list) -> set[tuple]:
    """The conntrack keys a kept session's substreams may have entries for, to keep them at start.

    Any substream with a learnt caller may; the entries are taken back for those that have both
    sides learnt (see the session manager's restore).
    """
    state = named(state)
    keys = set()
    for stream in state.get("streams", []):
        if stream["status"] not in ALIVE:
            continue
        for kind, offset in (("rtp", 0), ("rtcp", 1)):
            remote = stream[kind][CALLER]["remote"]
            if remote is not None:
                keys.add(((remote[0], remote[1]), (stream["local_ips"][0], stream["ports"][0] + offset)))
    return keys


@_damage_is_value_error
def kept_ports(state: dict | list) -> set[int]:
    """The RTP ports of a kept session's live streams, which it claims again at start."""
    state = named(state)
    ports: set[int] = set()
    for stream in state.get("streams", []):
        if stream["status"] in ALIVE:
            ports.update(int(port) for port in stream["ports"])
    return ports


@_damage_is_value_error
def load_session(state: dict | list, serial: int, policy: MediaPolicy, clock) -> Session:
    """The session ``state`` describes, without sockets. Raises KeyError, TypeError or ValueError
    for a state that is not a session's."""
    state = named(state)
    signaling = SignalingInfo(**state["signaling"])
    headers = {"call_id": state["call_id"], "from_tag": state["caller_tag"], "from_uri": state["from_uri"], "to_uri": state["to_uri"]}
    dispatcher = state["dispatcher"]
    session = Session(
        {**headers, "signaling_ip": signaling},
        tuple(dispatcher) if isinstance(dispatcher, list) else dispatcher,
        serial,
        policy,
        clock,
    )
    for name in _SESSION_FIELDS:
        setattr(session, name, state[name])
    session.caller_ua, session.callee_ua = shared_text(session.caller_ua), shared_text(session.callee_ua)
    session.pair = shared_pair(tuple(state["pair"]))
    session.previous_pair = shared_pair(tuple(state["previous_pair"])) if state["previous_pair"] is not None else None
    session.streams = tuple(_load_stream(session, saved) for saved in state["streams"])
    session.offers = tuple(
        (shared_pair((caller, callee)), tuple(session.streams[number] for number in numbers)) for caller, callee, numbers in state["offers"]
    )
    return session


def _load_stream(session: Session, saved: dict) -> Stream:
    caller_ip, callee_ip = saved["local_ips"]
    caller_port, callee_port = saved["ports"]
    stream = Stream(session, saved["media_type"], (int(caller_port), int(callee_port)), (caller_ip, callee_ip))
    for name in _STREAM_FIELDS:
        setattr(stream, name, saved[name])
    for party in (CALLER, CALLEE):
        for name, value in saved["parties"][party].items():
            if name in _PARTY_FIELDS:
                setattr(stream.party(party), name, value)
    for kind in ("rtp", "rtcp"):
        substream = getattr(stream, kind)
        substream.path = _path(saved[kind])
        for party in (CALLER, CALLEE):
            side = substream.side(party)
            values = saved[kind][party]
            side.remote = tuple(values["remote"]) if values["remote"] is not None else None
            for name in _SIDE_FIELDS:
                setattr(side, name, values[name])
            side.asymmetric = bool(stream.party(party).asymmetric)
    return stream


def _path(saved: dict) -> str:
    path = saved.get("path")
    if path is None:  # written before substreams had a path
        path = KERNEL if saved.get("kernel") else LAPSED if saved.get("reoffload") else LEARNING
    if path not in PATHS:
        raise ValueError(f"unknown path {path!r}")
    return PATHS[PATHS.index(path)]  # the model's own object: the packet path compares identities
