"""The connection guard: a refused connection is closed before TLS is built for it, the
descriptor budget keeps each listener's share, and a TLS handshake has a deadline."""

import os
import shutil
import tempfile

from twisted.internet import defer, protocol, reactor
from twisted.internet.address import IPv4Address, UNIXAddress
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.trial import unittest

from harness import wait_for
from mediaproxy.net import certgen
from mediaproxy.net.guard import AdmittedProtocol, DescriptorBudget, GuardedFactory, Limits
from mediaproxy.net.ratelimit import Refusals
from mediaproxy.net.tls import ContextFactory, Credentials

TLS_LIMITS = Limits(max_connections=100, max_per_address=2, handshake_timeout=5.0)


class Echo(protocol.Protocol):
    pass


def address(host: str = "192.0.2.7", port: int = 40000) -> IPv4Address:
    return IPv4Address("TCP", host, port)


class Credentialled(unittest.TestCase):
    def setUp(self):
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        certgen.generate(os.path.join(directory, "tls"))
        self.tls = ContextFactory(Credentials(os.path.join(directory, "tls"), "dispatcher"))


class AdmissionTests(Credentialled):
    def guarded(self, limits=TLS_LIMITS, budget=None, clock=None, name="relay listener"):
        clock = clock or Clock()
        budget = budget or DescriptorBudget(0, 1000)
        factory = GuardedFactory(protocol.Factory.forProtocol(Echo), name, limits, budget, Refusals(clock), clock, self.tls)
        return factory, budget

    def test_a_refused_tls_connection_gets_no_protocol_so_the_port_closes_it(self):
        factory, budget = self.guarded()
        admitted = [factory.buildProtocol(address()) for _ in range(2)]
        # the admitted ones are TLS inside the guard; the third from the address gets nothing,
        # which makes Twisted's port close the socket at once (no TLS wrapper left holding it)
        self.assertTrue(all(isinstance(p, AdmittedProtocol) and isinstance(p.wrappedProtocol, TLSMemoryBIOProtocol) for p in admitted))
        self.assertIsNone(factory.buildProtocol(address()))
        self.assertIsNotNone(factory.buildProtocol(address("192.0.2.8")))
        self.assertEqual(factory.refusals.counts["address_full"], 1)
        self.assertEqual(budget.used, 3)

    def test_a_listener_factory_that_answers_none_gets_no_tls_layer_around_nothing(self):
        class Nobody(protocol.Factory):
            def buildProtocol(self, addr):
                return None

        clock = Clock()
        budget = DescriptorBudget(0, 1000)
        factory = GuardedFactory(Nobody(), "relay listener", TLS_LIMITS, budget, Refusals(clock), clock, self.tls)
        self.assertIsNone(factory.buildProtocol(address()))
        self.assertEqual((budget.used, factory.count), (0, 0))

    def test_a_closed_connection_gives_its_slot_back(self):
        factory, budget = self.guarded()
        connections = [factory.buildProtocol(address()) for _ in range(2)]
        transports = [StringTransport() for _ in connections]
        for connection, transport in zip(connections, transports):
            connection.makeConnection(transport)
        self.assertIsNone(factory.buildProtocol(address()))
        connections[0].connectionLost(protocol.connectionDone)
        self.assertEqual((budget.used, factory.count), (1, 1))
        self.assertIsNotNone(factory.buildProtocol(address()))

    def test_a_handshake_not_done_in_time_aborts_the_transport(self):
        clock = Clock()
        factory, budget = self.guarded(clock=clock)
        connection = factory.buildProtocol(address())
        transport = StringTransport()
        connection.makeConnection(transport)
        clock.advance(4.9)
        self.assertFalse(transport.disconnecting)
        clock.advance(0.2)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(factory.refusals.counts["tls_handshake_timeout"], 1)

    def test_a_flood_on_one_listener_leaves_the_proxy_socket_its_share(self):
        budget = DescriptorBudget(0, 400)
        unlimited = Limits(max_connections=10_000, max_per_address=10_000, handshake_timeout=5.0)
        relays, _ = self.guarded(limits=unlimited, budget=budget)
        management, _ = self.guarded(limits=unlimited, budget=budget, name="management")
        proxy = GuardedFactory(protocol.Factory.forProtocol(Echo), "proxy socket", unlimited, budget, Refusals(Clock()), Clock())
        flood = 0
        while relays.buildProtocol(address(f"10.0.{flood // 250}.{flood % 250}")) is not None:
            flood += 1
        self.assertGreater(flood, 0)
        self.assertLess(flood, budget.total)
        self.assertEqual(relays.refusals.counts["descriptor_budget"], 1)
        # what the flood could not take: the other listeners' own shares
        self.assertEqual(budget.total - flood, 2 * budget.share)
        for _ in range(budget.share):
            self.assertIsNotNone(proxy.buildProtocol(UNIXAddress(None)))
        self.assertIsNotNone(management.buildProtocol(address("192.0.2.99")))


class RefusedOnLoopbackTests(Credentialled):
    """Refused connections to a real TLS listener are closed, with nothing unhandled logged
    (trial fails a test on any logged error, the AttributeError of the issue included)."""

    @defer.inlineCallbacks
    def test_connections_past_the_limit_are_closed_by_the_listener(self):
        factory = GuardedFactory(
            protocol.Factory.forProtocol(Echo),
            "relay listener",
            TLS_LIMITS,
            DescriptorBudget(0, 1000),
            Refusals(reactor),
            reactor,
            self.tls,
        )
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        lost: list[defer.Deferred] = []
        clients = []

        class Client(protocol.Protocol):
            def connectionMade(self):
                clients.append(self)

            def connectionLost(self, reason):
                self.lost.callback(None)

        creator = protocol.ClientCreator(reactor, Client)
        for _ in range(6):
            client = yield creator.connectTCP("127.0.0.1", port.getHost().port)
            client.lost = defer.Deferred()
            lost.append(client.lost)
        # four of six are refused: each is closed by the server without a byte of TLS
        closed = []
        for index, waiting in enumerate(lost):
            waiting.addCallback(lambda _, index=index: closed.append(index))
        yield wait_for(lambda: len(closed) >= 4, what="four refused connections closed")
        self.assertEqual(factory.count, 2)
        self.assertEqual(factory.refusals.counts["address_full"], 4)
        for client in clients:
            client.transport.loseConnection()
        yield defer.DeferredList(lost)
        yield wait_for(lambda: factory.count == 0, what="every slot given back")
