"""A line receiver that skips an over-long line and goes on with the next one.

Twisted's ``LineOnlyReceiver`` stops reading the chunk at an over-long line, so the only safe
reaction there is to drop the connection; links that must outlive one bad line use this.
"""

from __future__ import annotations

from twisted.internet import protocol

from mediaproxy.wire.lines import LineSplitter, OverlongLine


class BoundedLineReceiver(protocol.Protocol):
    delimiter = b"\r\n"
    MAX_LENGTH = 16384

    _splitter: LineSplitter | None = None

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if self._splitter is None:
            self._splitter = LineSplitter(self.MAX_LENGTH)
        for item in self._splitter.feed(data):
            if self.transport.disconnecting:
                return
            if isinstance(item, OverlongLine):
                self.lineTooLong(item)
            else:
                self.lineReceived(item)

    def lineReceived(self, line: bytes) -> None:  # noqa: N802
        raise NotImplementedError

    def lineTooLong(self, line: OverlongLine) -> None:  # noqa: N802
        """The line was skipped; ``line.head`` holds its first bytes."""

    def sendLine(self, line: bytes) -> None:  # noqa: N802
        self.transport.write(line + self.delimiter)
