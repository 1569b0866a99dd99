"""Mutual TLS for the relay and management links: credentials, contexts, passports, re-checks."""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto
from service_identity import CertificateError, VerificationError
from service_identity.cryptography import verify_certificate_hostname
from twisted.internet.interfaces import IOpenSSLContextFactory
from zope.interface import implementer

from mediaproxy.datatypes import Passport
from mediaproxy.net.ratelimit import Refusals
from mediaproxy.runtime.log import Logger
from mediaproxy.runtime.timers import Periodic

log = Logger(namespace="tls")

_SUBJECT_NAMES = {
    NameOID.COMMON_NAME: "CN",
    NameOID.ORGANIZATION_NAME: "O",
    NameOID.ORGANIZATIONAL_UNIT_NAME: "OU",
    NameOID.COUNTRY_NAME: "C",
    NameOID.LOCALITY_NAME: "L",
    NameOID.STATE_OR_PROVINCE_NAME: "ST",
    NameOID.EMAIL_ADDRESS: "EMAIL",
}


class TLSConfigurationError(Exception):
    """The TLS files are missing or unusable; the message names the file and the problem."""


@dataclass
class _LoadedFile:
    path: str
    mtime: float


class Credentials:
    """The CA, optional CRL and own certificate/key of one role, re-read when the files change."""

    def __init__(self, certs_dir: str, role: str) -> None:
        self.certs_dir = certs_dir
        self.role = role
        self.ca_path = os.path.join(certs_dir, "ca.pem")
        self.crl_path = os.path.join(certs_dir, "crl.pem")
        self.cert_path = os.path.join(certs_dir, f"{role}.crt")
        self.key_path = os.path.join(certs_dir, f"{role}.key")
        self._stamp: tuple | None = None
        self._crl_missing_logged = False
        self.reload()

    def _mtimes(self) -> tuple:
        return tuple(_mtime(path) for path in (self.ca_path, self.crl_path, self.cert_path, self.key_path))

    def reload_if_changed(self) -> bool:
        if self._mtimes() != self._stamp:
            self.reload()
            return True
        return False

    def reload(self) -> None:
        stamp = self._mtimes()
        self.ca = _load_certificate(self.ca_path, "CA certificate")
        self.certificate = _load_certificate(self.cert_path, f"{self.role} certificate")
        self.key = _load_key(self.key_path)
        self.crl = None
        if os.path.exists(self.crl_path):
            try:
                with open(self.crl_path, "rb") as stream:
                    self.crl = x509.load_pem_x509_crl(stream.read())
            except (OSError, ValueError) as error:
                raise TLSConfigurationError(f"{self.crl_path}: cannot load the CRL: {error}") from None
        elif not self._crl_missing_logged:
            self._crl_missing_logged = True
            log.info("No CRL at {path}; revocation is not checked", path=self.crl_path)
        self._stamp = stamp
        self._context = None

    def describe(self) -> str:
        subject = subject_of(self.certificate)
        return "CN={}, OU={}, O={}".format(subject.get("CN", "-"), subject.get("OU", "-"), subject.get("O", "-"))

    def context(self) -> SSL.Context:
        if self._context is None:
            self._context = self._build_context()
        return self._context

    def _build_context(self) -> SSL.Context:
        context = SSL.Context(SSL.TLS_METHOD)
        context.set_min_proto_version(SSL.TLS1_2_VERSION)
        context.set_options(SSL.OP_NO_COMPRESSION)
        try:
            _use_identity(context, self.certificate, self.key)
            context.check_privatekey()
        except SSL.Error as error:
            raise TLSConfigurationError(f"{self.key_path} does not match {self.cert_path}: {error}") from None
        store = context.get_cert_store()
        store.add_cert(crypto.X509.from_cryptography(self.ca))
        if self.crl is not None:
            _add_crl(store, self.crl)
            store.set_flags(crypto.X509StoreFlags.CRL_CHECK)
        context.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, _verify_callback)
        context.set_verify_depth(4)
        # a single session id context lets servers verify clients without session-cache errors
        context.set_session_id(b"mediaproxy-" + self.role.encode())
        return context

    def revocation_reason(self, peer: crypto.X509) -> str | None:
        """Why ``peer`` may no longer be used (expired, revoked), or None if it is still good."""
        certificate = peer.to_cryptography() if isinstance(peer, crypto.X509) else peer
        now = datetime.datetime.now(datetime.UTC)
        expiry = not_valid_after(certificate)
        if expiry < now:
            return f"certificate expired at {expiry:%Y-%m-%d %H:%M:%S} UTC"
        if self.crl is not None and self.crl.get_revoked_certificate_by_serial_number(certificate.serial_number) is not None:
            return "certificate revoked by the CRL"
        return None


def _verify_callback(connection, certificate, errno, depth, ok):  # OpenSSL callback signature
    if not ok:
        subject = subject_of(certificate)
        log.warn(
            "TLS peer certificate rejected (depth {depth}, CN={cn}): {reason}",
            depth=depth,
            cn=subject.get("CN", "?"),
            reason=_x509_error_text(errno),
        )
    return ok


# OpenSSL's X509_V_ERR_* codes a peer is likely to cause (x509_vfy.h); pyOpenSSL has no public
# way to turn the number into OpenSSL's own text
_X509_ERRORS = {
    2: "unable to get issuer certificate",
    3: "unable to get certificate CRL",
    7: "certificate signature failure",
    8: "CRL signature failure",
    9: "certificate is not yet valid",
    10: "certificate has expired",
    11: "CRL is not yet valid",
    12: "CRL has expired",
    18: "self-signed certificate",
    19: "self-signed certificate in certificate chain",
    20: "unable to get local issuer certificate",
    21: "unable to verify the first certificate",
    22: "certificate chain too long",
    23: "certificate revoked",
    24: "invalid CA certificate",
    26: "unsupported certificate purpose",
    27: "certificate not trusted",
    28: "certificate rejected",
}


def _x509_error_text(errno: int) -> str:
    return _X509_ERRORS.get(errno, f"X509 verification error {errno}")


def not_valid_after(certificate: x509.Certificate) -> datetime.datetime:
    """The expiry as an aware UTC datetime, on cryptography 38 (Debian bookworm) and >= 42."""
    try:
        return certificate.not_valid_after_utc
    except AttributeError:
        return certificate.not_valid_after.replace(tzinfo=datetime.UTC)


def _mtime(path: str) -> float | None:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return None


def _load_certificate(path: str, what: str) -> x509.Certificate:
    try:
        with open(path, "rb") as stream:
            return x509.load_pem_x509_certificate(stream.read())
    except OSError as error:
        raise TLSConfigurationError(f"cannot read the {what} {path}: {error.strerror}") from None
    except ValueError:
        raise TLSConfigurationError(f"{path} is not a PEM {what}") from None


def _load_key(path: str):
    try:
        with open(path, "rb") as stream:
            return serialization.load_pem_private_key(stream.read(), password=None)
    except OSError as error:
        raise TLSConfigurationError(f"cannot read the private key {path}: {error.strerror}") from None
    except (ValueError, TypeError):
        raise TLSConfigurationError(f"{path} is not an unencrypted PEM private key") from None


def _add_crl(store: crypto.X509Store, crl: object) -> None:
    try:
        store.add_crl(crl)
    except (AttributeError, TypeError):
        store.add_crl(crypto.CRL.from_cryptography(crl))  # pyOpenSSL 23 (Debian bookworm)


def _use_identity(context: SSL.Context, certificate: object, key: object) -> None:
    try:
        context.use_certificate(certificate)
        context.use_privatekey(key)
    except TypeError:
        # older pyOpenSSL (Debian bookworm ships 23.0) only takes its own wrappers
        context.use_certificate(crypto.X509.from_cryptography(certificate))
        context.use_privatekey(crypto.PKey.from_cryptography_key(key))


def subject_of(certificate) -> dict[str, str]:  # cryptography or pyOpenSSL certificate
    if isinstance(certificate, crypto.X509):
        certificate = certificate.to_cryptography()
    return {_SUBJECT_NAMES[attribute.oid]: str(attribute.value) for attribute in certificate.subject if attribute.oid in _SUBJECT_NAMES}


@implementer(IOpenSSLContextFactory)
class ContextFactory:
    """Twisted context factory for both ends; the context is rebuilt when the files change."""

    isClient = False

    def __init__(self, credentials: Credentials) -> None:
        self.credentials = credentials

    def getContext(self) -> SSL.Context:  # noqa: N802 - Twisted interface name
        try:
            self.credentials.reload_if_changed()
        except TLSConfigurationError as error:
            log.error("Keeping the previous TLS credentials: {error}", error=str(error))
        return self.credentials.context()


class ClientContextFactory(ContextFactory):
    isClient = True
    method = SSL.TLS_METHOD


# the roles mediaproxy-gen-certs writes into the subject OU
ROLES = ("dispatcher", "relay", "client")
ROLE_OF_PEER = {"relay": "relay", "dispatcher": "dispatcher", "management client": "client"}


def role_of(certificate) -> str | None:
    unit = subject_of(certificate).get("OU")
    return unit if unit in ROLES else None


class PeerVerifier:
    """Checks the role and passport at the handshake, then re-checks expiry and revocation periodically.

    When our own certificate carries a role (mediaproxy-gen-certs writes one into the subject OU),
    a peer must carry the role of ``what``: a management client's certificate cannot pose as a
    relay. With an operator's CA whose certificates carry no role, any certificate of the CA is
    accepted in any role, and start-up says so once.
    """

    def __init__(
        self, credentials: Credentials, passport: Passport | None, interval: int, reactor, what: str, refusals: Refusals | None = None
    ) -> None:
        self.credentials = credentials
        self.passport = passport
        self.what = what
        self.role = ROLE_OF_PEER.get(what, what)
        self.refusals = refusals or Refusals(reactor)
        self.peers: dict = {}
        self.interval = interval
        self._loop = Periodic(f"{what} certificate checks", interval, self.verify_all, reactor)

    @property
    def checks_roles(self) -> bool:
        return role_of(self.credentials.certificate) is not None

    def start(self) -> None:
        if not self.checks_roles and self.passport is None:
            log.warn(
                "The certificate {own} carries no MediaProxy role (subject OU dispatcher, relay or client), so any certificate "
                "signed by the CA is accepted as a {what}; set a passport for {what}s to restrict it",
                own=self.credentials.cert_path,
                what=self.what,
            )
        if not self._loop.running:
            self._loop.startService()

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stopService()

    def accept(self, transport, name: str | None = None) -> bool:
        """Called when a handshake completed; returns False (and drops the peer) on a wrong role or
        passport, or, when ``name`` is given, a certificate that is not for that DNS name."""
        certificate = transport.getPeerCertificate()
        peer = _host(transport.getPeer())
        if certificate is None:
            return self._refuse(transport, "no_certificate", peer, "no certificate")
        if name is not None:
            problem = hostname_problem(certificate, name)
            if problem is not None:
                return self._refuse(transport, "wrong_name", peer, problem)
        subject = subject_of(certificate)
        if self.checks_roles:
            role = role_of(certificate)
            if role != self.role:
                held = f"the {role} role" if role else "no MediaProxy role"
                return self._refuse(transport, "wrong_role", peer, f"certificate {_format_subject(subject)} has {held}, not {self.role}")
        if self.passport is not None and not self.passport.accepts(subject):
            text = f"wrong passport: subject {_format_subject(subject)} does not match {self.passport}"
            return self._refuse(transport, "wrong_passport", peer, text)
        self.peers[transport] = certificate
        return True

    def _refuse(self, transport, kind: str, peer: str, reason: str) -> bool:
        self.refusals.refuse(kind, peer, log, "{what} {peer} refused: {reason}", what=self.what, reason=reason)
        transport.abortConnection()
        return False

    def forget(self, transport) -> None:
        self.peers.pop(transport, None)

    def verify_all(self) -> None:
        try:
            self.credentials.reload_if_changed()
        except TLSConfigurationError as error:
            log.error("Keeping the previous TLS credentials: {error}", error=str(error))
        log.debug("Re-checking the certificates of {count} {what} peers (expiry, revocation)", count=len(self.peers), what=self.what)
        for transport, certificate in list(self.peers.items()):
            reason = self.credentials.revocation_reason(certificate)
            if reason is not None:
                log.warn("Dropping {what} {peer}: {reason}", what=self.what, peer=_host(transport.getPeer()), reason=reason)
                self.peers.pop(transport, None)
                transport.abortConnection()


def hostname_problem(certificate, name: str) -> str | None:
    """Why ``certificate`` is not one for the DNS ``name`` (RFC 6125, by service-identity), or None."""
    if isinstance(certificate, crypto.X509):
        certificate = certificate.to_cryptography()
    try:
        verify_certificate_hostname(certificate, name)
    except VerificationError:
        return f"the certificate is not for {name}"
    except CertificateError as error:
        return f"the certificate cannot be checked against {name}: {error}"
    return None


def _format_subject(subject: dict[str, str]) -> str:
    return ", ".join(f"{name}:{value}" for name, value in subject.items())


def _host(address) -> str:
    return getattr(address, "host", str(address))


def load_credentials(configuration, role: str) -> Credentials:
    certs_path = configuration.tls.certs_path
    directory = configuration.find(certs_path)
    if directory is None or not os.path.isdir(directory):
        searched = certs_path if os.path.isabs(certs_path) else ", ".join(os.path.join(d, certs_path) for d in configuration.search_path)
        raise TLSConfigurationError(
            f"[TLS] certs_path {certs_path!r}: no such directory (searched {searched}); create certificates with mediaproxy-gen-certs"
        )
    return Credentials(directory, role)
