"""Wiring of the relay: dispatcher links, DNS re-checks, sessions, traffic sampling, shutdown."""

from __future__ import annotations

import os
import resource
import socket

from twisted.application import service
from twisted.internet import defer
from twisted.names import client as dns_client
from twisted.names import dns

from mediaproxy import __version__, statefile
from mediaproxy.net.guard import HandshakeGuard
from mediaproxy.net.tls import Credentials, PeerVerifier
from mediaproxy.relay import reports
from mediaproxy.relay.connector import DispatcherConnector
from mediaproxy.relay.held import HeldExpiries
from mediaproxy.relay.keeping import COUNTERS_INTERVAL
from mediaproxy.relay.model import serialize
from mediaproxy.relay.monitoring import MetricsListener
from mediaproxy.relay.plane import choice, host
from mediaproxy.relay.plane.udp import UDPBinder
from mediaproxy.relay.sessions import SessionManager
from mediaproxy.runtime import heap
from mediaproxy.runtime.log import Logger
from mediaproxy.runtime.process import StartupError
from mediaproxy.runtime.timers import Periodic

log = Logger(namespace="relay")

TLS_HANDSHAKE_TIMEOUT = 10
HOST_CHANGES_FILE = "relay-host-changes.json"
SESSIONS_FILE = "relay_sessions"
HELD_FILE = "relay_held_expiries"
# expiries held for a dispatcher that is away; far more than calls end in a reconnect delay
MAX_HELD_EXPIRED = 10_000
# seconds after a page of sessions was sent before its memory is given back (time for it to leave)
LISTING_GIVE_BACK_DELAY = 2


def local_address_towards(ip: str) -> str:
    """The source address the kernel would use to reach ``ip`` (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((ip, 9))
        return probe.getsockname()[0]


def default_relay_ip() -> str:
    try:
        # TEST-NET-2 is never answered; connecting a UDP socket only asks for the route
        return local_address_towards("198.51.100.1")
    except OSError as error:
        raise StartupError(f"cannot determine relay_ip from the default route ({error.strerror}); set [Relay] relay_ip") from None


def _named(state: object) -> object:
    """A kept session in the form the loaders read, converted once; as it is when it is not a
    session's (taking it back says what is wrong with it)."""
    try:
        return serialize.named(state)
    except (TypeError, ValueError):
        return state


def _kernel_flows(state: object) -> set:
    try:
        return serialize.kernel_flows(state)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError):
        return set()  # not a session's state: load_session says so when it gets there


def raise_file_limit(port_range) -> int:
    wanted = port_range.end - port_range.start + 1000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, max(wanted, hard)))
    except (ValueError, OSError) as error:
        raise StartupError(
            f"cannot raise the open-file limit to {wanted} for port_range {port_range} (now {soft}/{hard}): {error}; run as root, raise LimitNOFILE, or narrow port_range"
        ) from None
    return wanted


class RelayService(service.MultiService):
    """The relay: its sessions, a ClientService per dispatcher, and its periodic jobs as child services."""

    def __init__(self, configuration, credentials: Credentials, reactor, resolver=None, state_dir: str | None = None) -> None:
        self.configuration = configuration
        self.config = configuration.relay
        self.credentials = credentials
        self.reactor = reactor
        self.resolver = resolver
        self.relay_ip = self.config.relay_ip or default_relay_ip()
        bind_addresses = None
        if self.config.auto_detect_interfaces and not self.config.advertised_ip:
            bind_addresses = self._bind_addresses
        self.idle_timeout = host.udp_stream_timeout()
        self.sessions = SessionManager(
            reactor,
            self.config,
            UDPBinder(reactor),
            self._session_expired,
            self.relay_ip,
            bind_addresses=bind_addresses,
            idle_timeout=self.idle_timeout,
        )
        self.refusals = self.sessions.refusals
        self.verifier = PeerVerifier(
            credentials, self.config.passport, configuration.tls.verify_interval, reactor, "dispatcher", self.refusals
        )
        self.connectors: dict[tuple[str, int], DispatcherConnector] = {}
        self._wanted: frozenset = frozenset()  # dispatchers in the latest resolved list
        self.stopping = False
        self._stopped: defer.Deferred | None = None
        self.bps_relayed: float = 0.0
        self._last_live_bytes = 0
        self._last_closed_bytes = 0
        # what kernel forwarding changed on the host, undone at stop (kept in a file against crashes)
        self.host_changes = host.HostChanges(os.path.join(state_dir, HOST_CHANGES_FILE) if state_dir else None)
        # the sessions, kept so that a restart (or a crash) does not end the calls
        self.state_file = (
            statefile.StateFile(
                os.path.join(state_dir, SESSIONS_FILE),
                "sessions",
                serialize.VERSION,
                reactor,
                "the relay's sessions",
                keep_encoded=True,
                key_text=serialize.key_text,
            )
            if state_dir
            else None
        )
        # statistics of sessions that expired while their dispatcher was away (kept like the sessions)
        self.held = HeldExpiries(
            statefile.StateFile(os.path.join(state_dir, HELD_FILE), "expired", 1, reactor, "the expiries held for absent dispatchers")
            if state_dir
            else None,
            MAX_HELD_EXPIRED,
        )
        self._ready: defer.Deferred | None = None
        self._giving_back = None  # the call that gives a listing's memory back, once it has left
        self._resolved_once = False
        service.MultiService.__init__(self)
        for job in (
            Periodic("dispatcher lookups", self.config.dns_check_interval, self._refresh_logged, reactor, now=True),
            Periodic("idle checks", self.sessions.idle_check_interval, self.sessions.check_idle, reactor),
            Periodic("keeping counters", COUNTERS_INTERVAL, self.sessions.keeping.keep_counters, reactor),
        ):
            job.setServiceParent(self)
        if self.config.traffic_sampling_period > 0:
            Periodic("traffic sampling", self.config.traffic_sampling_period, self.sample_traffic, reactor).setServiceParent(self)
        if self.config.metrics_listen is not None:
            MetricsListener(self.config.metrics_listen, self.summary, reactor, self.refusals).setServiceParent(self)

    def guard(self, factory) -> HandshakeGuard:
        # one link per dispatcher, nothing accepted: only the handshake deadline and the failure log matter
        return HandshakeGuard(factory, "dispatcher link", TLS_HANDSHAKE_TIMEOUT, self.refusals, self.reactor)

    # -- start and stop

    def startService(self) -> None:  # noqa: N802
        log.info(
            "MediaProxy relay {version} starting on {ip}; own certificate {subject}",
            version=__version__,
            ip=self.relay_ip,
            subject=self.credentials.describe(),
        )
        if not self.config.dispatchers:
            log.error("No dispatchers configured ([Relay] dispatchers); this relay will not be used")
        kept = {key: _named(state) for key, state in (self.state_file.load() if self.state_file is not None else {}).items()}
        keep = frozenset(key for state in kept.values() for key in _kernel_flows(state))
        self.sessions.forwarder = choice.choose(self.config, self.reactor, self.idle_timeout, self.sessions.binder, self.host_changes, keep)
        if self.state_file is not None:
            restored = self.sessions.restore(self.state_file, kept)
            if restored:
                log.info("Took back {count} sessions kept from the last run", count=restored)
        held = self.held.restore()
        if held:
            log.info("Took back {count} expiries held for absent dispatchers", count=held)
        self.verifier.start()
        service.MultiService.startService(self)  # the periodic jobs, dispatcher lookups first

    def ready(self) -> defer.Deferred:
        """Fires once every configured dispatcher was tried: connected, or its first attempt failed.

        The service manager hears READY then: a relay whose dispatcher is down still starts (and
        keeps trying), and one that can connect is in use when ``systemctl start`` returns.
        """
        if self._ready is None:
            self._ready = defer.Deferred()
            self._check_ready()
        return self._ready

    def _check_ready(self) -> None:
        if self._ready is None or self._ready.called or not self._resolved_once:
            return
        if all(connector.tried for connector in self.connectors.values()):
            self._ready.callback(None)

    def status_line(self) -> str:
        connected = sum(1 for connector in self.connectors.values() if connector.link is not None)
        state = "draining, " if self.sessions.halting and not self.stopping else ""
        return f"{state}connected to {connected} of {len(self.connectors)} dispatchers; {len(self.sessions.sessions)} sessions"

    def listed(self) -> None:
        """A dispatcher was sent a page of sessions (half a MiB of text, and as much again in its
        TLS records): once it has left, the allocator's pages it took go back to the system, not
        to stay in RSS until the minute's trim."""
        if self._giving_back is not None and self._giving_back.active():
            self._giving_back.reset(LISTING_GIVE_BACK_DELAY)  # after the listing's last page: once
        else:
            self._giving_back = self.reactor.callLater(LISTING_GIVE_BACK_DELAY, heap.give_back)

    def stopService(self) -> defer.Deferred:  # noqa: N802
        """Stop the periodic jobs, then the sessions (see :meth:`shutdown`) and the links."""
        if self._giving_back is not None and self._giving_back.active():
            self._giving_back.cancel()
        jobs = service.MultiService.stopService(self)
        return defer.gatherResults([jobs, self.shutdown()])

    def shutdown(self) -> defer.Deferred:
        """Stop. With ``keep_calls_on_stop`` (and somewhere to keep them) the sessions stay for the
        next start: kept in the state directory, kernel entries and host set-up left in place,
        nothing reported; otherwise every session ends now and is reported as a relay shutdown."""
        if self._stopped is not None:
            return self._stopped
        self._stopped = defer.Deferred()
        self.stopping = True
        self.sessions.halting = True
        self.verifier.stop()
        if self.sessions.sessions and self.config.keep_calls_on_stop and self.sessions.keeping.state is not None:
            log.info("Keeping {count} sessions for the next start", count=len(self.sessions.sessions))
            self.sessions.suspend()
            self.sessions.forwarder.stop(keep_entries=True)
            self.held.close()
        else:
            self.sessions.expire_all()
            self.sessions.keeping.close()
            self.held.close()  # with the expiries of dispatchers that are away, reported at the next start
            self.sessions.forwarder.stop()
            for change in host.undo(self.host_changes):
                log.info("Kernel forwarding set-up undone: {change}", change=change)
        for connector in list(self.connectors.values()):
            connector.retire()
        self._check_stopped()
        return self._stopped

    def graceful_shutdown(self) -> None:
        if self.sessions.halting:
            return
        log.info("Graceful shutdown: refusing new sessions, exiting after the last call ({count} now)", count=len(self.sessions.sessions))
        self.sessions.halting = True
        self.session_gone()

    def session_gone(self) -> None:
        """Called when a session ended; finishes a graceful shutdown and retires removed dispatchers."""
        if self.sessions.halting and not self.sessions.sessions and not self.stopping:
            self.reactor.callLater(0, self._stop_reactor)
        for key, connector in list(self.connectors.items()):
            if key not in self._wanted and not self._owns_sessions(key):
                connector.retire()

    def _stop_reactor(self) -> None:
        if self.reactor.running:
            self.reactor.stop()

    def connector_closed(self, connector: DispatcherConnector) -> None:
        if connector.retired and self.connectors.get(connector.key) is connector:
            del self.connectors[connector.key]
        self._check_stopped()

    def _check_stopped(self) -> None:
        if self._stopped is not None and not self.connectors and not self._stopped.called:
            self._stopped.callback(None)

    # -- dispatchers

    def _refresh_logged(self) -> defer.Deferred:
        # a failed lookup round must not end the periodic lookups
        return self.refresh_dispatchers().addErrback(lambda failure: log.failure("Dispatcher lookups failed", failure))

    @defer.inlineCallbacks
    def refresh_dispatchers(self) -> defer.Deferred:
        wanted = yield self._wanted_dispatchers()
        if self.stopping:
            return
        self._wanted = frozenset(wanted)
        for key, endpoint in wanted.items():
            connector = self.connectors.get(key)
            if connector is None or connector.retired:
                connector = self.connectors[key] = DispatcherConnector(self, endpoint, *key)
                connector.connect()
        for key, connector in list(self.connectors.items()):
            if key not in wanted and not self._owns_sessions(key):
                log.info("Dispatcher {name} is no longer configured; disconnecting", name=connector.name)
                connector.retire()
        if not self._resolved_once:
            self._resolved_once = True
            self._warn_of_held(wanted)
            self._check_ready()

    @defer.inlineCallbacks
    def _wanted_dispatchers(self) -> defer.Deferred:
        """(ip, port) → configured endpoint of every dispatcher that resolves now."""
        wanted = {}
        for endpoint in self.config.dispatchers:
            if endpoint.is_ip:
                wanted[(endpoint.host, endpoint.port)] = endpoint
                continue
            ip = yield self._resolve(endpoint.host)
            if ip is None:
                log.error("Could resolve neither SRV nor A record for dispatcher {name}", name=endpoint.host)
                continue
            wanted[(ip, endpoint.port)] = endpoint
        return wanted

    def _warn_of_held(self, wanted: dict) -> None:
        for key in self.held.dispatchers():
            if key not in wanted:
                log.warn(
                    "{count} expiries are held for dispatcher {host}:{port}, which is not configured; they are sent if it comes back",
                    count=self.held.count(key),
                    host=key[0],
                    port=key[1],
                )

    @defer.inlineCallbacks
    def _resolve(self, name: str):
        resolver = self.resolver or dns_client
        target = name
        try:
            answers, _, _ = yield resolver.lookupService(f"_sip._udp.{name}")
            records = [answer.payload for answer in answers if answer.type == dns.SRV]
            if records and str(records[0].target) not in ("", "."):
                target = str(records[0].target)
        except Exception:  # noqa: BLE001 - no SRV record is the usual case
            pass
        try:
            address = yield resolver.getHostByName(target)
        except Exception:  # noqa: BLE001
            return None
        return address

    def _owns_sessions(self, key: tuple[str, int]) -> bool:
        """Whether the dispatcher still has something here: sessions, or expiries to be told of."""
        if self.held.count(key):
            return True
        return any(session.dispatcher == key for session in self.sessions.sessions.values())

    # -- sessions and statistics

    def _session_expired(self, session, statistics: dict) -> None:
        connector = self.connectors.get(session.dispatcher)
        if connector is not None and not connector.retired:
            connector.expired(statistics)
        else:
            log.warn("Statistics of expired session {call_id} are lost: its dispatcher is no longer configured", call_id=session.call_id)
        self.session_gone()

    def sample_traffic(self) -> None:
        started = self.reactor.seconds()
        live = reports.relayed_bytes(self.sessions)
        closed = self.sessions.closed_bytes - self._last_closed_bytes
        self.bps_relayed = 8.0 * (live + closed - self._last_live_bytes) / self.config.traffic_sampling_period
        self._last_live_bytes = live
        self._last_closed_bytes = self.sessions.closed_bytes
        spent = self.reactor.seconds() - started
        if spent > 0.01:
            log.warn("Traffic sampling took {ms:.1f} ms", ms=spent * 1000)

    def summary(self) -> dict:
        return reports.summary(self.sessions, self.bps_relayed if self.config.traffic_sampling_period else 0)

    def _bind_addresses(self, signaling) -> tuple[str, str]:
        caller = self._address_towards(signaling.caller_ip)
        callee = self._address_towards(signaling.destination_ip) if signaling.destination_ip else caller
        return caller, callee

    def _address_towards(self, ip: str | None) -> str:
        if not ip:
            return self.relay_ip
        try:
            return local_address_towards(ip)
        except OSError:
            return self.relay_ip
