"""The SIP proxy's requests to the dispatcher (UNIX stream socket), as Kamailio/OpenSIPS send them.

A request is a command line, ``name: value`` header lines and an empty line, all CRLF-terminated.
Kamailio writes an empty value as ``name: `` (trailing space); such a line means the header is
absent and is dropped. A request is checked completely here — command, every header, with the
parser the relay uses — so nothing malformed is ever forwarded to a relay.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mediaproxy.wire import headers as wire_headers
from mediaproxy.wire.lines import LineSplitter, OverlongLine

MAX_LINE_LENGTH = 16384
MAX_HEADER_LINES = 64


class RequestError(ValueError):
    """A request that cannot be routed; the text says what was wrong for the log."""


@dataclass
class ProxyRequest:
    command: str
    lines: list[str] = field(default_factory=list)
    headers: dict = field(default_factory=dict)

    @property
    def call_id(self) -> str:
        return self.headers["call_id"]

    def encode_headers(self) -> bytes:
        return encode_lines(self.lines)


def encode_lines(lines: list[str]) -> bytes:
    """Header lines as they go on to a relay."""
    return b"".join(line.encode("utf-8") + b"\r\n" for line in lines)


def parse_request(lines: list[str]) -> ProxyRequest:
    command = lines[0]
    if command not in wire_headers.COMMANDS:
        raise RequestError(f"command {_show(command)} is neither update nor remove")
    try:
        decoded = wire_headers.decode(command, lines[1:])
    except wire_headers.HeaderError as error:
        raise RequestError(str(error)) from None
    return ProxyRequest(command, lines[1:], decoded)


def _show(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


class RequestFramer:
    """Turns a byte stream into complete requests or per-request errors.

    ``feed`` returns a list whose items are :class:`ProxyRequest` or :class:`RequestError`; every
    item corresponds to one request (one empty line), so the caller answers each with one line.
    """

    def __init__(self, max_line: int = MAX_LINE_LENGTH, max_lines: int = MAX_HEADER_LINES) -> None:
        self.max_lines = max_lines
        self._splitter = LineSplitter(max_line)
        self._lines: list[str] = []
        self._problem: str | None = None

    @property
    def pending(self) -> bool:
        """True while part of a request has arrived and its end has not."""
        return bool(self._lines or self._problem or self._splitter.pending)

    def feed(self, data: bytes) -> list[ProxyRequest | RequestError]:
        results: list[ProxyRequest | RequestError] = []
        for raw in self._splitter.feed(data):
            result = self._line(raw)
            if result is not None:
                results.append(result)
        return results

    def _line(self, raw: bytes | OverlongLine) -> ProxyRequest | RequestError | None:
        if isinstance(raw, OverlongLine):
            self._problem = self._problem or f"line longer than {raw.limit} bytes"
            return None
        if not raw:
            return self._end()
        if self._problem is not None:
            return None
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            self._problem = f"line {_show(raw.decode('latin-1'))} is not UTF-8"
            return None
        if line.endswith(": "):
            return None
        if len(self._lines) >= self.max_lines:
            self._problem = f"more than {self.max_lines} lines in one request"
            return None
        self._lines.append(line)
        return None

    def _end(self) -> ProxyRequest | RequestError | None:
        """The empty line: the request so far, or the problem it had (nothing for a stray empty line)."""
        if not self._lines and self._problem is None:
            return None
        lines, problem = self._lines, self._problem
        self._lines, self._problem = [], None
        if problem is not None:
            return RequestError(problem)
        try:
            return parse_request(lines)
        except RequestError as error:
            return error
