"""iot.certificates on its own: what a CSR must be, what an issued device certificate holds, what the CRL lists."""

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from iot import certificates

NOW = datetime.datetime(2026, 11, 30, 12, 0, tzinfo=datetime.UTC)


def make_csr(key=None, cn="anything-the-device-wants") -> str:
    key = key or ec.generate_private_key(ec.SECP256R1())
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    request = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .sign(key, algorithm)
    )
    return request.public_bytes(serialization.Encoding.PEM).decode("ascii")


def tampered(pem: str) -> str:
    """The same request with one byte of its signature changed: it parses, its signature does not verify."""
    der = bytearray(x509.load_pem_x509_csr(pem.encode()).public_bytes(serialization.Encoding.DER))
    der[-3] ^= 0x01
    import base64

    body = base64.encodebytes(bytes(der)).decode().replace("\n", "")
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return "-----BEGIN CERTIFICATE REQUEST-----\n" + "\n".join(lines) + "\n-----END CERTIFICATE REQUEST-----\n"


@pytest.fixture(scope="module")
def ca():
    return certificates.generate_device_ca(deployment_name="dep_test", now=NOW)


def test_csr_key_is_answered_when_the_request_is_sound():
    key = ec.generate_private_key(ec.SECP256R1())
    public = certificates.check_csr(make_csr(key))
    assert public.public_numbers() == key.public_key().public_numbers()
    assert certificates.check_csr(make_csr(rsa.generate_private_key(public_exponent=65537, key_size=2048)))


@pytest.mark.parametrize(
    "value, message",
    [
        (None, "Give the certificate signing request as PEM text"),
        ("", "Give the certificate signing request as PEM text"),
        ("hello", "Not PEM"),
        ("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "Expected exactly one CERTIFICATE REQUEST"),
        ("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n", "cannot be parsed"),
        ("x" * 20000, "Too long"),
        ("-----BEGIN CERTIFICATE REQUEST-----\x00\n", "control characters"),
        ("-----BEGIN CERTIFICATE REQUEST-----\u2028", "control characters"),
        ("-----BEGIN CERTIFICATE REQUEST-----é", "plain ASCII"),
    ],
)
def test_csr_is_refused_with_a_message_when_it_is_not_a_request(value, message):
    with pytest.raises(ValueError, match=message):
        certificates.check_csr(value)


def test_csr_is_refused_when_its_signature_does_not_verify():
    with pytest.raises(ValueError, match="signature does not verify"):
        certificates.check_csr(tampered(make_csr()))


def test_csr_is_refused_when_signed_by_another_key_than_it_holds():
    key = ec.generate_private_key(ec.SECP256R1())
    request = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
        .sign(key, hashes.SHA256())
    )
    # Swap in another public key: rebuild the DER with the other key's SubjectPublicKeyInfo.
    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    der = request.public_bytes(serialization.Encoding.DER)
    spki_old = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    spki_new = other.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert len(spki_old) == len(spki_new) and spki_old in der
    forged = x509.load_der_x509_csr(der.replace(spki_old, spki_new))
    with pytest.raises(ValueError, match="signature does not verify"):
        certificates.check_csr(forged.public_bytes(serialization.Encoding.PEM).decode())


@pytest.mark.parametrize(
    "key, message",
    [
        (rsa.generate_private_key(public_exponent=65537, key_size=1024), "1024 bits is too weak"),
        (ec.generate_private_key(ec.SECP224R1()), "secp224r1 is not accepted"),
        (ec.generate_private_key(ec.SECP256K1()), "secp256k1 is not accepted"),
    ],
)
def test_csr_is_refused_when_its_key_is_weak(key, message):
    with pytest.raises(ValueError, match=message):
        certificates.check_csr(make_csr(key))


def test_csr_is_refused_when_its_key_type_is_not_rsa_or_ec():
    with pytest.raises(ValueError, match="not accepted"):
        certificates.check_csr(make_csr(ed25519.Ed25519PrivateKey.generate()))


def test_issued_certificate_has_the_username_as_its_only_subject_and_client_auth_when_made_from_a_csr(ca):
    ca_pem, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    public = certificates.check_csr(make_csr(key, cn="admin"))
    issued = certificates.issue_device_certificate(
        ca_certificate_pem=ca_pem, ca_private_key_pem=ca_key, username="$device-0011aabb", public_key=public, now=NOW
    )
    assert issued.private_key_pem == ""
    certificate = x509.load_pem_x509_certificate(issued.certificate_pem.encode())
    assert certificate.subject == x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "$device-0011aabb")])
    assert certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == x509.ExtendedKeyUsage(
        [ExtendedKeyUsageOID.CLIENT_AUTH]
    )
    assert certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert certificate.not_valid_after_utc - NOW == certificates.DEVICE_CERTIFICATE_VALIDITY
    assert certificate.public_key().public_numbers() == key.public_key().public_numbers()
    authority = x509.load_pem_x509_certificate(ca_pem.encode())
    certificate.verify_directly_issued_by(authority)
    assert issued.serial == format(certificate.serial_number, "x")


def test_issued_certificates_get_random_serials_and_a_generated_key_when_no_csr(ca):
    ca_pem, ca_key = ca
    one, two = (
        certificates.issue_device_certificate(
            ca_certificate_pem=ca_pem, ca_private_key_pem=ca_key, username="u", now=NOW
        )
        for _ in range(2)
    )
    assert one.serial != two.serial
    key = serialization.load_pem_private_key(one.private_key_pem.encode(), password=None)
    certificate = x509.load_pem_x509_certificate(one.certificate_pem.encode())
    assert certificate.public_key().public_numbers() == key.public_key().public_numbers()


def test_crl_lists_exactly_the_revoked_serials_with_their_reasons_when_built(ca):
    ca_pem, ca_key = ca
    revoked = [
        certificates.Revoked(serial="1f", revoked_at=NOW, reason=certificates.Reason.CERTIFICATE_HOLD),
        certificates.Revoked(serial="abc", revoked_at=NOW, reason=certificates.Reason.SUPERSEDED),
        certificates.Revoked(serial="7", revoked_at=NOW, reason=certificates.Reason.CESSATION_OF_OPERATION),
    ]
    pem = certificates.build_crl(
        ca_certificate_pem=ca_pem, ca_private_key_pem=ca_key, revoked=revoked, number=4, now=NOW
    )
    crl = x509.load_pem_x509_crl(pem.encode())
    authority = x509.load_pem_x509_certificate(ca_pem.encode())
    assert crl.is_signature_valid(authority.public_key())
    assert crl.issuer == authority.subject
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 4
    assert crl.next_update_utc == NOW + certificates.CRL_VALIDITY
    reasons = {
        format(r.serial_number, "x"): r.extensions.get_extension_for_class(x509.CRLReason).value.reason for r in crl
    }
    assert reasons == {
        "1f": x509.ReasonFlags.certificate_hold,
        "abc": x509.ReasonFlags.superseded,
        "7": x509.ReasonFlags.cessation_of_operation,
    }


def test_crl_is_empty_and_signed_when_nothing_is_revoked(ca):
    ca_pem, ca_key = ca
    pem = certificates.build_crl(ca_certificate_pem=ca_pem, ca_private_key_pem=ca_key, revoked=(), number=1, now=NOW)
    crl = x509.load_pem_x509_crl(pem.encode())
    assert len(crl) == 0
    assert crl.is_signature_valid(x509.load_pem_x509_certificate(ca_pem.encode()).public_key())


def test_issued_certificate_names_its_crl_url_only_when_one_is_given(ca):
    ca_pem, ca_key = ca
    url = "http://pki.test/pki/deployments/dep_abc/devices.crl"
    issued = certificates.issue_device_certificate(
        ca_certificate_pem=ca_pem, ca_private_key_pem=ca_key, username="u", now=NOW, crl_url=url
    )
    certificate = x509.load_pem_x509_certificate(issued.certificate_pem.encode())
    extension = certificate.extensions.get_extension_for_class(x509.CRLDistributionPoints)
    assert extension.critical is False  # mosquitto (OpenSSL) ignores it; a critical one could make it refuse
    (point,) = extension.value
    assert [name.value for name in point.full_name] == [url] and point.reasons is None and point.crl_issuer is None
    plain = certificates.issue_device_certificate(
        ca_certificate_pem=ca_pem, ca_private_key_pem=ca_key, username="u", now=NOW
    )
    with pytest.raises(x509.ExtensionNotFound):
        x509.load_pem_x509_certificate(plain.certificate_pem.encode()).extensions.get_extension_for_class(
            x509.CRLDistributionPoints
        )


def test_crl_der_is_the_same_crl_as_the_pem_the_broker_file_holds(ca):
    ca_pem, ca_key = ca
    revoked = [certificates.Revoked(serial="abc123", revoked_at=NOW, reason=certificates.Reason.CERTIFICATE_HOLD)]
    crl_pem = certificates.build_crl(
        ca_certificate_pem=ca_pem, ca_private_key_pem=ca_key, revoked=revoked, number=7, now=NOW
    )
    der = certificates.crl_der(crl_pem)
    assert not der.startswith(b"-----")
    crl = x509.load_der_x509_crl(der)
    assert crl.is_signature_valid(x509.load_pem_x509_certificate(ca_pem.encode()).public_key())
    assert [format(r.serial_number, "x") for r in crl] == ["abc123"]
    assert crl.public_bytes(serialization.Encoding.PEM).decode() == crl_pem
