"""The session statistics a relay sends (``remove`` reply, ``expired``, ``sessions``), checked.

A record reaches the accounting backends, the management interface and the call table, so a
relay's JSON is checked field by field here: a record that does not have the documented shape
is refused as a whole with a :class:`ValueError` naming the field, never half used.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from mediaproxy.wire import jsontext

# why a call ended, in the records the dispatcher accounts (``end_reason``)
BYE = "bye"
NO_TRAFFIC = "no-traffic timeout"
ON_HOLD = "on-hold timeout"
CONNTRACK = "conntrack timeout"
RELAY_SHUTDOWN = "relay shutdown"
RELAY_LOST = "relay lost"
UNSELECTED_ICE = "unselected ICE candidate"  # also the status of a stream whose ICE candidate was not chosen
END_REASONS = (BYE, NO_TRAFFIC, ON_HOLD, CONNTRACK, RELAY_SHUTDOWN, RELAY_LOST, UNSELECTED_ICE)
MEDIA_TIMEOUTS = (NO_TRAFFIC, ON_HOLD, CONNTRACK)
# a stream's status as the relay reports it (the original's words) → the call's end reason
_STATUS_REASONS = {
    "no-traffic timeout": NO_TRAFFIC,
    "on hold timeout": ON_HOLD,
    "conntrack timeout": CONNTRACK,
    UNSELECTED_ICE: UNSELECTED_ICE,
}

_NUMBER = (int, float)
_TEXT = (str,)
_OPTIONAL_TEXT = (str, type(None))
_OPTIONAL_NUMBER = (int, float, type(None))

SESSION_FIELDS = {
    "call_id": _TEXT,
    "from_tag": _TEXT,
    "from_uri": _OPTIONAL_TEXT,
    "to_tag": _OPTIONAL_TEXT,
    "to_uri": _OPTIONAL_TEXT,
    "start_time": _OPTIONAL_NUMBER,
    "duration": _NUMBER,
    "caller_ua": _OPTIONAL_TEXT,
    "callee_ua": _OPTIONAL_TEXT,
    "username": _OPTIONAL_TEXT,
    "end_reason": _OPTIONAL_TEXT,
    "dialog_id": _OPTIONAL_TEXT,
    "yours": (bool,),  # in a page of sessions: set up through the dispatcher that asked
}
REQUIRED = ("call_id", "from_tag")
STREAM_FIELDS = {
    "media_type": _TEXT,
    "status": _TEXT,
    "timeout_wait": _NUMBER,
    "caller_codec": _TEXT,
    "callee_codec": _TEXT,
    "start_time": _NUMBER,
    "end_time": _NUMBER,
    "post_dial_delay": _OPTIONAL_NUMBER,
    "caller_bytes": _NUMBER,
    "callee_bytes": _NUMBER,
    "caller_packets": _NUMBER,
    "callee_packets": _NUMBER,
    "caller_local": _TEXT,
    "callee_local": _TEXT,
    "caller_remote": _TEXT,
    "callee_remote": _TEXT,
}
# a session object, its streams list, a stream object
MAX_DEPTH = 3


@dataclass
class StreamRecord:
    """One stream's statistics as a relay reports them (the JSON form: :meth:`as_json`)."""

    media_type: str
    status: str
    timeout_wait: int
    caller_codec: str
    callee_codec: str
    start_time: int  # seconds since the session started
    end_time: int
    post_dial_delay: float | None
    caller_bytes: int
    callee_bytes: int
    caller_packets: int
    callee_packets: int
    caller_local: str  # "ip:port", or "Unknown"
    callee_local: str
    caller_remote: str
    callee_remote: str


@dataclass
class SessionRecord:
    """One session's statistics as a relay reports them: ``remove`` reply, ``expired``, ``sessions``."""

    call_id: str
    from_tag: str
    from_uri: str | None = None
    to_tag: str | None = None
    to_uri: str | None = None
    start_time: float | None = None
    duration: int = 0
    caller_ua: str = "Unknown"
    callee_ua: str = "Unknown"
    username: str | None = None
    end_reason: str | None = None
    dialog_id: str | None = None
    streams: list[StreamRecord] = field(default_factory=list)

    def as_json(self) -> dict:
        """The record as it goes over the relay link (what :func:`check_record` accepts)."""
        return asdict(self)


def _check_fields(value: dict, fields: dict, where: str) -> None:
    for name, types in fields.items():
        if name in value and (not isinstance(value[name], types) or (isinstance(value[name], bool) and bool not in types)):
            raise ValueError(f"{where}{name} has the wrong type ({type(value[name]).__name__})")


def check_record(record: object) -> dict:
    if not isinstance(record, dict):
        raise ValueError("a session record is not a JSON object")
    missing = [name for name in REQUIRED if name not in record]
    if missing:
        raise ValueError("a session record lacks " + ", ".join(missing))
    _check_fields(record, SESSION_FIELDS, "")
    streams = record.get("streams", [])
    if not isinstance(streams, list):
        raise ValueError("streams is not a list")
    for number, stream in enumerate(streams):
        if not isinstance(stream, dict):
            raise ValueError(f"stream {number} is not a JSON object")
        _check_fields(stream, STREAM_FIELDS, f"stream {number} ")
    return record


def expiry_reason(record: dict) -> str:
    """Why a relay expired a session: what it says, or for a relay that does not say (the
    original), what its streams' statuses tell: a session expires with no stream timed out
    only when its relay stops."""
    said = record.get("end_reason")
    if said in END_REASONS and said != BYE:
        return said
    statuses = [stream.get("status") for stream in record.get("streams", [])]
    if statuses and all(status == UNSELECTED_ICE for status in statuses):
        return UNSELECTED_ICE
    for status in statuses:
        if status in _STATUS_REASONS and status != UNSELECTED_ICE:
            return _STATUS_REASONS[status]
    return RELAY_SHUTDOWN


def stream_end_reason(status: str) -> str | None:
    """The end reason a stream's final status gives its session, when it is an expiry."""
    return _STATUS_REASONS.get(status)


def parse_record(text: str) -> dict:
    """One session's statistics, as in ``expired`` and the ``remove`` reply."""
    return check_record(jsontext.loads(text, MAX_DEPTH))


@dataclass
class SessionList:
    """A relay's ``sessions`` answer, or one page of it (``next`` is where the next page starts)."""

    records: list[dict] = field(default_factory=list)
    next: int | None = None


# a relay answers a paged request with pages of about this many bytes, far below the link's line limit
PAGE_BYTES = 512 * 1024


def parse_sessions(text: str) -> SessionList:
    """A relay's ``sessions`` answer: the original's JSON list of records (all of them), or a page
    ``{"sessions": [...], "next": n | null}``."""
    value = jsontext.loads(text, MAX_DEPTH + 2)
    if isinstance(value, list):
        return SessionList([check_record(item) for item in value])
    if not isinstance(value, dict) or not isinstance(value.get("sessions"), list):
        raise ValueError("the sessions answer is neither a JSON list nor a page of sessions")
    following = value.get("next")
    if following is not None and (isinstance(following, bool) or not isinstance(following, int) or following < 0):
        raise ValueError("the next page of sessions is not a position")
    return SessionList([check_record(item) for item in value["sessions"]], following)


def format_page(records: list[str], following: int | None) -> str:
    """A page of sessions from records already in JSON."""
    return '{"sessions":[' + ",".join(records) + '],"next":' + ("null" if following is None else str(following)) + "}"


def parse_summary(text: str) -> dict:
    value = jsontext.loads(text, 3)
    if not isinstance(value, dict):
        raise ValueError("the summary answer is not a JSON object")
    return value
