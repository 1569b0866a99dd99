"""What each relay last reported of its calls' statistics: the record a call gets when its relay
is lost for good.

Every call has one, so it is kept the cheap way: each page a relay answers is kept as one
deflated JSON list, about 110 bytes a call (a call deflated on its own took 430, and four small
objects more), and a report's pages are one buffer. A pull parses thousands of records into
small objects, which fill arenas of the interpreter's allocator (1 MiB each) that are given back
once empty: a page kept as a tuple and a float made during the pull would pin the arena it
landed in, and a pull of 4,000 calls left 2 MiB behind that way.

Reports are numbered: a call set up after a report began (its ``CallEntry.report`` is that
number or more) is never given a record from it, which may be of an earlier call that had the
same Call-ID.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterator, Mapping

from mediaproxy.dispatcher.sessions import CallEntry
from mediaproxy.runtime.log import Logger
from mediaproxy.wire import statistics

log = Logger(namespace="dispatcher.lastknown")

# before each page in a report's buffer: when it came, and its length deflated
_PAGE_HEADER = struct.Struct("<dI")


class Report:
    """One relay's report: the deflated pages of its calls' records, each with when it came."""

    __slots__ = ("number", "data", "_page", "_deflater")

    def __init__(self, number: int) -> None:
        self.number = number
        self.data = bytearray()  # each page's header, then the page; made before the pull's objects
        self._page: bytearray | None = None  # the page being read, deflated so far
        self._deflater = None

    def add(self, record: statistics.SessionRecord) -> None:
        """Keep a record of the page being read (``yours`` left out: it is the relay's word, not the call's)."""
        record.yours = None
        self.add_json(record.as_json())

    def add_json(self, value: dict) -> None:
        """Keep a record, in its JSON form, of the page being read."""
        text = json.dumps(value, separators=(",", ":")).encode()
        if self._page is None:
            self._deflater = zlib.compressobj(1)
            self._page = bytearray(self._deflater.compress(b"[" + text))
        else:
            self._page += self._deflater.compress(b"," + text)

    def page_end(self, now: float) -> None:
        """The page being read is complete, as of ``now``: what it had is kept."""
        page, self._page = self._page, None
        if page is None:
            return  # nothing of it to keep
        page += self._deflater.compress(b"]")
        page += self._deflater.flush()
        self._deflater = None
        self.data += _PAGE_HEADER.pack(now, len(page))
        self.data += page

    def pages(self) -> Iterator[tuple[list, float]]:
        """Each page's records in their JSON form, and when the page came."""
        data = memoryview(self.data)
        offset = 0
        while offset < len(data):
            at, length = _PAGE_HEADER.unpack_from(data, offset)
            offset += _PAGE_HEADER.size
            yield json.loads(zlib.decompress(data[offset : offset + length])), at
            offset += length


class LastKnown:
    def __init__(self) -> None:
        self.number = 0  # of the latest report begun: what a call set up now is stamped with
        self.reports: dict[str, Report] = {}  # relay IP → its last complete report
        self.pulling: dict[str, Report] = {}  # relay IP → the report a pull in progress is making

    def start(self, ip: str) -> Report:
        """A report of relay ``ip`` begins; it replaces the last one once :meth:`finish` is called."""
        self.number += 1
        report = self.pulling[ip] = Report(self.number)
        return report

    def finish(self, ip: str, report: Report) -> None:
        """Relay ``ip``'s report is complete (unless a later one began meanwhile, which wins)."""
        if self.pulling.get(ip) is report:
            del self.pulling[ip]
            self.reports[ip] = report

    def abandon(self, ip: str, report: Report) -> None:
        """A pull failed half way: the last complete report stays."""
        if self.pulling.get(ip) is report:
            del self.pulling[ip]

    def take(self, ip: str, calls: Mapping[str, CallEntry]) -> dict[str, statistics.SessionRecord]:
        """Relay ``ip`` is lost: the last record reported of each of ``calls``, its
        ``statistics_at`` when it came. The relay's report is forgotten."""
        self.pulling.pop(ip, None)
        report = self.reports.pop(ip, None)
        found: dict[str, statistics.SessionRecord] = {}
        if report is None:
            return found
        for values, at in report.pages():
            for value in values:
                try:
                    record = statistics.SessionRecord.from_json(value)
                except ValueError as error:  # cannot be, as it was one when kept: never lose the others for it
                    log.error("A kept statistics record of relay {ip} is unreadable: {error}", ip=ip, error=error)
                    continue
                entry = calls.get(record.call_id)
                if entry is not None and entry.report < report.number:
                    record.statistics_at = at  # the record is as of then, not of the call's end
                    found[record.call_id] = record
        return found
