"""Mutual TLS over real loopback sockets: handshakes that must work and ones that must fail."""

import os
import shutil
import tempfile

import pytest
from cryptography.hazmat.primitives import serialization
from OpenSSL import crypto
from twisted.internet import defer, protocol, reactor
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IHandshakeListener
from twisted.logger import globalLogPublisher
from twisted.trial import unittest
from zope.interface import implementer

from mediaproxy import datatypes
from mediaproxy.net import certgen
from mediaproxy.net.tls import ClientContextFactory, ContextFactory, Credentials, PeerVerifier, TLSConfigurationError, hostname_problem


@implementer(IHandshakeListener)
class Peer(protocol.Protocol):
    def __init__(self, verifier, outcome):
        self.verifier = verifier
        self.outcome = outcome

    def handshakeCompleted(self):
        if self.verifier.accept(self.transport):
            if not self.outcome.called:
                self.outcome.callback("accepted")

    def connectionLost(self, reason):
        self.verifier.forget(self.transport)
        if not self.outcome.called:
            self.outcome.callback("lost")


class PeerFactory(protocol.Factory):
    noisy = False

    def __init__(self, verifier, outcome):
        self.verifier, self.outcome = verifier, outcome

    def buildProtocol(self, addr):
        self.peer = Peer(self.verifier, self.outcome)
        return self.peer


class ClientFactory(PeerFactory, protocol.ClientFactory):
    def __init__(self, verifier, outcome):
        super().__init__(verifier, outcome)
        self.lost = defer.Deferred()

    def buildProtocol(self, addr):
        peer = super().buildProtocol(addr)
        original = peer.connectionLost

        def connection_lost(reason):
            original(reason)
            self.lost.callback(None)

        peer.connectionLost = connection_lost
        return peer

    def clientConnectionFailed(self, connector, reason):
        self.outcome.callback("failed")
        self.lost.callback(None)


class TLSHandshakeTests(unittest.TestCase):
    def setUp(self):
        self.directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.directory)
        self.server_dir = os.path.join(self.directory, "server")
        self.client_dir = os.path.join(self.directory, "client")
        self.authority = certgen.generate(self.server_dir)
        shutil.copytree(self.server_dir, self.client_dir)

    def replace_client_identity(self, authority=None, **options):
        authority = authority or self.authority
        certificate, key = authority.issue("mediaproxy-relay", unit="relay", **options)
        certgen.write_identity(self.client_dir, "relay", certificate, key)
        return certificate

    def write_crl(self, directory):
        with open(os.path.join(directory, "crl.pem"), "wb") as stream:
            stream.write(self.authority.crl().public_bytes(serialization.Encoding.PEM))

    @defer.inlineCallbacks
    def handshake(self, server_passport=None, client_passport=None):
        server_credentials = Credentials(self.server_dir, "dispatcher")
        client_credentials = Credentials(self.client_dir, "relay")
        server_outcome, client_outcome = defer.Deferred(), defer.Deferred()
        self.server_verifier = PeerVerifier(server_credentials, server_passport, 300, reactor, "relay")
        server_factory = PeerFactory(self.server_verifier, server_outcome)
        port = reactor.listenSSL(0, server_factory, ContextFactory(server_credentials), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        client_factory = ClientFactory(PeerVerifier(client_credentials, client_passport, 300, reactor, "dispatcher"), client_outcome)
        connector = reactor.connectSSL("127.0.0.1", port.getHost().port, client_factory, ClientContextFactory(client_credentials))
        self.addCleanup(connector.disconnect)
        results = yield defer.gatherResults([server_outcome, client_outcome])
        self.server_factory, self.client_factory = server_factory, client_factory
        return tuple(results)

    @defer.inlineCallbacks
    def assert_refused(self, **passports):
        # with TLS 1.3 the client may finish its side before the server rejects its certificate,
        # so what counts is that the server never accepts and the client's connection ends
        server, _client = yield self.handshake(**passports)
        self.assertEqual(server, "lost")
        yield self.client_factory.lost
        self.assertEqual(self.server_verifier.peers, {})

    @defer.inlineCallbacks
    def test_mutual_handshake_with_passports(self):
        result = yield self.handshake(datatypes.passport("O:MediaProxy Test, CN:*relay"), datatypes.passport("CN:mediaproxy-dispatcher"))
        self.assertEqual(result, ("accepted", "accepted"))

    @defer.inlineCallbacks
    def test_unknown_ca_fails(self):
        self.replace_client_identity(certgen.CertificateAuthority("Other CA"))
        yield self.assert_refused()

    @defer.inlineCallbacks
    def test_wrong_passport_is_refused(self):
        yield self.assert_refused(server_passport=datatypes.passport("CN:*dispatcher"))

    @defer.inlineCallbacks
    def test_revoked_certificate_in_crl_fails(self):
        self.authority.revoke(self.replace_client_identity())
        self.write_crl(self.server_dir)
        yield self.assert_refused()

    @defer.inlineCallbacks
    def test_expired_certificate_fails(self):
        self.replace_client_identity(expired=True)
        yield self.assert_refused()

    @defer.inlineCallbacks
    def test_peer_revoked_later_is_dropped_at_the_next_check(self):
        certificate = self.replace_client_identity()
        result = yield self.handshake()
        self.assertEqual(result, ("accepted", "accepted"))
        self.assertEqual(len(self.server_verifier.peers), 1)
        self.authority.revoke(certificate)
        self.write_crl(self.server_dir)
        os.utime(os.path.join(self.server_dir, "crl.pem"), (1, 1))  # a different mtime even within the same second
        self.server_verifier.verify_all()
        yield self.client_factory.lost
        self.assertEqual(self.server_verifier.peers, {})

    def test_missing_and_broken_files_are_named(self):
        os.unlink(os.path.join(self.server_dir, "relay.key"))
        with self.assertRaises(TLSConfigurationError) as caught:
            Credentials(self.server_dir, "relay")
        self.assertIn("relay.key", str(caught.exception))
        with open(os.path.join(self.server_dir, "ca.pem"), "w") as stream:
            stream.write("garbage")
        with self.assertRaises(TLSConfigurationError) as caught:
            Credentials(self.server_dir, "dispatcher")
        self.assertIn("ca.pem is not a PEM CA certificate", str(caught.exception))

    def test_credentials_without_crl_still_work(self):
        os.unlink(os.path.join(self.server_dir, "crl.pem"))
        credentials = Credentials(self.server_dir, "dispatcher")
        self.assertIsNone(credentials.crl)
        self.assertIsNotNone(credentials.context())
        self.assertIn("CN=mediaproxy-dispatcher", credentials.describe())


class RolesAndNames(unittest.TestCase):
    """What the verifier decides from a certificate: its role (subject OU) and, optionally, its DNS name."""

    def setUp(self):
        self.directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.directory)
        self.authority = certgen.generate(self.directory, dispatcher_names=("dispatcher.example.com",))

    def verdict(self, verifier_role, certificate, name=None):
        transport = FakeTLSTransport(certificate)
        verifier = PeerVerifier(Credentials(self.directory, "dispatcher"), None, 300, reactor, verifier_role)
        return verifier.accept(transport, name), transport.aborted, verifier.refusals.snapshot()

    def test_each_listener_takes_only_its_role(self):
        relay, _ = self.authority.issue("r", unit="relay")
        client, _ = self.authority.issue("c", unit="client")
        unmarked, _ = self.authority.issue("x")
        self.assertEqual(self.verdict("relay", relay), (True, False, {}))
        self.assertEqual(self.verdict("relay", client), (False, True, {"wrong_role": 1}))
        self.assertEqual(self.verdict("management client", client)[0], True)
        self.assertEqual(self.verdict("management client", relay)[0], False)
        self.assertEqual(self.verdict("relay", unmarked)[0], False)

    def test_an_operators_ca_without_roles_accepts_any_role_and_says_so_once(self):
        certificate, key = self.authority.issue("own-dispatcher")
        certgen.write_identity(self.directory, "dispatcher", certificate, key)
        client, _ = self.authority.issue("c", unit="client")
        self.assertEqual(self.verdict("relay", client)[0], True)
        verifier = PeerVerifier(Credentials(self.directory, "dispatcher"), None, 300, reactor, "relay")
        logged = collect_events(self)
        verifier.start()
        verifier.stop()
        (warning,) = [event for event in logged if "carries no MediaProxy role" in event.get("log_format", "")]
        self.assertEqual(warning["what"], "relay")

    def test_dispatcher_name_is_checked_when_asked(self):
        dispatcher = Credentials(self.directory, "dispatcher").certificate
        self.assertIsNone(hostname_problem(dispatcher, "dispatcher.example.com"))
        self.assertIn("not for other.example.com", hostname_problem(dispatcher, "other.example.com"))
        relay = Credentials(self.directory, "relay").certificate
        # no subjectAltName at all: refused (service-identity 18.1, Debian's, says "not for", newer ones "cannot be checked")
        self.assertIsNotNone(hostname_problem(relay, "dispatcher.example.com"))
        accepted, aborted, refused = self.verdict("dispatcher", crypto.X509.from_cryptography(dispatcher), "other.example.com")
        self.assertEqual((accepted, aborted, refused), (False, True, {"wrong_name": 1}))


class FakeTLSTransport:
    def __init__(self, certificate):
        self.certificate = certificate if isinstance(certificate, crypto.X509) else crypto.X509.from_cryptography(certificate)
        self.aborted = False

    def getPeerCertificate(self):
        return self.certificate

    def getPeer(self):
        return IPv4Address("TCP", "192.0.2.7", 4444)

    def abortConnection(self):
        self.aborted = True


def collect_events(test):
    events = []
    globalLogPublisher.addObserver(events.append)
    test.addCleanup(globalLogPublisher.removeObserver, events.append)
    return events


def test_gen_certs_writes_dispatcher_names_and_refuses_garbage(tmp_path, capsys):
    assert certgen.main([str(tmp_path / "good"), "--dispatcher-name", "dispatcher.example.com"]) == 0
    certificate = Credentials(str(tmp_path / "good"), "dispatcher").certificate
    assert hostname_problem(certificate, "dispatcher.example.com") is None
    for garbage in ("bad name", "x" * 300, "a..b", "\u0661.example.com"):
        with pytest.raises(SystemExit) as caught:
            certgen.main([str(tmp_path / "bad"), "--dispatcher-name", garbage])
        assert caught.value.code == 2 and "is not a DNS name" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
