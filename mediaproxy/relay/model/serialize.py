"""A session as plain JSON and back, so calls outlive the relay process.

What is kept is what the relay learnt and counted: the signalling (offers and answers), the ports,
each side's latched address and its counters, the timers' deadlines (wall-clock times) and each
substream's path. A restarted relay re-binds the same ports, takes the kernel's entries back
instead of deleting them, and goes on as if it had never stopped; kernel-forwarded media does not
even notice. Nothing here binds or touches the kernel: :func:`load_session` gives back the model,
and the session manager re-attaches its sockets and entries.
"""

from __future__ import annotations

from dataclasses import asdict

from mediaproxy.relay.model.media import ALIVE, CALLEE, CALLER, KERNEL, LAPSED, LEARNING, PATHS, Side, Stream, Substream
from mediaproxy.relay.model.policy import MediaPolicy
from mediaproxy.relay.model.session import Session
from mediaproxy.wire.headers import SignalingInfo

VERSION = 1
_SIDE_FIELDS = (
    "in_use", "got_rtp", "got_stun_probing", "deadline", "timer_reason", "timer_seconds", "packets", "bytes", "latch_level",
    "latched_at", "kernel_packets", "kernel_bytes", "codec",
)  # fmt: skip
_PARTY_FIELDS = ("ip", "port", "direction", "uses_ice", "seen", "signaling_ip", "asymmetric")
_STREAM_FIELDS = ("media_type", "status", "timeout_wait", "create_time", "start_time", "end_time", "first_media_time")
_SESSION_FIELDS = ("call_id", "caller_tag", "from_uri", "to_uri", "to_tag", "caller_ua", "callee_ua", "created", "start_time", "dialog_id")


def session_key(session: Session) -> str:
    return f"{session.call_id} {session.caller_tag}"


def dump_session(session: Session) -> dict:
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
        "local_ips": list(stream.local_ips),
        "parties": {party: {name: getattr(stream.parties[party], name) for name in _PARTY_FIELDS} for party in (CALLER, CALLEE)},
        "rtp": _dump_substream(stream.rtp),
        "rtcp": _dump_substream(stream.rtcp),
    }


def _dump_substream(substream: Substream) -> dict:
    return {"path": substream.path, CALLER: _dump_side(substream.caller), CALLEE: _dump_side(substream.callee)}


def _dump_side(side: Side) -> dict:
    return {"remote": list(side.remote) if side.remote is not None else None, **{name: getattr(side, name) for name in _SIDE_FIELDS}}


def kernel_flows(state: dict) -> set[tuple]:
    """The conntrack keys a kept session's substreams may have entries for, to keep them at start.

    Any substream with a learnt caller may; the entries are taken back for those that have both
    sides learnt (see the session manager's restore).
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


def kept_ports(state: dict) -> set[int]:
    """The RTP ports of a kept session's live streams, which it claims again at start."""
    ports: set[int] = set()
    for stream in state.get("streams", []):
        if stream["status"] in ALIVE:
            ports.update(int(port) for port in stream["ports"])
    return ports


def load_session(state: dict, serial: int, policy: MediaPolicy, clock) -> Session:  # noqa: ANN001
    """The session ``state`` describes, without sockets. Raises KeyError, TypeError or ValueError
    for a state that is not a session's."""
    signaling = SignalingInfo(**state["signaling"])
    headers = {"call_id": state["call_id"], "from_tag": state["caller_tag"], "from_uri": state["from_uri"], "to_uri": state["to_uri"]}
    dispatcher = state["dispatcher"]
    session = Session(
        {**headers, "signaling_ip": signaling.caller_ip or ""},
        tuple(dispatcher) if isinstance(dispatcher, list) else dispatcher,
        serial,
        policy,
        clock,
    )
    session.signaling = signaling
    for name in _SESSION_FIELDS:
        setattr(session, name, state[name])
    session.pair = tuple(state["pair"])
    session.previous_pair = tuple(state["previous_pair"]) if state["previous_pair"] is not None else None
    session.streams = [_load_stream(session, saved, policy, clock) for saved in state["streams"]]
    session.offers = {(caller, callee): [session.streams[number] for number in numbers] for caller, callee, numbers in state["offers"]}
    return session


def _load_stream(session: Session, saved: dict, policy: MediaPolicy, clock) -> Stream:  # noqa: ANN001
    caller_ip, callee_ip = saved["local_ips"]
    caller_port, callee_port = saved["ports"]
    stream = Stream(session, saved["media_type"], (int(caller_port), int(callee_port)), (caller_ip, callee_ip), policy, clock)
    for name in _STREAM_FIELDS:
        setattr(stream, name, saved[name])
    for party in (CALLER, CALLEE):
        for name, value in saved["parties"][party].items():
            if name in _PARTY_FIELDS:
                setattr(stream.parties[party], name, value)
    for kind in ("rtp", "rtcp"):
        substream = getattr(stream, kind)
        substream.path = _path(saved[kind])
        for party in (CALLER, CALLEE):
            side = substream.side(party)
            values = saved[kind][party]
            side.remote = tuple(values["remote"]) if values["remote"] is not None else None
            for name in _SIDE_FIELDS:
                setattr(side, name, values[name])
            side.asymmetric = bool(stream.parties[party].asymmetric)
    return stream


def _path(saved: dict) -> str:
    path = saved.get("path")
    if path is None:  # written before substreams had a path
        path = KERNEL if saved.get("kernel") else LAPSED if saved.get("reoffload") else LEARNING
    if path not in PATHS:
        raise ValueError(f"unknown path {path!r}")
    return PATHS[PATHS.index(path)]  # the model's own object: the packet path compares identities
