"""The HTTP sites of the dispatcher (metrics, web page), held to what they serve: GET pages.

Twisted's request keeps any body a client sends, in a temporary file past 100 KB; none of our
pages reads one, so a body is counted and dropped, and a client that goes on past
``MAX_BODY`` bytes is cut off. Idle connections close after ``IDLE_TIMEOUT`` seconds.
"""

from __future__ import annotations

import io

from twisted.web import resource, server

MAX_BODY = 65536
IDLE_TIMEOUT = 60
# every answer: no framing, no sniffing, nothing from elsewhere, nothing kept by caches
HEADERS = {
    b"Content-Security-Policy": b"default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    b"X-Content-Type-Options": b"nosniff",
    b"X-Frame-Options": b"DENY",
    b"Referrer-Policy": b"no-referrer",
    b"Cache-Control": b"no-store",
}


class BoundedRequest(server.Request):
    body_seen = 0

    def gotLength(self, length: int | None) -> None:  # noqa: N802 - Twisted's name
        self.content = io.BytesIO()  # never a temporary file: nothing is kept

    def handleContentChunk(self, data: bytes) -> None:  # noqa: N802
        self.body_seen += len(data)
        if self.body_seen > MAX_BODY and self.channel is not None:
            self.channel.transport.abortConnection()

    def process(self) -> None:
        for name, value in HEADERS.items():
            self.setHeader(name, value)
        super().process()


class QuietSite(server.Site):
    def log(self, request: server.Request) -> None:
        """No access log: a line per scrape or poll would drown what the log is for."""


def site(root: resource.Resource) -> server.Site:
    """A quiet site for ``root``: no access log, no tracebacks to clients, bounded requests."""
    built = QuietSite(root, requestFactory=BoundedRequest, timeout=IDLE_TIMEOUT)
    built.noisy = False
    built.displayTracebacks = False
    return built
