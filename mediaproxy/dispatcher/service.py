"""Wiring of the dispatcher: control socket, relay listener, plugins, orderly shutdown."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable
from dataclasses import dataclass

from twisted.application import service
from twisted.internet import defer, error

from mediaproxy import __version__, plugin
from mediaproxy.dispatcher.children import Listener, PluginService, start_in_order, stop_in_reverse
from mediaproxy.dispatcher.control import ControlFactory
from mediaproxy.dispatcher.core import Dispatcher
from mediaproxy.dispatcher.relays import RelayFactory, RelayRegistry
from mediaproxy.dispatcher.rtpproxy import RtpproxyFrontEnd
from mediaproxy.dispatcher.rtpproxy_listen import RtpproxyDatagram, RtpproxyStreamFactory
from mediaproxy.dispatcher.view import DispatcherView
from mediaproxy.net import unixsocket
from mediaproxy.net.guard import DescriptorBudget, GuardedFactory, Limits, raise_descriptor_limit
from mediaproxy.net.ratelimit import Refusals
from mediaproxy.net.tls import ContextFactory, Credentials, PeerVerifier
from mediaproxy.runtime.log import Logger
from mediaproxy.runtime.process import StartupError

log = Logger(namespace="dispatcher")


@dataclass
class PluginContext:
    """What a plugin may use: the dispatcher core, the reactor, TLS credentials, the runtime dir,
    and the mode and group its proxy-facing sockets get."""

    dispatcher: plugin.IDispatcherView  # the core, as plugins see it
    reactor: object
    credentials: Credentials
    runtime_dir: str
    socket_mode: int = 0o660
    socket_gid: int | None = None
    # (factory, name, TLS context factory or None) → the limited factory to listen with (over TCP
    # even for TLS: the guard builds the TLS layer inside itself)
    guard: Callable[[object, str, object], GuardedFactory] | None = None
    refusals: Refusals | None = None

    def listen(self, factory, name: str, address, tls=None) -> object:  # an IListeningPort
        """A plugin's TCP listener at ``address`` (a NetworkAddress), over TLS with ``tls`` (a
        context factory): guarded like the dispatcher's own where the context has the guard."""
        if self.guard is not None:
            return self.reactor.listenTCP(address.port, self.guard(factory, name, tls), interface=address.host)
        if tls is not None:
            return self.reactor.listenSSL(address.port, factory, tls, interface=address.host)
        return self.reactor.listenTCP(address.port, factory, interface=address.host)


class DispatcherService(service.MultiService):
    def __init__(self, configuration, credentials: Credentials, runtime_dir: str, reactor, plugin_factories: list | None = None) -> None:
        self.configuration = configuration
        self.config = configuration.dispatcher
        self.credentials = credentials
        self.runtime_dir = runtime_dir
        self.reactor = reactor
        self.refusals = Refusals(reactor)
        self.budget = DescriptorBudget(self.config.descriptor_reserve, raise_descriptor_limit())
        self.verifier = PeerVerifier(credentials, self.config.passport, configuration.tls.verify_interval, reactor, "relay", self.refusals)
        self.registry = RelayRegistry(reactor, self.verifier, self.config.relay_timeout, self.config.relay_recover_interval)
        self.plugins = plugin.PluginSet([])
        self.dispatcher = Dispatcher(reactor, self.registry, self.plugins, runtime_dir, self.config)
        self.control_factory = ControlFactory(self.dispatcher, self.refusals)
        self.socket_gid = unixsocket.group_id(self.config.socket_group)
        context = PluginContext(
            DispatcherView(self.dispatcher),
            reactor,
            credentials,
            runtime_dir,
            self.config.socket_mode,
            self.socket_gid,
            self.guard,
            self.refusals,
        )
        factories = plugin.discover() if plugin_factories is None else plugin_factories
        service.MultiService.__init__(self)
        # children, started in this order and stopped in the reverse: the plugins (accounting
        # ready before the first call, and there until the last is answered), then the relays'
        # listener, then the proxies' sockets (closed first, and drained, at a stop)
        for factory in factories:
            instance = factory.create(configuration, context)
            if instance is not None:
                self.plugins.plugins.append(instance)
                PluginService(instance).setServiceParent(self)
        self._relays = Listener("relay listener", self._listen_relays)
        self._relays.setServiceParent(self)
        self._rtpproxy = None
        if self.config.rtpproxy_listen is not None:
            self._rtpproxy = Listener("rtpproxy socket", self._listen_rtpproxy)
            self._rtpproxy.setServiceParent(self)
        self._proxies = Listener("proxy socket", self._listen_proxies, after_close=self.control_factory.drain)
        self._proxies.setServiceParent(self)

    def guard(self, factory, name: str, tls=None) -> GuardedFactory:
        """``factory`` held to the connection limits of config.ini; with ``tls`` (a context factory)
        it is served over TLS, with a handshake deadline. Listen on the result with listenTCP."""
        config = self.config
        limits = Limits(config.max_connections, config.max_connections_per_ip, config.tls_handshake_timeout if tls is not None else None)
        return GuardedFactory(factory, name, limits, self.budget, self.refusals, self.reactor, tls)

    @property
    def socket_path(self) -> str:
        return os.path.join(self.runtime_dir, self.config.socket_path)

    @defer.inlineCallbacks
    def startService(self) -> defer.Deferred:  # noqa: N802
        service.Service.startService(self)
        log.info(
            "MediaProxy dispatcher {version} starting; own certificate {subject}", version=__version__, subject=self.credentials.describe()
        )
        self.dispatcher.start()
        try:
            yield start_in_order(self)
        except error.CannotListenError as failure:
            raise StartupError(f"Failed to create the listening socket {failure.interface}:{failure.port}: {failure.socketError}") from None
        self.verifier.start()
        log.info("Dispatcher started")

    def _listen_unix(self, path: str, factory, name: str) -> object:  # a Factory; an IListeningPort
        """A guarded UNIX stream socket for the proxies, in place of one a crash left, with the
        mode and group of config.ini."""
        if os.path.exists(path):
            os.unlink(path)
        port = self.reactor.listenUNIX(path, self.guard(factory, name), mode=self.config.socket_mode)
        unixsocket.give_group(path, self.socket_gid)
        return port

    def _listen_proxies(self) -> object:
        port = self._listen_unix(self.socket_path, self.control_factory, "proxy socket")
        log.info("Listening for the proxy on {path}", path=self.socket_path)
        return port

    def _listen_relays(self) -> object:
        address = self.config.listen
        factory = self.guard(RelayFactory(self.registry), "relay listener", ContextFactory(self.credentials))
        port = self.reactor.listenTCP(address.port, factory, interface=address.host)
        log.info("Listening for relays on {address} (TLS)", address=str(address))
        return port

    def _listen_rtpproxy(self) -> object:
        where = self.config.rtpproxy_listen
        front = RtpproxyFrontEnd(self.dispatcher, self.refusals)
        if where.kind == "unix":
            path = os.path.join(self.runtime_dir, where.host)
            port = self._listen_unix(path, RtpproxyStreamFactory(front), "rtpproxy socket")
            log.info("Listening for the rtpproxy module on unix:{path}", path=path)
            return port
        allowed = self.config.rtpproxy_allow
        datagrams = RtpproxyDatagram(front, self.reactor, self.refusals, allowed)
        port = self.reactor.listenUDP(where.port, datagrams, interface=where.host)
        log.info(
            "Listening for the rtpproxy module on {where} (commands from {allowed})",
            where=str(where),
            allowed=", ".join(map(str, allowed)) or "nowhere",
        )
        if not ipaddress.ip_address(where.host).is_loopback and all(network.is_loopback for network in allowed):
            log.warn(
                "The rtpproxy socket {where} is not on a loopback address, but [Dispatcher] rtpproxy_allow names only "
                "loopback networks: add the SIP proxies' addresses to it",
                where=str(where),
            )
        return port

    # the ports, as tests and the relay link ask for them
    @property
    def control_port(self) -> object:
        return self._proxies.port

    @property
    def relay_port(self) -> object:
        return self._relays.port

    @property
    def rtpproxy_port(self) -> object:
        return None if self._rtpproxy is None else self._rtpproxy.port

    def status_line(self) -> str:
        """For the service manager's STATUS (``systemctl status``)."""
        return f"{len(self.registry.relays)} relays connected; {len(self.dispatcher.table)} calls"

    @defer.inlineCallbacks
    def stopService(self) -> defer.Deferred:  # noqa: N802
        service.Service.stopService(self)
        log.info("Dispatcher stopping")
        # the proxy sockets close first and drain (what they are answering is accounted by the
        # plugins, which stop after them), then the relay listener, then the plugins, last first
        yield stop_in_reverse(self)
        self.verifier.stop()
        self.registry.disconnect_all()
        self.dispatcher.stop()
        log.info("Dispatcher stopped; call table saved")
