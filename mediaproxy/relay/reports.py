"""What the relay reports of its sessions, as functions over the session manager: the
dispatcher's statistics listing, the summary (with its metrics), and how a path is shown."""

from __future__ import annotations

from mediaproxy import __version__
from mediaproxy.relay.model.paths import KERNEL, LEARNING, USERSPACE
from mediaproxy.relay.model.session import Session
from mediaproxy.wire import statistics as records


def shown_path(forwarder, path: str | None) -> str | None:  # an IForwarder
    """What an operator is told of a path: an offloaded substream is "kernel" in the model, and
    "userspace" when userspace workers took it."""
    return forwarder.name if path == KERNEL else path


def logged_path(forwarder, path: str) -> str:  # an IForwarder
    shown = shown_path(forwarder, path)
    return f"{shown} worker" if path == KERNEL and shown != KERNEL else shown


def session_statistics(manager, session: Session) -> records.SessionRecord:  # a SessionManager
    record = session.statistics(manager.live_counters)
    for stream in record.streams:
        stream.path = shown_path(manager.forwarder, stream.path)
    return record


def statistics(manager) -> list[dict]:  # a SessionManager
    """Every session's record, in the JSON form of the relay link."""
    return [session_statistics(manager, session).as_json() for session in manager.sessions.values()]


def relayed_bytes(manager) -> int:  # a SessionManager
    """Bytes relayed by the sessions alive now (the kernel's live counters included)."""
    return sum(session.relayed_bytes(manager.live_counters) for session in manager.sessions.values())


def stream_count(manager) -> dict[str, int]:  # a SessionManager
    counts: dict[str, int] = {}
    for session in manager.sessions.values():
        for stream in session.streams:
            if stream.alive:
                counts[stream.media_type] = counts.get(stream.media_type, 0) + 1
    return counts


def metrics(manager) -> dict:  # a SessionManager
    """Counts for monitoring (the summary's ``metrics``): alive streams by the path their RTP
    takes (or on hold), packets and bytes relayed since the start, sessions ended by reason,
    ports of ``port_range`` in use and free."""
    streams = {LEARNING: 0, USERSPACE: 0, KERNEL: 0, "on hold": 0}
    packets, bytes_ = manager.closed_packets, manager.closed_bytes
    for session in manager.sessions.values():
        session_packets, session_bytes = session.relayed(manager.live_counters)
        packets += session_packets
        bytes_ += session_bytes
        for stream in session.streams:
            path = shown_path(manager.forwarder, stream.path_taken())
            if path is not None:
                streams[path if path in streams else LEARNING] += 1
    used = len(manager.pool.in_use)
    return {
        "streams": streams,
        "packets_relayed": packets,
        "bytes_relayed": bytes_,
        "sessions_ended": dict(manager.ended),
        "ports": {"used": used, "free": manager.pool.total - used},
    }


def summary(manager, bps_relayed: float) -> dict:  # a SessionManager
    return {
        "ip": manager.relay_ip,
        "version": __version__,
        "status": "halting" if manager.halting else "active",
        "uptime": int(manager.clock.seconds() - manager.started),
        "session_count": len(manager.sessions),
        "stream_count": stream_count(manager),
        "bps_relayed": bps_relayed,
        "refused": manager.refusals.snapshot(),
        "metrics": metrics(manager),
    }
