"""Test and demo certificates: a CA plus dispatcher, relay and management-client certificates.

These are for trying MediaProxy out and for the test suite; production deployments should use
their own CA. Private keys are written with mode 0600 and never shipped.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mediaproxy.datatypes import is_hostname
from mediaproxy.net.tls import ROLES

ORGANIZATION = "MediaProxy Test"
# The role is written in the subject OU, which the daemons check (tls.PeerVerifier), and in the
# extended key usage, which OpenSSL checks: only the dispatcher acts as a TLS server.
KEY_USAGES = {
    "dispatcher": [ExtendedKeyUsageOID.SERVER_AUTH],
    "relay": [ExtendedKeyUsageOID.CLIENT_AUTH],
    "client": [ExtendedKeyUsageOID.CLIENT_AUTH],
}


def _name(common_name: str, organization: str, unit: str | None = None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization)]
    if unit:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, unit))
    attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attributes)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class CertificateAuthority:
    def __init__(self, common_name: str = "MediaProxy Test CA", organization: str = ORGANIZATION, days: int = 3650) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        self.name = _name(common_name, organization)
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(self.name)
            .issuer_name(self.name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        self.revoked: list[x509.Certificate] = []

    def issue(
        self,
        common_name: str,
        organization: str = ORGANIZATION,
        unit: str | None = None,
        days: int = 825,
        expired: bool = False,
        dns_names: tuple[str, ...] = (),
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        if expired:
            not_before, not_after = now - datetime.timedelta(days=30), now - datetime.timedelta(days=1)
        else:
            not_before, not_after = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)
        builder = x509.CertificateBuilder()
        if dns_names:
            builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(name) for name in dns_names]), critical=False)
        certificate = (
            builder.subject_name(_name(common_name, organization, unit))
            .issuer_name(self.name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(KEY_USAGES.get(unit or "", [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH])),
                critical=False,
            )
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        return certificate, key

    def revoke(self, certificate: x509.Certificate) -> None:
        self.revoked.append(certificate)

    def crl(self) -> x509.CertificateRevocationList:
        now = _now()
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.name)
            .last_update(now - datetime.timedelta(minutes=5))
            .next_update(now + datetime.timedelta(days=30))
        )
        for certificate in self.revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(certificate.serial_number)
                .revocation_date(now - datetime.timedelta(minutes=1))
                .build()
            )
        return builder.sign(self.key, hashes.SHA256())


def write_pem(path: str, data: bytes, private: bool = False) -> None:
    """A key in a directory closed to others is also readable by the directory's group: in the
    package's /etc/mediaproxy/tls (root:mediaproxy 0750) the daemons, running as mediaproxy, read it."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    fd = os.open(path, flags, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as stream:
        stream.write(data)
        directory = os.stat(os.path.dirname(os.path.abspath(path)))
        if private and not directory.st_mode & 0o007:
            if os.fstat(stream.fileno()).st_gid != directory.st_gid:
                os.fchown(stream.fileno(), -1, directory.st_gid)
            os.fchmod(stream.fileno(), 0o640)


def certificate_pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def write_identity(directory: str, role: str, certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
    write_pem(os.path.join(directory, f"{role}.crt"), certificate_pem(certificate))
    write_pem(os.path.join(directory, f"{role}.key"), key_pem(key), private=True)


def generate(directory: str, with_crl: bool = True, dispatcher_names: tuple[str, ...] = ()) -> CertificateAuthority:
    """Write ca.pem, crl.pem and a certificate/key per role into ``directory``."""
    os.makedirs(directory, exist_ok=True)
    authority = CertificateAuthority()
    write_pem(os.path.join(directory, "ca.pem"), certificate_pem(authority.certificate))
    for role in ROLES:
        certificate, key = authority.issue(f"mediaproxy-{role}", unit=role, dns_names=dispatcher_names if role == "dispatcher" else ())
        write_identity(directory, role, certificate, key)
    if with_crl:
        write_pem(os.path.join(directory, "crl.pem"), authority.crl().public_bytes(serialization.Encoding.PEM))
    return authority


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mediaproxy-gen-certs",
        description="Create a test CA and dispatcher, relay and management-client certificates (for tests and demos only).",
    )
    parser.add_argument("directory", help="where to write ca.pem, crl.pem, dispatcher.crt/.key, relay.crt/.key, client.crt/.key")
    parser.add_argument("--force", action="store_true", help="overwrite existing files")
    parser.add_argument(
        "--dispatcher-name",
        action="append",
        default=[],
        metavar="NAME",
        help="a DNS name relays reach the dispatcher by (for [Relay] verify_dispatcher_name); repeatable",
    )
    args = parser.parse_args(argv)
    for name in args.dispatcher_name:
        if not is_hostname(name):
            parser.error(f"--dispatcher-name {name!r} is not a DNS name")
    if os.path.exists(os.path.join(args.directory, "ca.pem")) and not args.force:
        print(f"{args.directory} already holds ca.pem; use --force to replace the certificates", file=sys.stderr)
        return 1
    generate(args.directory, dispatcher_names=tuple(args.dispatcher_name))
    print(f"Test certificates written to {args.directory} (CA, dispatcher, relay, client). Do not use them in production.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
