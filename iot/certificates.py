"""Every use of `cryptography` for devices' X.509 client certificates: a deployment's device CA, the certificates it
issues (from a key it generates or from a device's CSR), the checks a CSR must pass, and the CRL the broker reads.

Pure functions over PEM text and an explicit `now`: no database, no clock, no files. Whatever subject a CSR asks for
is ignored (only its public key is used); a private key is returned only to the caller that had it generated.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Iterable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from controlplane.validators import find_control_character
from deployments import tls

# A device certificate is valid this long; a device rotates its credentials before then.
DEVICE_CERTIFICATE_VALIDITY = datetime.timedelta(days=365)
# The CRL the broker reads says when the next one is due; OpenSSL refuses every client once that time has passed, so
# a fresh one is signed well before (CRL_REFRESH_BEFORE), whenever the broker's spec is built.
CRL_VALIDITY = datetime.timedelta(days=180)
CRL_REFRESH_BEFORE = datetime.timedelta(days=30)
MAX_CSR_CHARS = 16 * 1024

_CSR_LABELS = ("CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST")


class Reason:
    """Revocation reasons we record (RFC 5280 CRLReason names)."""

    CERTIFICATE_HOLD = "certificateHold"  # the device is disabled; enabling it takes the certificate off the CRL
    SUPERSEDED = "superseded"  # its credentials were rotated
    CESSATION_OF_OPERATION = "cessationOfOperation"  # the device was deleted


_REASON_FLAGS = {
    Reason.CERTIFICATE_HOLD: x509.ReasonFlags.certificate_hold,
    Reason.SUPERSEDED: x509.ReasonFlags.superseded,
    Reason.CESSATION_OF_OPERATION: x509.ReasonFlags.cessation_of_operation,
}


@dataclasses.dataclass(frozen=True)
class IssuedCertificate:
    certificate_pem: str
    private_key_pem: str  # "" when the device sent a CSR: its key never left it
    serial: str  # lower-case hex, as deployments.tls.facts shows serial numbers
    fingerprint_sha256: str
    not_before: datetime.datetime
    not_after: datetime.datetime


@dataclasses.dataclass(frozen=True)
class Revoked:
    serial: str  # hex
    revoked_at: datetime.datetime
    reason: str  # a Reason value


def generate_device_ca(*, deployment_name: str, now: datetime.datetime) -> tuple[str, str]:
    """(certificate PEM, private key PEM) of a deployment's own device CA: self-signed, EC P-256, may sign client
    certificates and CRLs. Its own CA per deployment: a certificate of one deployment is refused by every other."""
    return tls.generate_certificate_authority(common_name=f"Device CA {deployment_name}", now=now)


def check_csr(value: object, field: str = "csr"):
    """The public key of a PEM PKCS#10 request whose signature verifies and whose key is strong enough. Raises
    ValueError with the message shown beside `field` (the caller maps it to ValidationFailed)."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError("Give the certificate signing request as PEM text (-----BEGIN CERTIFICATE REQUEST-----).")
    if len(value) > MAX_CSR_CHARS:
        raise ValueError(f"Too long: a CSR is PEM text of at most {MAX_CSR_CHARS} characters.")
    # PEM is lines of base64: line breaks (and a carriage return before them) belong; nothing else of the kind.
    found = find_control_character(value.replace("\r\n", "\n").replace("\n", ""))
    if found is not None:
        raise ValueError(f"Must not contain control characters other than line breaks; found U+{ord(found[1]):04X}.")
    try:
        data = value.encode("ascii")
    except UnicodeEncodeError:
        raise ValueError("PEM text is plain ASCII; this holds other characters.") from None
    labels = tls._PEM_BLOCK.findall(value)
    if not labels:
        raise ValueError("Not PEM: expected a block starting with -----BEGIN CERTIFICATE REQUEST-----.")
    if len(labels) != 1 or labels[0] not in _CSR_LABELS:
        raise ValueError(f"Expected exactly one CERTIFICATE REQUEST block, found: {', '.join(labels)}.")
    try:
        request = x509.load_pem_x509_csr(data)
    except ValueError:
        raise ValueError("Not a valid certificate signing request: its content cannot be parsed.") from None
    try:
        valid = request.is_signature_valid
        key = request.public_key()
    except Exception:  # noqa: BLE001 - an unsupported key or signature algorithm: cryptography raises several kinds
        raise ValueError("Unsupported key type: use an RSA (2048 bits or more) or EC P-256 key.") from None
    if not valid:
        raise ValueError("The request's signature does not verify: it was not signed by the key it holds.")
    weakness = tls.key_weakness(key)
    if weakness is not None:
        raise ValueError(weakness[0].upper() + weakness[1:] + ".")
    return key


def issue_device_certificate(
    *,
    ca_certificate_pem: str,
    ca_private_key_pem: str,
    username: str,
    now: datetime.datetime,
    public_key=None,
    validity: datetime.timedelta = DEVICE_CERTIFICATE_VALIDITY,
    crl_url: str = "",
) -> IssuedCertificate:
    """A client certificate whose only subject is CN = `username` (the device's broker username, which mosquitto's
    use_identity_as_username and EMQX's peer_cert_as_username make its MQTT username), clientAuth only, signed by
    the device CA. With no `public_key` (from check_csr) an EC P-256 key is generated and returned with it. With a
    `crl_url` it names where its CRL is (CRL Distribution Points): EMQX fetches the CRL from there; mosquitto reads
    its crlfile and ignores the extension."""
    ca_certificate = x509.load_pem_x509_certificate(ca_certificate_pem.encode("ascii"))
    ca_key = serialization.load_pem_private_key(ca_private_key_pem.encode("ascii"), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ValueError("the device CA's key must be an EC or RSA key")
    private_key_pem = ""
    if public_key is None:
        generated = ec.generate_private_key(ec.SECP256R1())
        public_key = generated.public_key()
        private_key_pem = tls._key_pem(generated)
    ca_key_id = ca_certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, username)]))
        .issuer_name(ca_certificate.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - tls.BACKDATE)
        .not_valid_after(min(now + validity, ca_certificate.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=isinstance(public_key, rsa.RSAPublicKey),
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_key_id), critical=False)
    )
    if crl_url:
        point = x509.DistributionPoint(
            full_name=[x509.UniformResourceIdentifier(crl_url)], relative_name=None, reasons=None, crl_issuer=None
        )
        builder = builder.add_extension(x509.CRLDistributionPoints([point]), critical=False)
    certificate = builder.sign(ca_key, hashes.SHA256())
    return IssuedCertificate(
        certificate_pem=tls._pem([certificate]),
        private_key_pem=private_key_pem,
        serial=format(certificate.serial_number, "x"),
        fingerprint_sha256=tls.fingerprint(certificate),
        not_before=certificate.not_valid_before_utc,
        not_after=certificate.not_valid_after_utc,
    )


def build_crl(
    *,
    ca_certificate_pem: str,
    ca_private_key_pem: str,
    revoked: Iterable[Revoked],
    number: int,
    now: datetime.datetime,
    validity: datetime.timedelta = CRL_VALIDITY,
) -> str:
    """The device CA's CRL (PEM) listing `revoked`, numbered `number`, due again after `validity`. With nothing
    revoked it is an empty CRL the CA signed: the broker's crlfile always exists."""
    ca_certificate = x509.load_pem_x509_certificate(ca_certificate_pem.encode("ascii"))
    ca_key = serialization.load_pem_private_key(ca_private_key_pem.encode("ascii"), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ValueError("the device CA's key must be an EC or RSA key")
    ca_key_id = ca_certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_certificate.subject)
        .last_update(now - tls.BACKDATE)
        .next_update(now + validity)
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_key_id), critical=False)
    )
    for entry in sorted(revoked, key=lambda r: int(r.serial, 16)):
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(int(entry.serial, 16))
            .revocation_date(entry.revoked_at)
            .add_extension(x509.CRLReason(_REASON_FLAGS[entry.reason]), critical=False)
            .build()
        )
    crl = builder.sign(ca_key, hashes.SHA256())
    return crl.public_bytes(serialization.Encoding.PEM).decode("ascii")


def crl_der(crl_pem: str) -> bytes:
    """The CRL as DER, the form RFC 5280 (4.2.1.13) gives a CRL fetched over HTTP (application/pkix-crl)."""
    return x509.load_pem_x509_crl(crl_pem.encode("ascii")).public_bytes(serialization.Encoding.DER)
