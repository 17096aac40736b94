"""Every use of `cryptography` for broker TLS: the control plane's CA, the server certificates it issues, and the
checks a customer's certificate, key and chain must pass before anything is stored.

Pure functions over PEM text and an explicit `now`: no database, no clock, no files. What they return is re-encoded
from the parsed objects, so no byte a customer typed reaches a broker file or a Secret unparsed; a private key is
returned only to the caller that gave it or issued it, never logged, never part of an error message.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import re
from collections.abc import Iterable, Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from controlplane.errors import ValidationFailed
from controlplane.validators import CONTROL_CHARACTERS

# The weakest keys accepted anywhere in a chain: RSA 2048 and the NIST curves from P-256 up (what every MQTT client
# library's TLS stack verifies; smaller keys are refused by OpenSSL 3's default security level 2 anyway).
MIN_RSA_BITS = 2048
MAX_RSA_BITS = 8192  # past this, handshakes get slow and some clients refuse the key
ACCEPTED_CURVES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
# SHA-1 and MD5 signatures can be forged (SHA-1 chosen-prefix collisions are practical): every signature in what a
# customer uploads that a client checks uses SHA-224 or stronger. A self-signed root's signature on itself is not one
# of those: a trust anchor is trusted as it is (OpenSSL skips its signature, also in its security-level checks), and
# roots still in use, DigiCert Global Root CA among them, sign themselves with SHA-1.
MIN_SIGNATURE_HASH_BITS = 224
_WEAK_HASH_NAMES = {"sha1": "SHA-1", "md5": "MD5"}
MAX_PEM_CHARS = 64 * 1024
MAX_CHAIN_CERTIFICATES = 10
CA_VALIDITY = datetime.timedelta(days=3650)
SERVER_VALIDITY = datetime.timedelta(days=365)
# Certificates are dated this much before `now`, so a client whose clock is a little behind still accepts them.
BACKDATE = datetime.timedelta(hours=1)

_PEM_BLOCK = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----")
_DNS_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)\Z")


@dataclasses.dataclass(frozen=True)
class CertificateFacts:
    """What the API shows of a certificate: never anything secret."""

    subject: str
    common_name: str
    issuer: str
    sans: tuple[str, ...]
    not_before: datetime.datetime
    not_after: datetime.datetime
    fingerprint_sha256: str
    serial_number: str
    key_type: str
    is_ca: bool
    self_signed: bool


@dataclasses.dataclass(frozen=True)
class CheckedServerCertificate:
    facts: CertificateFacts
    certificate_pem: str  # the server certificate alone, re-encoded
    chain_pem: str  # its issuers in order up to the root, re-encoded; "" for a self-signed certificate
    private_key_pem: str  # PKCS#8, unencrypted: the caller encrypts it before storing
    warnings: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class CheckedClientCa:
    facts: CertificateFacts  # of the first certificate of the bundle
    certificate_pem: str  # the whole bundle, re-encoded
    warnings: tuple[str, ...]


# -- reading --------------------------------------------------------------------------------------------------------


def _pem_text(value: object, field: str, what: str) -> bytes:
    if not isinstance(value, str) or not value.strip():
        raise ValidationFailed({field: f"Give {what} as PEM text."})
    if len(value) > MAX_PEM_CHARS:
        raise ValidationFailed({field: f"Too long: PEM text of at most {MAX_PEM_CHARS} characters."})
    try:
        return value.encode("ascii")
    except UnicodeEncodeError:
        raise ValidationFailed({field: "PEM text is plain ASCII; this holds other characters."}) from None


def load_certificates(value: object, field: str, *, allow_empty: bool = False) -> list[x509.Certificate]:
    """The certificates in PEM text, in order, each readable and signed with a hash strong enough. Raises
    ValidationFailed naming `field` when it is not PEM, a certificate cannot be read, or one is signed with a weak
    hash (SHA-1, MD5)."""
    if allow_empty and (value is None or (isinstance(value, str) and not value.strip())):
        return []
    data = _pem_text(value, field, "certificates" if allow_empty else "a certificate")
    labels = _PEM_BLOCK.findall(data.decode("ascii"))
    if not labels:
        raise ValidationFailed({field: "Not PEM: expected a block starting with -----BEGIN CERTIFICATE-----."})
    if any(label != "CERTIFICATE" for label in labels):
        found = next(label for label in labels if label != "CERTIFICATE")
        raise ValidationFailed({field: f"Expected only CERTIFICATE blocks, found a {found} block."})
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ValidationFailed({field: "Not a valid PEM certificate: its content cannot be parsed."}) from None
    if len(certificates) > MAX_CHAIN_CERTIFICATES:
        raise ValidationFailed({field: f"At most {MAX_CHAIN_CERTIFICATES} certificates."})
    for index, certificate in enumerate(certificates):
        which = "The certificate" if len(certificates) == 1 else f"Certificate {index + 1}"
        # cryptography parses extensions only when first asked for them, and raises ValueError for one that is not
        # valid DER: asked here, once, every later check (CA, key usage, names) reads extensions that parse.
        try:
            certificate.extensions  # noqa: B018
        except ValueError:
            raise ValidationFailed(
                {field: f"{which} has an extension that cannot be parsed (not valid DER): issue it again."}
            ) from None
        # So are its subject and issuer names: a string in one that is not valid for its type (a UTF8String that is
        # not UTF-8) raises ValueError on first read.
        try:
            certificate.subject  # noqa: B018
            certificate.issuer  # noqa: B018
        except ValueError:
            raise ValidationFailed(
                {field: f"{which} has a subject or issuer name that cannot be parsed (not valid DER): issue it again."}
            ) from None
        # The public key is parsed only when asked for too: an algorithm cryptography does not know raises
        # UnsupportedAlgorithm, a point not on its curve ValueError. Asked here, every later check reads one.
        try:
            certificate.public_key()
        except (ValueError, UnsupportedAlgorithm):
            raise ValidationFailed(
                {
                    field: f"{which} has a public key that cannot be read (an unknown algorithm or a malformed key): "
                    f"use RSA (at least {MIN_RSA_BITS} bits) or EC P-256."
                }
            ) from None
        if not _self_signed(certificate):
            _check_signature_hash(certificate, field, f"{which} ({_name_text(certificate.subject)})")
    return certificates


def _check_signature_hash(certificate: x509.Certificate, field: str, what: str) -> None:
    """Refuse a certificate signed with a hash weaker than SHA-224. Checked here, before any signature is verified:
    cryptography's verify_directly_issued_by raises ValueError for a SHA-1 or MD5 signature, which reads as "not
    issued by" and would blame the chain's order."""
    try:
        algorithm = certificate.signature_hash_algorithm
    except UnsupportedAlgorithm:
        raise ValidationFailed(
            {
                field: f"{what} is signed with an algorithm that is not supported "
                f"({certificate.signature_algorithm_oid.dotted_string}): sign it with SHA-256 or stronger."
            }
        ) from None
    # None is an algorithm that hashes internally (Ed25519, Ed448): such keys are refused by their type.
    if algorithm is not None and algorithm.digest_size * 8 < MIN_SIGNATURE_HASH_BITS:
        name = _WEAK_HASH_NAMES.get(algorithm.name, algorithm.name.upper())
        raise ValidationFailed(
            {
                field: f"{what} is signed with {name}, which is too weak: {name} signatures are refused. "
                "Have it issued again with a SHA-256 (or stronger) signature."
            }
        )


def load_private_key(value: object, field: str = "private_key"):
    data = _pem_text(value, field, "the private key")
    # `openssl ecparam -genkey` writes the curve's EC PARAMETERS block before the key: it says nothing the key does
    # not, and the key is parsed (and re-encoded) alone.
    labels = [label for label in _PEM_BLOCK.findall(data.decode("ascii")) if label != "EC PARAMETERS"]
    if not labels or not all(label.endswith("PRIVATE KEY") for label in labels):
        raise ValidationFailed({field: "Not PEM: expected a block starting with -----BEGIN PRIVATE KEY-----."})
    if len(labels) != 1:
        raise ValidationFailed({field: "Give exactly one private key."})
    if labels[0] == "ENCRYPTED PRIVATE KEY" or b"Proc-Type: 4,ENCRYPTED" in data:
        raise ValidationFailed(
            {field: "The key is encrypted with a passphrase; give it unencrypted (it is encrypted at rest here)."}
        )
    try:
        # Read without checking an RSA key's primes first: that check's time grows steeply with the key's size, and
        # the upload limit admits keys of tens of thousands of bits. One above the bound is refused by its size; one
        # within it is read again, checked.
        key = serialization.load_pem_private_key(data, password=None, unsafe_skip_rsa_key_validation=True)
        if isinstance(key, rsa.RSAPrivateKey):
            if key.key_size > MAX_RSA_BITS:
                raise ValidationFailed({field: f"The private key: {key_weakness(key)}."})
            key = serialization.load_pem_private_key(data, password=None)
        return key
    except TypeError:
        raise ValidationFailed(
            {field: "The key is encrypted with a passphrase; give it unencrypted (it is encrypted at rest here)."}
        ) from None
    except UnsupportedAlgorithm:
        raise ValidationFailed(
            {field: "Unsupported key type: use an RSA (2048 bits or more) or EC P-256 key."}
        ) from None
    except ValueError:
        raise ValidationFailed({field: "Not a valid PEM private key: its content cannot be parsed."}) from None


def key_description(key) -> str:
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        return f"RSA {key.key_size}"
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        return f"EC {ACCEPTED_CURVES.get(key.curve.name, key.curve.name)}"
    return type(key).__name__.removesuffix("PublicKey").removesuffix("PrivateKey").lstrip("_")


def key_weakness(key) -> str | None:
    """Why a key is refused, or None when it is strong enough."""
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            return f"an RSA key of {key.key_size} bits is too weak: use at least {MIN_RSA_BITS} bits or EC P-256"
        if key.key_size > MAX_RSA_BITS:
            return f"an RSA key of {key.key_size} bits is larger than the {MAX_RSA_BITS} bits clients handle well"
        return None
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        if key.curve.name not in ACCEPTED_CURVES:
            return f"the curve {key.curve.name} is not accepted: use EC P-256, P-384 or P-521, or RSA 2048"
        return None
    return f"a {key_description(key)} key is not accepted: use RSA (at least {MIN_RSA_BITS} bits) or EC P-256"


def _shown(text: str, limit: int) -> str:
    """A certificate's own text as it is shown (API, audit, alerts, mail): control characters escaped, so a name
    cannot break a line anywhere it is printed, and at most `limit` characters."""
    text = CONTROL_CHARACTERS.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _name_text(name: x509.Name) -> str:
    return _shown(name.rfc4514_string(), 1024)


def _common_name(name: x509.Name) -> str:
    values = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return _shown(str(values[0].value), 256) if values else ""


def subject_alternative_names(certificate: x509.Certificate) -> tuple[str, ...]:
    try:
        extension = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    # In the certificate's order; other kinds of names (email, URI) say nothing about host names.
    return tuple(_shown(str(name.value), 253) for name in extension if isinstance(name, x509.DNSName | x509.IPAddress))


def _is_ca(certificate: x509.Certificate) -> bool:
    try:
        return bool(certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _issued_by(child: x509.Certificate, parent: x509.Certificate) -> bool:
    try:
        child.verify_directly_issued_by(parent)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _self_signed(certificate: x509.Certificate) -> bool:
    """Whether the certificate names itself as its issuer and its own key signed it: a root. Its signature's hash may
    be SHA-1 (see MIN_SIGNATURE_HASH_BITS), which verify_directly_issued_by refuses to check: such a signature is
    verified with the key's primitive."""
    if certificate.issuer != certificate.subject:
        return False
    if _issued_by(certificate, certificate):
        return True
    key = certificate.public_key()
    try:
        algorithm = certificate.signature_hash_algorithm
        if algorithm is None or algorithm.digest_size * 8 >= MIN_SIGNATURE_HASH_BITS:
            return False  # a strong hash that did not verify above
        if isinstance(key, rsa.RSAPublicKey):
            key.verify(certificate.signature, certificate.tbs_certificate_bytes, padding.PKCS1v15(), algorithm)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(certificate.signature, certificate.tbs_certificate_bytes, ec.ECDSA(algorithm))
        else:
            return False
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def fingerprint(certificate: x509.Certificate) -> str:
    """SHA-256 over the DER encoding, as colon-separated upper-case hex (what `openssl x509 -fingerprint` prints)."""
    return certificate.fingerprint(hashes.SHA256()).hex(":").upper()


def facts(certificate: x509.Certificate) -> CertificateFacts:
    return CertificateFacts(
        subject=_name_text(certificate.subject),
        common_name=_common_name(certificate.subject),
        issuer=_name_text(certificate.issuer),
        sans=subject_alternative_names(certificate),
        not_before=certificate.not_valid_before_utc,
        not_after=certificate.not_valid_after_utc,
        fingerprint_sha256=fingerprint(certificate),
        serial_number=format(certificate.serial_number, "x"),
        key_type=key_description(certificate.public_key()),
        is_ca=_is_ca(certificate),
        self_signed=_self_signed(certificate),
    )


def certificate_facts(pem: str) -> CertificateFacts:
    """The facts of the first certificate of trusted PEM text (one this module wrote)."""
    return facts(x509.load_pem_x509_certificates(pem.encode("ascii"))[0])


def _pem(certificates: Iterable[x509.Certificate]) -> str:
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode("ascii") for c in certificates)


def _key_pem(key) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode("ascii")


def _when(value: datetime.datetime) -> str:
    return value.astimezone(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


# -- host names -----------------------------------------------------------------------------------------------------


def normalise_host_name(value: object) -> str:
    """An IP address in canonical form, or a DNS name in lower case. Raises ValueError otherwise."""
    if not isinstance(value, str) or not value or len(value) > 253:
        raise ValueError("a host name is a DNS name or an IP address of at most 253 characters")
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        pass
    else:
        # An IPv6 zone (`fe80::1%eth0`) names an interface of one machine: a certificate's IP address carries none,
        # so a name kept with it is never covered by the certificate issued for it.
        if isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
            raise ValueError(f"{value!r} has an IPv6 zone (%{address.scope_id}): give the address without it")
        return str(address)
    name = value.lower().rstrip(".")
    labels = name.split(".")
    if not all(_DNS_LABEL.match(label) for label in labels):
        raise ValueError(f"{value!r} is not a DNS name or an IP address")
    return name


def name_covers(san: str, host: str) -> bool:
    """Whether one subject alternative name matches `host` (RFC 6125: a wildcard stands for one whole left-most
    label, and never matches an IP address)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is not None:
        try:
            return ipaddress.ip_address(san) == address
        except ValueError:
            return False
    san, host = san.lower().rstrip("."), host.lower().rstrip(".")
    if san.startswith("*."):
        head, _, rest = host.partition(".")
        return bool(head) and rest == san[2:]
    return san == host


def names_cover(sans: Sequence[str], host: str) -> bool:
    return any(name_covers(san, host) for san in sans)


# -- the control plane's CA and the certificates it issues -------------------------------------------------------------


def generate_certificate_authority(*, common_name: str, now: datetime.datetime) -> tuple[str, str]:
    """(certificate PEM, private key PEM) of a new self-signed EC P-256 CA, valid ten years, that may sign server
    certificates only (path length 0)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "MQTT control plane"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + CA_VALIDITY)
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return _pem([certificate]), _key_pem(key)


def issue_server_certificate(
    *,
    ca_certificate_pem: str,
    ca_private_key_pem: str,
    host_names: Sequence[str],
    now: datetime.datetime,
    validity: datetime.timedelta = SERVER_VALIDITY,
) -> tuple[str, str]:
    """(certificate PEM, private key PEM) of a new EC P-256 server certificate for `host_names` (DNS names and IP
    addresses, the first also its common name), signed by the CA."""
    if not host_names:
        raise ValueError("a server certificate needs at least one host name")
    ca_certificate = x509.load_pem_x509_certificate(ca_certificate_pem.encode("ascii"))
    ca_key = serialization.load_pem_private_key(ca_private_key_pem.encode("ascii"), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ValueError("the CA's key must be an EC or RSA key")
    ca_key_id = ca_certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    key = ec.generate_private_key(ec.SECP256R1())
    alternative_names: list[x509.GeneralName] = []
    for host in dict.fromkeys(normalise_host_name(h) for h in host_names):
        try:
            alternative_names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alternative_names.append(x509.DNSName(host))
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, normalise_host_name(host_names[0]))]))
        .issuer_name(ca_certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(min(now + validity, ca_certificate.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(alternative_names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_key_id), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return _pem([certificate]), _key_pem(key)


# -- checking what a customer gives ------------------------------------------------------------------------------------


def _check_dates(certificate: x509.Certificate, field: str, now: datetime.datetime, what: str) -> None:
    if certificate.not_valid_before_utc > now:
        raise ValidationFailed(
            {field: f"{what} is not valid yet: its validity starts {_when(certificate.not_valid_before_utc)}."}
        )
    if certificate.not_valid_after_utc <= now:
        raise ValidationFailed(
            {field: f"{what} has expired: it was valid until {_when(certificate.not_valid_after_utc)}."}
        )


def _check_key_strength(key, field: str, what: str) -> None:
    weakness = key_weakness(key)
    if weakness:
        raise ValidationFailed({field: f"{what}: {weakness}."})


def check_server_certificate(
    *,
    certificate: object,
    private_key: object,
    chain: object = "",
    host_names: Sequence[str] = (),
    our_host_names: Sequence[str] = (),
    now: datetime.datetime,
) -> CheckedServerCertificate:
    """A customer's server certificate, its key and its chain, checked: PEM parses, the key is strong enough and
    matches the certificate, every certificate is within its dates, the chain verifies link by link up to a root
    it includes, and the names cover each of `host_names` (the customer's). Not covering `our_host_names` (the
    deployment's own) is a warning, not a refusal. Raises ValidationFailed naming the field at fault."""
    certificates = load_certificates(certificate, "certificate")
    if len(certificates) != 1:
        raise ValidationFailed(
            {
                "certificate": f"Holds {len(certificates)} certificates: put the server certificate here and its "
                "issuers, in order up to the root, in `chain`."
            }
        )
    leaf = certificates[0]
    _check_key_strength(leaf.public_key(), "certificate", "The certificate's key")
    key = load_private_key(private_key)
    _check_key_strength(key, "private_key", "The private key")
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    if leaf.public_key().public_bytes(serialization.Encoding.DER, public) != key.public_key().public_bytes(
        serialization.Encoding.DER, public
    ):
        raise ValidationFailed({"private_key": "This private key does not match the certificate's public key."})
    _check_dates(leaf, "certificate", now, "The certificate")
    try:
        usage = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        usage = None
    if usage is not None and ExtendedKeyUsageOID.SERVER_AUTH not in usage:
        raise ValidationFailed(
            {"certificate": "Its extended key usage does not include TLS server authentication (serverAuth)."}
        )

    issuers = load_certificates(chain, "chain", allow_empty=True)
    leaf_facts = facts(leaf)
    if not issuers and not leaf_facts.self_signed:
        raise ValidationFailed(
            {
                "chain": f"The certificate is issued by {leaf_facts.issuer}: give the issuing certificates in "
                "`chain`, in order up to the root."
            }
        )
    child = leaf
    for index, issuer in enumerate(issuers):
        subject = _name_text(issuer.subject)
        if not _issued_by(child, issuer):
            below = "the certificate" if index == 0 else f"chain certificate {index} ({_name_text(child.subject)})"
            raise ValidationFailed(
                {
                    "chain": f"Chain certificate {index + 1} ({subject}) did not sign {below}: the chain must run "
                    "in order from the certificate's issuer up to the root, and every signature must verify."
                }
            )
        if not _is_ca(issuer):
            raise ValidationFailed({"chain": f"Chain certificate {index + 1} ({subject}) is not a CA certificate."})
        _check_key_strength(issuer.public_key(), "chain", f"Chain certificate {index + 1} ({subject})")
        _check_dates(issuer, "chain", now, f"Chain certificate {index + 1} ({subject})")
        child = issuer
    if issuers and not _self_signed(child):
        raise ValidationFailed(
            {
                "chain": f"The chain ends with {_name_text(child.subject)}, which is not a root (self-signed) "
                f"certificate: add its issuer, {_name_text(child.issuer)}, up to the root."
            }
        )

    cleaned: list[str] = []
    for index, host in enumerate(host_names):
        try:
            cleaned.append(normalise_host_name(host))
        except ValueError as exc:
            raise ValidationFailed({f"host_names.{index}": str(exc)}) from None
    for host in cleaned:
        if not names_cover(leaf_facts.sans, host):
            names = ", ".join(leaf_facts.sans) or "none"
            raise ValidationFailed(
                {"host_names": f"The certificate's subject alternative names ({names}) do not cover {host}."}
            )
    warnings = [
        f"The certificate's names do not cover {host}, this deployment's own address: clients connecting to it by "
        "that name will refuse the certificate."
        for host in our_host_names
        if not names_cover(leaf_facts.sans, host)
    ]
    if not leaf_facts.sans:
        warnings.insert(0, "The certificate has no subject alternative names: clients verifying host names refuse it.")
    return CheckedServerCertificate(
        facts=leaf_facts,
        certificate_pem=_pem([leaf]),
        chain_pem=_pem(issuers),
        private_key_pem=_key_pem(key),
        warnings=tuple(warnings),
    )


def check_client_ca(*, certificate: object, now: datetime.datetime) -> CheckedClientCa:
    """The CA certificate(s) that sign the customer's client certificates: PEM parses, each is a CA certificate
    with a strong enough key, within its dates. A certificate whose issuer is not in the bundle is a warning (a
    client certificate under it will not verify up to a root). Raises ValidationFailed naming `certificate`."""
    certificates = load_certificates(certificate, "certificate")
    for index, item in enumerate(certificates):
        what = "The certificate" if len(certificates) == 1 else f"Certificate {index + 1} ({_name_text(item.subject)})"
        if not _is_ca(item):
            raise ValidationFailed(
                {
                    "certificate": f"{what} is not a CA certificate (basicConstraints CA:TRUE): give the CA that "
                    "signs your clients' certificates."
                }
            )
        _check_key_strength(item.public_key(), "certificate", f"{what}'s key")
        _check_dates(item, "certificate", now, what)
    warnings = []
    for item in certificates:
        if _self_signed(item):
            continue
        if not any(_issued_by(item, other) for other in certificates if other is not item):
            warnings.append(
                f"{_name_text(item.subject)} is not a root and its issuer ({_name_text(item.issuer)}) is not in this "
                "bundle: client certificates under it will not verify; add the issuer up to the root."
            )
    return CheckedClientCa(facts=facts(certificates[0]), certificate_pem=_pem(certificates), warnings=tuple(warnings))
