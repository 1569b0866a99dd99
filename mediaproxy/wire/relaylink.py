"""Dispatcher ↔ relay framing over the mutual-TLS link.

Dispatcher → relay: ``<command> <seq>`` CRLF, the proxy's header lines, an empty line.
Relay → dispatcher: one line each — ``<seq> <payload>``, ``ping``, or ``expired <json>``;
the dispatcher answers ``ping`` with ``pong``.
"""

from __future__ import annotations

from dataclasses import dataclass

from mediaproxy.datatypes import ascii_decimal
from mediaproxy.wire import control

COMMANDS = ("update", "remove", "summary", "sessions")
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


def page_request(position: int) -> bytes:
    """The header block of ``sessions`` asking for the page that starts at ``position`` (0: a fresh listing)."""
    return f"{PAGE_HEADER}: {position}\r\n".encode()


def parse_page_request(lines: list[str]) -> int | None:
    """Where the asked page starts; None for the original's request for everything at once."""
    for line in lines:
        name, _, value = line.partition(": ")
        if name == PAGE_HEADER:
            position = ascii_decimal(value, max_digits=9)
            if position is None:
                raise ValueError(f"page {value[:20]!r} is not a position")
            return position
    return None


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
