"""The session statistics a relay sends (``remove`` reply, ``expired``, ``sessions``), checked.

A record reaches the accounting backends, the management interface and the call table, so a
relay's JSON is checked field by field here: a record that does not have the documented shape
is refused as a whole with a :class:`ValueError` naming the field, never half used.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from dataclasses import dataclass, field

from mediaproxy.wire import jsontext

# why a call ended, in the records the dispatcher accounts (``end_reason``)
BYE = "bye"
NO_TRAFFIC = "no-traffic timeout"
ON_HOLD = "on-hold timeout"
CONNTRACK = "conntrack timeout"
RELAY_SHUTDOWN = "relay shutdown"
RELAY_LOST = "relay lost"
UNSELECTED_ICE = "unselected ICE candidate"  # also the status of a stream whose ICE candidate was not chosen
TERMINATED = "terminated"  # by the operator (management terminate), where the proxy did not end the dialog
END_REASONS = (BYE, NO_TRAFFIC, ON_HOLD, CONNTRACK, RELAY_SHUTDOWN, RELAY_LOST, UNSELECTED_ICE)
MEDIA_TIMEOUTS = (NO_TRAFFIC, ON_HOLD, CONNTRACK)
# a stream's status as the relay reports it (the original's words) → the call's end reason
_STATUS_REASONS = {
    "no-traffic timeout": NO_TRAFFIC,
    "on hold timeout": ON_HOLD,
    "conntrack timeout": CONNTRACK,
    UNSELECTED_ICE: UNSELECTED_ICE,
}


@dataclass
class StreamRecord:
    """One stream's statistics as a relay reports them (the JSON form: :meth:`as_json`)."""

    media_type: str = "Unknown"
    status: str = "Unknown"
    timeout_wait: float = 0
    caller_codec: str = "Unknown"
    callee_codec: str = "Unknown"
    start_time: float = 0  # seconds since the session started
    end_time: float = 0
    post_dial_delay: float | None = None
    caller_bytes: float = 0
    callee_bytes: float = 0
    caller_packets: float = 0
    callee_packets: float = 0
    caller_local: str = "Unknown"  # "ip:port", or "Unknown"
    callee_local: str = "Unknown"
    caller_remote: str = "Unknown"
    callee_remote: str = "Unknown"
    # in a listing of live sessions: the path its RTP takes (learning, userspace, kernel) or on hold
    path: str | None = None

    def as_json(self) -> dict:
        value = {name: getattr(self, name) for name in _STREAM_NAMES}
        if self.path is not None:
            value["path"] = self.path
        return value


@dataclass
class SessionRecord:
    """One session's statistics: what a relay reports (``remove`` reply, ``expired``, ``sessions``),
    and with what the dispatcher adds when the call ends, what accounting stores (its JSON form,
    :meth:`as_json`, is the ``info`` column and the spool's record)."""

    call_id: str
    from_tag: str
    from_uri: str | None = None
    to_tag: str | None = None
    to_uri: str | None = None
    start_time: float | None = None
    duration: float = 0
    caller_ua: str | None = "Unknown"
    callee_ua: str | None = "Unknown"
    username: str | None = None
    end_reason: str | None = None
    dialog_id: str | None = None
    streams: list[StreamRecord] = field(default_factory=list)
    # set by the dispatcher when the call ends (not sent by relays)
    timed_out: bool | None = None
    all_streams_ice: bool | None = None
    statistics_at: float | None = None  # the record is as of then: the call's relay was lost
    relay: str | None = None  # the relay's address as the dispatcher knows it (its caller_local may be private)
    # in a page of sessions: set up through the dispatcher that asked
    yours: bool | None = None

    def as_json(self) -> dict:
        """The record as JSON: what :meth:`from_json` reads back. The dispatcher's and the
        listing's own fields appear only when set, as in the original's records."""
        value = {name: getattr(self, name) for name in _SESSION_NAMES}
        value["streams"] = [stream.as_json() for stream in self.streams]
        for name in _OPTIONAL_NAMES:
            if getattr(self, name) is not None:
                value[name] = getattr(self, name)
        return value

    def totals(self) -> tuple[float, float, float, float]:
        """Packets the caller and the callee sent, then their bytes, over all streams."""
        streams = self.streams
        return (
            sum(s.caller_packets for s in streams),
            sum(s.callee_packets for s in streams),
            sum(s.caller_bytes for s in streams),
            sum(s.callee_bytes for s in streams),
        )

    def traffic(self) -> str:
        """What the streams carried each way, for a log line."""
        caller_packets, callee_packets, caller_bytes, callee_bytes = self.totals()
        return (
            f"caller sent {caller_packets:.0f} packets ({caller_bytes:.0f} bytes), "
            f"callee {callee_packets:.0f} packets ({callee_bytes:.0f} bytes)"
        )

    @classmethod
    def from_json(cls, value: object) -> SessionRecord:
        """A record from its JSON form, checked field by field: ValueError naming the field for
        anything not of the documented shape. Fields it does not know are left out."""
        if not isinstance(value, dict):
            raise ValueError("a session record is not a JSON object")
        missing = [name for name in REQUIRED if name not in value]
        if missing:
            raise ValueError("a session record lacks " + ", ".join(missing))
        _check_fields(value, SESSION_FIELDS, "")
        streams = value.get("streams", [])
        if not isinstance(streams, list):
            raise ValueError("streams is not a list")
        checked = []
        for number, stream in enumerate(streams):
            if not isinstance(stream, dict):
                raise ValueError(f"stream {number} is not a JSON object")
            _check_fields(stream, STREAM_FIELDS, f"stream {number} ")
            checked.append(StreamRecord(**{name: stream[name] for name in STREAM_FIELDS if name in stream}))
        return cls(**{name: value[name] for name in SESSION_FIELDS if name in value}, streams=checked)


def _allowed_types(cls: type) -> dict[str, tuple[type, ...]]:
    """Each field's JSON types, from the dataclass's annotations: a number may be an int or a
    float, any optional field may be null."""
    allowed = {}
    for name, hint in typing.get_type_hints(cls).items():
        if name == "streams":
            continue
        options = typing.get_args(hint) or (hint,)
        types: list[type] = []
        for option in options:
            types.extend((int, float) if option in (int, float) else (option,))
        allowed[name] = tuple(dict.fromkeys(types))
    return allowed


# the checks are the dataclasses' own annotations: the schema and the types cannot drift apart
SESSION_FIELDS = _allowed_types(SessionRecord)
STREAM_FIELDS = _allowed_types(StreamRecord)
REQUIRED = ("call_id", "from_tag")
_OPTIONAL_NAMES = ("timed_out", "all_streams_ice", "statistics_at", "relay", "yours")
_SESSION_NAMES = tuple(name for name in SESSION_FIELDS if name not in _OPTIONAL_NAMES)
_STREAM_NAMES = tuple(name for name in STREAM_FIELDS if name != "path")
# a session object, its streams list, a stream object
MAX_DEPTH = 3


def _check_fields(value: dict, fields: dict, where: str) -> None:
    for name, types in fields.items():
        if name in value and (not isinstance(value[name], types) or (isinstance(value[name], bool) and bool not in types)):
            raise ValueError(f"{where}{name} has the wrong type ({type(value[name]).__name__})")


def uri_user(uri: str | None) -> str | None:
    """The user part of a SIP URI as the proxy sends it (``alice@example.com``, ``sip:alice@…;…``),
    or None when it has none."""
    if not uri:
        return None
    address = uri.strip().strip("<>")
    for scheme in ("sip:", "sips:", "tel:"):
        if address.lower().startswith(scheme):
            address = address[len(scheme) :]
            break
    user, at, _ = address.partition("@")
    user = user.split(";")[0].split(":")[0]
    return user if at and user else None


def expiry_reason(record: SessionRecord) -> str:
    """Why a relay expired a session: what it says, or for a relay that does not say (the
    original), what its streams' statuses tell: a session expires with no stream timed out
    only when its relay stops."""
    said = record.end_reason
    if said in END_REASONS and said != BYE:
        return said
    statuses = [stream.status for stream in record.streams]
    if statuses and all(status == UNSELECTED_ICE for status in statuses):
        return UNSELECTED_ICE
    for status in statuses:
        if status in _STATUS_REASONS and status != UNSELECTED_ICE:
            return _STATUS_REASONS[status]
    return RELAY_SHUTDOWN


def stream_end_reason(status: str) -> str | None:
    """The end reason a stream's final status gives its session, when it is an expiry."""
    return _STATUS_REASONS.get(status)


def parse_record(text: str) -> SessionRecord:
    """One session's statistics, as in ``expired`` and the ``remove`` reply."""
    return SessionRecord.from_json(jsontext.loads(text, MAX_DEPTH))


@dataclass
class SessionList:
    """A relay's ``sessions`` answer, or one page of it (``next`` is where the next page starts)."""

    records: list[SessionRecord] = field(default_factory=list)
    next: int | None = None


# a relay answers a paged request with pages of about this many bytes, far below the link's line limit
PAGE_BYTES = 512 * 1024


def parse_sessions(text: str) -> SessionList:
    """A relay's ``sessions`` answer: the original's JSON list of records (all of them), or a page
    ``{"sessions": [...], "next": n | null}``."""
    records: list[SessionRecord] = []
    following = scan_sessions(text, records.append)
    return SessionList(records, following)


_WHITESPACE = " \t\r\n"
_NEITHER = "the sessions answer is neither a JSON list nor a page of sessions"


def scan_sessions(text: str, each: Callable[[SessionRecord], object]) -> int | None:
    """Read a ``sessions`` answer (as :func:`parse_sessions`) one record at a time, each handed to
    ``each`` as it is read; returns where the next page starts (None: this was the last).

    A page of a few thousand calls parsed whole is megabytes of small objects at once, and the
    interpreter's allocator keeps an arena of them (1 MiB) for as long as anything made meanwhile
    lives in it; read record by record, what a pull allocates stays in the arenas it has. A record
    that is not one raises ValueError, after ``each`` has had the records before it."""
    index = _skip(text, 0)
    if text.startswith("[", index):  # the original's answer: every record, in one list
        index = _skip(text, _scan_records(text, index, 1, each))
        if index != len(text):
            raise ValueError(_NEITHER)
        return None
    if not text.startswith("{", index):
        raise ValueError(_NEITHER)
    following, index = _scan_page(text, index, each)
    if following is not None and (isinstance(following, bool) or not isinstance(following, int) or following < 0):
        raise ValueError("the next page of sessions is not a position")
    return following


def _scan_page(text: str, index: int, each: Callable[[SessionRecord], object]) -> tuple[object, int]:
    """The page object at ``text[index]``: its records to ``each``; returns its ``next`` (as
    given) and the index after it, which must be the end of the answer."""
    following = None
    listed = False
    index = _skip(text, index + 1)
    while not text.startswith("}", index):
        name, index = _member_name(text, index)
        if name == "sessions":
            if listed or not text.startswith("[", index):
                raise ValueError(_NEITHER)
            index = _scan_records(text, index, 2, each)
            listed = True
        else:
            value, index = jsontext.decode_at(text, index, MAX_DEPTH + 1)
            if name == "next":
                following = value
        index = _after_member(text, index)
    if not listed or _skip(text, index + 1) != len(text):
        raise ValueError(_NEITHER)
    return following, index


def _member_name(text: str, index: int) -> tuple[str, int]:
    """A member's name and the index of its value."""
    name, index = jsontext.decode_at(text, index, 0)
    index = _skip(text, index)
    if not isinstance(name, str) or not text.startswith(":", index):
        raise ValueError(_NEITHER)
    return name, _skip(text, index + 1)


def _after_member(text: str, index: int) -> int:
    """Past the comma after a member (none before the closing brace); at the brace itself."""
    index = _skip(text, index)
    if text.startswith(",", index):
        index = _skip(text, index + 1)
        if text.startswith("}", index):
            raise ValueError(_NEITHER)  # a trailing comma
    elif not text.startswith("}", index):
        raise ValueError(_NEITHER)
    return index


def _skip(text: str, index: int) -> int:
    while index < len(text) and text[index] in _WHITESPACE:
        index += 1
    return index


def _scan_records(text: str, index: int, level: int, each: Callable[[SessionRecord], object]) -> int:
    """The JSON list of records at ``text[index]``, nested ``level`` deep in the answer: each
    record to ``each``; returns the index after the list."""
    index = _skip(text, index + 1)
    if text.startswith("]", index):
        return index + 1
    while True:
        value, index = jsontext.decode_at(text, index, MAX_DEPTH + 2 - level)
        each(SessionRecord.from_json(value))
        index = _skip(text, index)
        if text.startswith("]", index):
            return index + 1
        if not text.startswith(",", index):
            raise ValueError(_NEITHER)
        index = _skip(text, index + 1)


def format_page(records: list[str], following: int | None) -> str:
    """A page of sessions from records already in JSON."""
    return '{"sessions":[' + ",".join(records) + '],"next":' + ("null" if following is None else str(following)) + "}"


def parse_summary(text: str) -> dict:
    value = jsontext.loads(text, 3)
    if not isinstance(value, dict):
        raise ValueError("the summary answer is not a JSON object")
    return value
