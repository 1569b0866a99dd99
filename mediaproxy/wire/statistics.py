"""The session statistics a relay sends (``remove`` reply, ``expired``, ``sessions``), checked.

A record reaches the accounting backends, the management interface and the call table, so a
relay's JSON is checked field by field here: a record that does not have the documented shape
is refused as a whole with a :class:`ValueError` naming the field, never half used.
"""

from __future__ import annotations

from mediaproxy.wire import jsontext

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


def _check_fields(value: dict, fields: dict, where: str) -> None:
    for name, types in fields.items():
        if name in value and (not isinstance(value[name], types) or isinstance(value[name], bool)):
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


def parse_record(text: str) -> dict:
    """One session's statistics, as in ``expired`` and the ``remove`` reply."""
    return check_record(jsontext.loads(text, MAX_DEPTH))


def parse_sessions(text: str) -> list[dict]:
    """A relay's ``sessions`` answer: a list of records."""
    value = jsontext.loads(text, MAX_DEPTH + 1)
    if not isinstance(value, list):
        raise ValueError("the sessions answer is not a JSON list")
    return [check_record(item) for item in value]


def parse_summary(text: str) -> dict:
    value = jsontext.loads(text, 3)
    if not isinstance(value, dict):
        raise ValueError("the summary answer is not a JSON object")
    return value
