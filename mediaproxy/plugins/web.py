"""The live sessions web page on ``[Dispatcher] web_listen`` (off unless set).

``/`` is a plain HTML page (with ``sessions.css`` and ``sessions.js`` from the package) that
polls ``/overview.json`` every two seconds: the relays with their load, the calls with their
streams, parties, codecs, path and traffic. The relays are asked at most once a second however
many pages poll.

Anywhere but on a loopback address the page must be protected: ``web_use_tls`` (HTTPS, and only
browsers with a management client certificate of the CA get in) or ``web_password_file`` (HTTP
Basic against hashed passwords), or both.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from importlib import resources

from twisted.internet import defer
from twisted.internet.interfaces import IHandshakeListener
from twisted.plugin import IPlugin
from twisted.web import http, resource, server
from zope.interface import implementer, provider

from mediaproxy.dispatcher.recent import Recent
from mediaproxy.net import httpsite
from mediaproxy.net.tls import ContextFactory, PeerVerifier
from mediaproxy.plugin import IDispatcherPlugin, IDispatcherPluginFactory, PluginBase
from mediaproxy.runtime.log import Logger
from mediaproxy.runtime.process import StartupError
from mediaproxy.web import overview
from mediaproxy.web.passwords import PasswordFile

log = Logger(namespace="web")

MAX_AGE = 1.0  # seconds the relays' sessions serve the pages
STATIC = {
    b"": ("index.html", b"text/html; charset=utf-8"),
    b"sessions.css": ("sessions.css", b"text/css; charset=utf-8"),
    b"sessions.js": ("sessions.js", b"text/javascript; charset=utf-8"),
}
# wrong passwords tried from one address within a minute before it is answered 429 unheard: each
# check costs the reactor a PBKDF2 run
MAX_FAILURES = 10
TOO_MANY_REQUESTS = 429  # not among twisted.web.http's names
FAILURE_WINDOW = 60
MAX_REMEMBERED = 64  # accepted credentials remembered, so a poll does not re-run PBKDF2


class StaticFile(resource.Resource):
    isLeaf = True

    def __init__(self, body: bytes, content_type: bytes) -> None:
        super().__init__()
        self.body = body
        self.content_type = content_type

    def render_GET(self, request) -> bytes:  # noqa: N802
        request.setHeader(b"Content-Type", self.content_type)
        return self.body


class OverviewResource(resource.Resource):
    """``/overview.json?q=TEXT&limit=N``: :func:`overview.overview` of the latest fetch."""

    isLeaf = True

    def __init__(self, plugin: WebPlugin) -> None:
        super().__init__()
        self.plugin = plugin

    def render_GET(self, request):  # noqa: N802
        query = _argument(request, b"q")
        try:
            limit = int(_argument(request, b"limit") or overview.DEFAULT_LIMIT)
        except ValueError:
            limit = overview.DEFAULT_LIMIT

        def render(fetched: object) -> None:
            if request.finished or getattr(request, "_disconnected", False):
                return
            summaries, records = fetched if isinstance(fetched, tuple) else ([], [])
            body = overview.overview(summaries, records, self.plugin.reactor.seconds(), query, limit)
            body["stale"] = fetched is None
            request.setHeader(b"Content-Type", b"application/json")
            request.write(json.dumps(body).encode())
            request.finish()

        self.plugin.latest.get().addCallback(render).addErrback(self._failed, request)
        return server.NOT_DONE_YET

    def _failed(self, failure, request) -> None:
        log.failure("The web page's overview failed", failure)
        if not request.finished and not getattr(request, "_disconnected", False):
            request.setResponseCode(http.INTERNAL_SERVER_ERROR)
            request.finish()


def _argument(request, name: bytes) -> str:
    values = request.args.get(name) or [b""]
    return values[0].decode("utf-8", "replace")


class Refused(resource.Resource):
    isLeaf = True

    def __init__(self, code: int, text: bytes, challenge: bool = False) -> None:
        super().__init__()
        self.code, self.text, self.challenge = code, text, challenge

    def render(self, request) -> bytes:
        request.setResponseCode(self.code)
        if self.challenge:
            request.setHeader(b"WWW-Authenticate", b'Basic realm="MediaProxy", charset="UTF-8"')
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        return self.text


class Root(resource.Resource):
    """Lets a request through to the page only when its connection and credentials are accepted."""

    def __init__(self, plugin: WebPlugin, files: dict[bytes, resource.Resource]) -> None:
        super().__init__()
        self.plugin = plugin
        for name, child in files.items():
            self.putChild(name, child)
        self.putChild(b"overview.json", OverviewResource(plugin))

    def getChildWithDefault(self, path: bytes, request):  # noqa: N802
        if not getattr(request.channel, "accepted", True):
            return Refused(http.FORBIDDEN, b"certificate refused\n")
        refusal = self.plugin.authenticate(request)
        if refusal is not None:
            return refusal
        if path not in self.children:
            return Refused(http.NOT_FOUND, b"not found\n")
        return self.children[path]


@implementer(IHandshakeListener)
class VerifiedChannel(http.HTTPChannel):
    """An HTTPS connection that serves only once the client's certificate passed the verifier."""

    verifier: PeerVerifier | None = None
    accepted = False

    def handshakeCompleted(self) -> None:  # noqa: N802
        self.accepted = self.verifier.accept(self.transport)

    def connectionLost(self, reason) -> None:  # noqa: N802
        self.verifier.forget(self.transport)
        super().connectionLost(reason)


@implementer(IDispatcherPlugin)
class WebPlugin(PluginBase):
    name = "web"

    def __init__(self, config, context) -> None:
        settings = config.dispatcher
        self.address = settings.web_listen
        self.context = context
        self.reactor = context.reactor
        dispatcher = context.dispatcher
        self.latest = Recent(
            lambda: defer.gatherResults([dispatcher.relay_summaries(), dispatcher.relay_sessions()], consumeErrors=True).addCallback(tuple),
            self.reactor,
            MAX_AGE,
            "the relays' sessions for the web page",
        )
        self.passwords: PasswordFile | None = None
        if settings.web_password_file is not None:
            path = config.find(settings.web_password_file) or settings.web_password_file
            try:
                self.passwords = PasswordFile.load(path)
            except ValueError as error:
                raise StartupError(f"[Dispatcher] web_password_file: {error}") from None
        self.verifier = None
        if settings.web_use_tls:
            self.verifier = PeerVerifier(
                context.credentials,
                settings.management_passport,
                config.tls.verify_interval,
                self.reactor,
                "management client",
                context.refusals,
            )
        if not ipaddress.ip_address(self.address.host).is_loopback and self.verifier is None and self.passwords is None:
            raise StartupError(
                f"[Dispatcher] web_listen = {self.address} is reachable from other hosts: set web_use_tls or web_password_file "
                "(or listen on 127.0.0.1)"
            )
        self._remembered: set[bytes] = set()
        self._failures: dict[str, tuple[float, int]] = {}
        self.port = None

    def authenticate(self, request) -> resource.Resource | None:
        """None when the request may go on, else the answer refusing it."""
        if self.passwords is None:
            return None
        user, password = request.getUser(), request.getPassword()
        token = hashlib.sha256(user + b"\0" + password).digest()
        if token in self._remembered:
            return None
        peer = request.getClientAddress().host
        now = self.reactor.seconds()
        started, failures = self._failures.get(peer, (now, 0))
        if now - started >= FAILURE_WINDOW:
            started, failures = now, 0
        if failures >= MAX_FAILURES:
            return Refused(TOO_MANY_REQUESTS, b"too many wrong passwords; wait a minute\n")
        if user and self.passwords.check(user.decode("utf-8", "replace"), password.decode("utf-8", "replace")):
            if len(self._remembered) >= MAX_REMEMBERED:
                self._remembered.clear()
            self._remembered.add(token)
            return None
        if user:
            if len(self._failures) >= 4096:
                self._failures.clear()
            self._failures[peer] = (started, failures + 1)
            self.context.refusals.refuse("web_password", peer, log, "Web page: wrong user or password from {peer}")
        return Refused(http.UNAUTHORIZED, b"user name and password needed\n", challenge=True)

    def start(self) -> None:
        files = {}
        for name, (filename, content_type) in STATIC.items():
            files[name] = StaticFile(resources.files("mediaproxy.web").joinpath("static", filename).read_bytes(), content_type)
        site = httpsite.site(Root(self, files))
        if self.verifier is not None:
            # Site builds each connection's channel from this class (instead of its HTTP/2-capable one)
            site.protocol = type("Channel", (VerifiedChannel,), {"verifier": self.verifier})
        tls = ContextFactory(self.context.credentials) if self.verifier is not None else None
        self.port = self.context.listen(site, "web page", self.address, tls)
        if self.verifier is not None:
            self.verifier.start()
        scheme = "https" if self.verifier is not None else "http"
        log.info("Live sessions page at {scheme}://{address}/", scheme=scheme, address=str(self.address))

    def stop(self) -> defer.Deferred | None:
        if self.verifier is not None:
            self.verifier.stop()
        if self.port is not None:
            return defer.maybeDeferred(self.port.stopListening)
        return None


@provider(IPlugin, IDispatcherPluginFactory)
class WebPluginFactory:
    name = "web"

    @staticmethod
    def create(config, context) -> WebPlugin | None:
        if config.dispatcher.web_listen is None:
            return None
        return WebPlugin(config, context)
