"""Splitting a byte stream into bounded lines, the same way whatever the chunks look like.

A line over the limit is never buffered whole: the splitter keeps its first bytes (enough to
name it in a log line or read a sequence number), discards the rest up to the next LF, and
hands back an :class:`OverlongLine` in its place, so the stream stays in step.
"""

from __future__ import annotations

from dataclasses import dataclass

HEAD = 64


@dataclass(frozen=True)
class OverlongLine:
    head: bytes  # the first bytes of the line, for the log and for a sequence number
    limit: int


class LineSplitter:
    """LF- or CRLF-terminated lines of at most ``max_length`` bytes (the terminator not counted)."""

    def __init__(self, max_length: int) -> None:
        self.max_length = max_length
        # never more than the limit, so the head is the line's own bytes whichever way it arrived
        # (a line over the limit is longer than its head; its terminator comes after)
        self.head = min(HEAD, max_length)
        self._buffer = b""
        self._discarding: bytes | None = None  # the head of the over-long line being skipped

    @property
    def discarding(self) -> bool:
        """An over-long line is being skipped (it is known to be over the limit already)."""
        return self._discarding is not None

    @property
    def pending(self) -> bool:
        return bool(self._buffer) or self._discarding is not None

    def feed(self, data: bytes) -> list[bytes | OverlongLine]:
        out: list[bytes | OverlongLine] = []
        buffer = self._buffer + data if self._buffer else data
        start = 0
        while True:
            end = buffer.find(b"\n", start)
            if end < 0:
                break
            if self._discarding is not None:
                out.append(OverlongLine(self._discarding, self.max_length))
                self._discarding = None
            else:
                stop = end - 1 if end > start and buffer[end - 1] == 0x0D else end
                if stop - start > self.max_length:
                    out.append(OverlongLine(buffer[start : start + self.head], self.max_length))
                else:
                    out.append(buffer[start:stop])
            start = end + 1
        rest = buffer[start:]
        if self._discarding is None:
            # a trailing CR may be the first half of the CRLF: it does not count yet
            length = len(rest) - (1 if rest.endswith(b"\r") else 0)
            if length > self.max_length:
                self._discarding, rest = rest[: self.head], b""
        else:
            rest = b""
        self._buffer = rest
        return out
