"""Throwaway X.509 certificates for TLS tests, made in the test: a private CA and the
certificates it signs, written as PEM files.

    ca = CertificateAuthority.create(tmp_path / "ca")
    server = ca.issue("relay.test", tmp_path / "server")   # names: DNS relay.test, 127.0.0.1
    other = CertificateAuthority.create(tmp_path / "other")  # a CA nobody trusts

`server.cert` (the chain: leaf then CA) and `server.key` are paths; `ca.cert` is what a
client trusts (`ca_file`). `expired=True` issues a certificate that ended yesterday.
"""

from __future__ import annotations

import ipaddress
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class Issued:
    cert: Path  # leaf then CA, PEM
    key: Path
    certificate: x509.Certificate

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, self.key)
        return context


@dataclass(frozen=True)
class CertificateAuthority:
    cert: Path
    key: Path
    certificate: x509.Certificate
    private_key: ec.EllipticCurvePrivateKey

    @classmethod
    def create(cls, folder: Path, name: str = "Embargo Relay test CA") -> CertificateAuthority:
        folder.mkdir(parents=True, exist_ok=True)
        key = _key()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.now(UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(hours=1))
            .not_valid_after(now + timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .sign(key, hashes.SHA256())
        )
        cert_path, key_path = folder / "ca.pem", folder / "ca.key"
        cert_path.write_bytes(_pem(certificate))
        _write_key(key, key_path)
        return cls(cert_path, key_path, certificate, key)

    def issue(
        self,
        host: str,
        folder: Path,
        *,
        addresses: tuple[str, ...] = ("127.0.0.1",),
        expired: bool = False,
    ) -> Issued:
        """A server certificate for `host` (and the IP `addresses`), signed by this CA."""
        folder.mkdir(parents=True, exist_ok=True)
        key = _key()
        now = datetime.now(UTC)
        start, end = (
            (now - timedelta(days=3), now - timedelta(days=1))
            if expired
            else (now - timedelta(hours=1), now + timedelta(days=1))
        )
        names: list[x509.GeneralName] = [x509.DNSName(host)]
        names += [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
        certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.private_key.public_key()),
                critical=False,
            )
            .sign(self.private_key, hashes.SHA256())
        )
        cert_path, key_path = folder / f"{host}.pem", folder / f"{host}.key"
        cert_path.write_bytes(_pem(certificate) + _pem(self.certificate))
        _write_key(key, key_path)
        return Issued(cert_path, key_path, certificate)

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts this CA only, and checks host names."""
        context = ssl.create_default_context(cafile=str(self.cert))
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context
