"""Certificates for the TLS tests, made with `cryptography` the way a customer's own PKI would make them (root CAs,
intermediates, server and client certificates, weak and expired ones), and a paho client that speaks TLS."""

from __future__ import annotations

import datetime
import ipaddress
import pathlib
import queue
import ssl
import tempfile
import uuid
from typing import Any, Literal

import paho.mqtt.client as mqtt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

NOW = datetime.datetime.now(datetime.UTC)
DAY = datetime.timedelta(days=1)


def new_key(kind: str = "ec"):
    if kind == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "ec224":
        return ec.generate_private_key(ec.SECP224R1())
    bits = int(kind.removeprefix("rsa"))
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def pem(*certificates: x509.Certificate) -> str:
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in certificates)


def key_pem(key, *, traditional: bool = False, password: bytes | None = None) -> str:
    encryption = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    form = serialization.PrivateFormat.TraditionalOpenSSL if traditional else serialization.PrivateFormat.PKCS8
    return key.private_bytes(serialization.Encoding.PEM, form, encryption).decode()


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Acme"), x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    )


def make_ca(
    common_name: str = "Acme Root CA",
    *,
    issuer: tuple[x509.Certificate, Any] | None = None,
    key: Any = None,
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
    ca: bool = True,
) -> tuple[x509.Certificate, Any]:
    """A CA certificate: self-signed, or signed by `issuer` (an intermediate)."""
    key = key or new_key()
    signer_cert, signer_key = issuer if issuer else (None, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(signer_cert.subject if signer_cert is not None else _name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or NOW - DAY)
        .not_valid_after(not_after or NOW + 365 * DAY)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    return builder.sign(signer_key, hashes.SHA256()), key


def make_leaf(
    issuer: tuple[x509.Certificate, Any] | None,
    common_name: str,
    *,
    sans: tuple[str, ...] = (),
    key: Any = None,
    client: bool = False,
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
    extended_usage: bool = True,
) -> tuple[x509.Certificate, Any]:
    """A server (or, with `client`, a client) certificate signed by `issuer`, or self-signed when it is None."""
    key = key or new_key()
    signer_cert, signer_key = issuer if issuer else (None, key)
    names: list[x509.GeneralName] = []
    for san in sans:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(san)))
        except ValueError:
            names.append(x509.DNSName(san))
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(signer_cert.subject if signer_cert is not None else _name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or NOW - DAY)
        .not_valid_after(not_after or NOW + 90 * DAY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    if extended_usage:
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(signer_key, hashes.SHA256()), key


def make_with_malformed_extension(
    oid: x509.ObjectIdentifier, common_name: str = "Broken CA"
) -> tuple[x509.Certificate, Any]:
    """A self-signed certificate that parses, but whose `oid` extension is not valid DER: what a broken in-house PKI
    tool makes. cryptography parses extensions only when they are read, and then raises ValueError."""
    key = new_key()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - DAY)
        .not_valid_after(NOW + 30 * DAY)
        .add_extension(x509.UnrecognizedExtension(oid, b"\x30\x03\x01\x01"), critical=True)
        .sign(key, hashes.SHA256())
    )
    return certificate, key


# id-ecPublicKey (1.2.840.10045.2.1) and the named curve P-256 (1.2.840.10045.3.1.7), as DER, in a certificate's
# subjectPublicKeyInfo.
_EC_PUBLIC_KEY_OID = bytes.fromhex("06072a8648ce3d0201")
_P256_OID = bytes.fromhex("06082a8648ce3d030107")


def with_unreadable_public_key(certificate: x509.Certificate, how: Literal["algorithm", "point"]) -> str:
    """PEM of `certificate` (an EC P-256 one) with a public key that cannot be read: an algorithm no library knows
    ("algorithm"), or P-256's point said to be on another curve ("point"). Everything else still parses."""
    der = certificate.public_bytes(serialization.Encoding.DER)
    if how == "algorithm":
        assert der.count(_EC_PUBLIC_KEY_OID) == 1
        der = der.replace(_EC_PUBLIC_KEY_OID, bytes.fromhex("06072a8648ce3d0209"))
    else:
        assert der.count(_P256_OID) == 1
        der = der.replace(_P256_OID, bytes.fromhex("06082a8648ce3d030101"))  # prime192v1
    return x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM).decode()


def with_unreadable_name(certificate: x509.Certificate, common_name: str) -> str:
    """PEM of `certificate` with its UTF8String `common_name` (in its subject, and in its issuer when it is
    self-signed) replaced by bytes that are not UTF-8. Everything else still parses."""
    der = certificate.public_bytes(serialization.Encoding.DER)
    encoded = common_name.encode()
    assert len(encoded) < 128 and bytes([0x0C, len(encoded)]) + encoded in der
    der = der.replace(bytes([0x0C, len(encoded)]) + encoded, bytes([0x0C, len(encoded)]) + b"\xff" * len(encoded))
    return x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM).decode()


# sha256WithRSAEncryption (1.2.840.113549.1.1.11) and sha1WithRSAEncryption (1.2.840.113549.1.1.5) as DER: the same
# length, so one replaces the other without changing any length around it.
_SHA256_WITH_RSA_OID = bytes.fromhex("06092a864886f70d01010b")
_SHA1_WITH_RSA_OID = bytes.fromhex("06092a864886f70d010105")


def _der(tag: int, body: bytes) -> bytes:
    length = len(body)
    if length < 128:
        return bytes([tag, length]) + body
    size = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + body


def signed_with_sha1(certificate: x509.Certificate, signer_key: rsa.RSAPrivateKey) -> x509.Certificate:
    """`certificate` (signed with SHA-256 by the RSA key `signer_key`) signed again with SHA-1 by the same key: what
    an old PKI still holds. cryptography's CertificateBuilder no longer signs with SHA-1, so the TBSCertificate's
    algorithm is swapped and signed with the RSA primitive, and the certificate is put together as DER."""
    tbs = certificate.tbs_certificate_bytes
    assert tbs.count(_SHA256_WITH_RSA_OID) == 1
    tbs = tbs.replace(_SHA256_WITH_RSA_OID, _SHA1_WITH_RSA_OID)
    signature = signer_key.sign(tbs, padding.PKCS1v15(), hashes.SHA1())
    algorithm = _der(0x30, _SHA1_WITH_RSA_OID + b"\x05\x00")
    der = _der(0x30, tbs + algorithm + _der(0x03, b"\x00" + signature))
    resigned = x509.load_der_x509_certificate(der)
    assert isinstance(resigned.signature_hash_algorithm, hashes.SHA1)
    return resigned


def load_cert_chain(context: ssl.SSLContext, certificate_pem: str, key_pem_text: str) -> None:
    """`context.load_cert_chain` from PEM text. `ssl` reads a chain only from files, so it goes through two files in a
    directory removed as soon as they are read (a private key is not left in /tmp)."""
    with tempfile.TemporaryDirectory() as directory:
        certificate_file, key_file = pathlib.Path(directory, "chain.pem"), pathlib.Path(directory, "key.pem")
        certificate_file.write_text(certificate_pem)
        key_file.write_text(key_pem_text)
        context.load_cert_chain(certificate_file, key_file)


def client_context(
    ca_pem: str, *, certificate: tuple[x509.Certificate, Any] | None = None, chain: str = ""
) -> ssl.SSLContext:
    """What a careful client does: verify the broker's certificate against `ca_pem` and its host name."""
    context = ssl.create_default_context(cadata=ca_pem)
    if certificate is not None:
        cert, key = certificate
        load_cert_chain(context, pem(cert) + chain, key_pem(key))
    return context


def tls_connect(
    port: int,
    context: ssl.SSLContext,
    *,
    username: str | None = None,
    password: str | None = None,
    transport: Literal["tcp", "websockets"] = "tcp",
    timeout: float = 5.0,
) -> tuple[str, mqtt.Client | None]:
    """("accepted", connected client) or ("refused: <why>", None): a paho 2.x client over TLS to 127.0.0.1."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=uuid.uuid4().hex, transport=transport)
    if username is not None:
        client.username_pw_set(username, password)
    client.tls_set_context(context)
    answers: queue.Queue = queue.Queue()
    client.on_connect = lambda c, u, flags, rc, props: answers.put(rc)
    client.on_disconnect = lambda c, u, flags, rc, props: answers.put(rc)
    try:
        client.connect("127.0.0.1", port)
    except (OSError, ssl.SSLError) as exc:
        return f"refused: {type(exc).__name__}: {exc}", None
    client.loop_start()
    try:
        rc = answers.get(timeout=timeout)
    except queue.Empty:
        rc = None
    if rc is not None and not rc.is_failure:
        return "accepted", client
    client.loop_stop()
    client.disconnect()
    return f"refused: {rc}", None
