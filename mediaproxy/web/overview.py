"""What the live sessions page shows, from the relays' summaries and session records.

Pure: it takes what the dispatcher fetched and gives the JSON the page renders. Every string in
it may come from a SIP header (URIs, user agents, call ids): the page puts them in the document
as text, never as markup.
"""

from __future__ import annotations

from mediaproxy.wire.jsontext import number
from mediaproxy.wire.statistics import SessionRecord, StreamRecord

DEFAULT_LIMIT = 200
MAX_LIMIT = 1000
MAX_QUERY = 200


def overview(summaries: list[dict], records: list[SessionRecord], now: float, query: str = "", limit: int = DEFAULT_LIMIT) -> dict:
    """The relays with their load, and the calls (newest first) that match ``query`` (a piece of
    a call id, URI, user, address or relay, any case), at most ``limit`` of them."""
    wanted = query.strip().lower()[:MAX_QUERY]
    matching = [record for record in records if not wanted or wanted in _searchable(record)]
    matching.sort(key=lambda record: record.start_time or 0, reverse=True)
    limit = max(1, min(limit, MAX_LIMIT))
    return {
        "generated_at": now,
        "relays": [_relay(summary) for summary in summaries],
        "calls": len(records),
        "matching": len(matching),
        "sessions": [_session(record, now) for record in matching[:limit]],
    }


def _relay(summary: dict) -> dict:
    metrics = summary.get("metrics") if isinstance(summary.get("metrics"), dict) else {}
    ports = metrics.get("ports") if isinstance(metrics.get("ports"), dict) else {}
    streams = metrics.get("streams") if isinstance(metrics.get("streams"), dict) else {}
    return {
        "ip": str(summary.get("ip", "?")),
        "status": str(summary.get("status", "?")),
        "drained": bool(summary.get("drained", False)),
        "version": str(summary.get("version", "")),
        "uptime": number(summary.get("uptime")),
        "sessions": number(summary.get("session_count")),
        "streams": _total(summary.get("stream_count")),
        "bps_relayed": number(summary.get("bps_relayed")),
        "ports_used": number(ports.get("used")),
        "ports_free": number(ports.get("free")),
        "paths": {str(path): number(count) for path, count in streams.items()},
    }


def _total(value: object) -> float:
    """A relay's stream count: by media type (``{"audio": 2}``), or one number from older relays."""
    return sum(number(count) for count in value.values()) if isinstance(value, dict) else number(value)


def _session(record: SessionRecord, now: float) -> dict:
    return {
        "call_id": record.call_id,
        "from_uri": record.from_uri or "",
        "to_uri": record.to_uri or "",
        "username": record.username or "",
        "caller_ua": record.caller_ua or "",
        "callee_ua": record.callee_ua or "",
        "relay": record.relay or "",
        "answered": record.start_time is not None,
        "duration": record.duration if record.start_time is None else max(0, int(now - record.start_time)),
        "streams": [_stream(stream) for stream in record.streams],
    }


def _stream(stream: StreamRecord) -> dict:
    return {
        "media": stream.media_type,
        "status": stream.status,
        "path": stream.path or ("on hold" if stream.status == "on hold" else ""),
        "caller_codec": stream.caller_codec,
        "callee_codec": stream.callee_codec,
        "caller": stream.caller_remote,
        "callee": stream.callee_remote,
        "caller_packets": stream.caller_packets,
        "callee_packets": stream.callee_packets,
        "caller_bytes": stream.caller_bytes,
        "callee_bytes": stream.callee_bytes,
    }


def _searchable(record: SessionRecord) -> str:
    parts = [record.call_id, record.from_uri, record.to_uri, record.username, record.relay]
    for stream in record.streams:
        parts += [stream.caller_remote, stream.callee_remote]
    return "\n".join(part for part in parts if part).lower()
