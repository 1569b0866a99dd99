"""Dispatcher ↔ relay framing over the mutual-TLS link.

Dispatcher → relay: ``<command> <seq>`` CRLF, the proxy's header lines, an empty line.
Relay → dispatcher: one line each — ``<seq> <payload>``, ``ping``, or ``expired <json>``;
the dispatcher answers ``ping`` with ``pong``.
"""

from __future__ import annotations

from dataclasses import dataclass

from mediaproxy.datatypes import ascii_decimal
from mediaproxy.wire import control

COMMANDS = ("update", "remove", "summary", "sessions", "loglevel")
LEVEL_HEADER = "level"  # loglevel's one header (a relay of ours; the original answers error)
MAX_RELAY_LINE = 4 * 1024 * 1024
# dispatcher → relay: the proxy's header lines, already held to these limits by the dispatcher
MAX_COMMAND_LINE = control.MAX_LINE_LENGTH
MAX_COMMAND_LINES = control.MAX_HEADER_LINES


def format_command(command: str, seq: int, header_block: bytes = b"") -> bytes:
    return f"{command} {seq}\r\n".encode() + header_block + b"\r\n"


def format_reply(seq: str, payload: str) -> bytes:
    return f"{seq} {payload}\r\n".encode("utf-8", "surrogateescape")


@dataclass(frozen=True)
class Reply:
    seq: int
    payload: str


@dataclass(frozen=True)
class Expired:
    statistics_json: str


@dataclass(frozen=True)
class Ping:
    pass


@dataclass(frozen=True)
class Garbage:
    line: str
    reason: str


RelayMessage = Reply | Expired | Ping | Garbage


PAGE_HEADER = "page"
# narrows a paged ``sessions`` to one call: how a dispatcher finds a call that another proxy's
# dispatcher set up (an original relay ignores it and lists everything; the asker filters)
CALL_HEADER = "call_id"


@dataclass(frozen=True)
class SessionsRequest:
    """What a ``sessions`` command asks for: everything at once (``position`` None, the original),
    or the page that starts at ``position``, of every session or only of call ``call_id``."""

    position: int | None = None
    call_id: str | None = None

    def header_block(self) -> bytes:
        block = b"" if self.position is None else f"{PAGE_HEADER}: {self.position}\r\n".encode()
        if self.call_id is not None:
            block += f"{CALL_HEADER}: {self.call_id}\r\n".encode("utf-8", "surrogateescape")
        return block


def parse_sessions_request(lines: list[str]) -> SessionsRequest:
    values: dict[str, str] = {}
    for line in lines:
        name, _, value = line.partition(": ")
        if name not in (PAGE_HEADER, CALL_HEADER):
            continue  # what the original's dispatcher might send along is no concern of a listing
        if name in values:
            raise ValueError(f"header {name!r} appears twice")
        values[name] = value
    position = None
    if PAGE_HEADER in values:
        position = ascii_decimal(values[PAGE_HEADER], max_digits=9)
        if position is None:
            raise ValueError(f"page {values[PAGE_HEADER][:20]!r} is not a position")
    call_id = values.get(CALL_HEADER)
    if call_id is not None and position is None:
        raise ValueError("call_id narrows a paged listing only")
    if call_id == "":
        raise ValueError("call_id is empty")
    return SessionsRequest(position, call_id)


def parse_relay_line(line: str) -> RelayMessage:
    if line == "ping":
        return Ping()
    first, _, rest = line.partition(" ")
    if first == "expired":
        return Expired(rest)
    seq = parse_seq(first)
    if seq is None:
        return Garbage(line, "neither a reply, ping nor expired")
    return Reply(seq, rest)


def parse_seq(text: str) -> int | None:
    """A sequence number: ASCII digits only, at most 20 of them."""
    return ascii_decimal(text, max_digits=20)


@dataclass
class RelayCommand:
    command: str
    seq: str
    lines: list[str]
    problem: str | None = None  # set when a line of it could not be taken; the answer is error


class CommandFramer:
    """Relay side: collects ``<command> <seq>`` plus header lines up to the empty line."""

    def __init__(self) -> None:
        self._current: RelayCommand | None = None

    @property
    def between_commands(self) -> bool:
        return self._current is None

    def spoil(self, problem: str) -> None:
        """A line of the current command was unusable (over-long, say): it completes as an error."""
        if self._current is not None and self._current.problem is None:
            self._current.problem = problem

    def line(self, line: str) -> tuple[str, object] | None:
        """Returns ('command', RelayCommand), ('unknown', seq) or ('bad', text) when something completes."""
        if self._current is None:
            if not line:
                return None
            parts = line.split()
            if len(parts) != 2:
                return ("bad", f"command line {line[:80]!r} is not '<command> <seq>'")
            command, seq = parts
            if command not in COMMANDS:
                return ("unknown", seq)
            self._current = RelayCommand(command, seq, [])
            return None
        if not line:
            complete, self._current = self._current, None
            return ("command", complete)
        if len(self._current.lines) >= MAX_COMMAND_LINES:
            self.spoil(f"more than {MAX_COMMAND_LINES} header lines")
        elif self._current.problem is None:
            self._current.lines.append(line)
        return None
