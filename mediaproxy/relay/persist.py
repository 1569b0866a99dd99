"""A relay session as plain JSON and back, so calls outlive the relay process.

What is kept is what the relay learnt and counted: the signalling (offers and answers), the ports,
each side's latched address and its counters, the timers' deadlines (wall-clock times) and which
substreams the kernel forwards. A restarted relay re-binds the same ports, takes the kernel's
entries back instead of deleting them, and goes on as if it had never stopped; kernel-forwarded
media does not even notice.
"""

from __future__ import annotations

from dataclasses import asdict

from mediaproxy.relay.media import ALIVE, CALLEE, CALLER, Side, Stream, Substream
from mediaproxy.wire.headers import SignalingInfo

VERSION = 1
_SIDE_FIELDS = (
    "in_use", "got_rtp", "got_stun_probing", "deadline", "timer_reason", "timer_seconds", "packets", "bytes", "latch_level",
    "latched_at", "kernel_packets", "kernel_bytes", "codec",
)  # fmt: skip
_PARTY_FIELDS = ("ip", "port", "direction", "uses_ice", "seen", "signaling_ip")
_STREAM_FIELDS = ("media_type", "status", "timeout_wait", "create_time", "start_time", "end_time", "first_media_time")
_SESSION_FIELDS = ("call_id", "caller_tag", "from_uri", "to_uri", "to_tag", "caller_ua", "callee_ua", "created", "start_time", "dialog_id")


def session_key(session) -> str:  # noqa: ANN001
    return f"{session.call_id} {session.caller_tag}"


def dump_session(session) -> dict:  # noqa: ANN001
    streams = session.streams
    index = {id(stream): number for number, stream in enumerate(streams)}
    return {
        **{name: getattr(session, name) for name in _SESSION_FIELDS},
        "signaling": asdict(session.signaling),
        "dispatcher": list(session.dispatcher) if isinstance(session.dispatcher, tuple) else session.dispatcher,
        "pair": list(session.pair),
        "previous_pair": list(session.previous_pair) if session.previous_pair is not None else None,
        "offers": [[pair[0], pair[1], [index[id(stream)] for stream in offered]] for pair, offered in session.offers.items()],
        "streams": [_dump_stream(stream) for stream in streams],
    }


def _dump_stream(stream: Stream) -> dict:
    return {
        **{name: getattr(stream, name) for name in _STREAM_FIELDS},
        "ports": [stream.caller_port, stream.callee_port],
        "local_ips": [stream.local(CALLER)[0], stream.local(CALLEE)[0]],
        "parties": {party: {name: getattr(stream.parties[party], name) for name in _PARTY_FIELDS} for party in (CALLER, CALLEE)},
        "rtp": _dump_substream(stream.rtp),
        "rtcp": _dump_substream(stream.rtcp),
    }


def _dump_substream(substream: Substream) -> dict:
    return {
        "kernel": substream.kernel is not None,
        "reoffload": substream.reoffload,
        CALLER: _dump_side(substream.caller),
        CALLEE: _dump_side(substream.callee),
    }


def _dump_side(side: Side) -> dict:
    return {"remote": list(side.remote) if side.remote is not None else None, **{name: getattr(side, name) for name in _SIDE_FIELDS}}


def kernel_flows(state: dict) -> set[tuple]:
    """The conntrack keys a kept session's substreams may have entries for, to keep them at start.

    Any substream with a learnt caller may; the entries are taken back for those that have both
    sides learnt (see :func:`load_session`).
    """
    keys = set()
    for stream in state.get("streams", []):
        if stream["status"] not in ALIVE:
            continue
        for kind, offset in (("rtp", 0), ("rtcp", 1)):
            remote = stream[kind][CALLER]["remote"]
            if remote is not None:
                keys.add(((remote[0], remote[1]), (stream["local_ips"][0], stream["ports"][0] + offset)))
    return keys


class GoneEndpoint:
    """Where a stream that had ended before the restart had its sockets: nothing to bind."""

    __slots__ = ("local", "receiver")

    def __init__(self, ip: str, port: int) -> None:
        self.local = (ip, port)
        self.receiver = None

    def send(self, data: bytes, destination: tuple[str, int]) -> None:
        pass

    def close(self) -> None:
        pass


def load_session(manager, state: dict):  # noqa: ANN001, ANN201
    """Rebuild a kept session: its live streams' ports claimed and bound again, its kernel entries
    (those the forwarder kept at start) taken back. Raises OSError, PortsExhausted, or KeyError,
    TypeError or ValueError for a state that is not a session's."""
    from mediaproxy.relay.session import Session  # noqa: PLC0415 - the session module uses this one's caller

    signaling = SignalingInfo(**state["signaling"])
    headers = {"call_id": state["call_id"], "from_tag": state["caller_tag"], "from_uri": state["from_uri"], "to_uri": state["to_uri"]}
    dispatcher = state["dispatcher"]
    session = Session(
        manager, {**headers, "signaling_ip": signaling.caller_ip or ""}, tuple(dispatcher) if isinstance(dispatcher, list) else dispatcher
    )
    session.signaling = signaling
    for name in _SESSION_FIELDS:
        setattr(session, name, state[name])
    session.pair = tuple(state["pair"])
    session.previous_pair = tuple(state["previous_pair"]) if state["previous_pair"] is not None else None
    claimed = []
    try:
        for saved in state["streams"]:
            session.streams.append(_load_stream(manager, session, saved, claimed))
    except Exception:
        for stream in session.streams:
            if stream.alive:
                stream.close("closed")
        for port in claimed:
            manager.pool.release(port)
        raise
    session.offers = {(caller, callee): [session.streams[number] for number in numbers] for caller, callee, numbers in state["offers"]}
    for stream in session.streams:
        if stream.alive:
            _adopt_kernel(manager, stream, state)
    return session


def _load_stream(manager, session, saved: dict, claimed: list[int]) -> Stream:  # noqa: ANN001
    caller_port, callee_port = saved["ports"]
    caller_ip, callee_ip = saved["local_ips"]
    if saved["status"] in ALIVE:
        caller = manager.pool.claim(caller_port, lambda port: manager.binder(caller_ip, port))
        claimed.append(caller_port)
        callee = manager.pool.claim(callee_port, lambda port: manager.binder(callee_ip, port))
        claimed.append(callee_port)
    else:
        caller = (caller_port, (GoneEndpoint(caller_ip, caller_port), GoneEndpoint(caller_ip, caller_port + 1)))
        callee = (callee_port, (GoneEndpoint(callee_ip, callee_port), GoneEndpoint(callee_ip, callee_port + 1)))
    stream = Stream(session, saved["media_type"], (caller, callee), manager)
    for name in _STREAM_FIELDS:
        setattr(stream, name, saved[name])
    for party in (CALLER, CALLEE):
        for name, value in saved["parties"][party].items():
            if name in _PARTY_FIELDS:
                setattr(stream.parties[party], name, value)
    for kind in ("rtp", "rtcp"):
        substream = getattr(stream, kind)
        substream.reoffload = saved[kind]["reoffload"]
        for party in (CALLER, CALLEE):
            side = substream.side(party)
            values = saved[kind][party]
            side.remote = tuple(values["remote"]) if values["remote"] is not None else None
            for name in _SIDE_FIELDS:
                setattr(side, name, values[name])
    if stream.alive:
        pending = [side.deadline for side in stream.all_sides() if side.deadline is not None]
        if pending:
            stream.schedule(min(pending))  # a deadline passed while the relay was away fires at once
    return stream


def _adopt_kernel(manager, stream: Stream, state: dict) -> None:  # noqa: ANN001
    saved = state["streams"][stream.session.streams.index(stream)]
    for kind in ("rtp", "rtcp"):
        substream = getattr(stream, kind)
        if substream.caller.remote is None or substream.callee.remote is None:
            continue
        if manager.forwarder.adopt(substream):
            for side in substream.sides:  # an entry is made only once both sides sent media
                side.in_use = side.got_rtp = True
                side.deadline = None
        elif saved[kind]["kernel"]:
            # the entry lapsed while the relay was away: media that comes now goes back to the kernel
            substream.reoffload = True
