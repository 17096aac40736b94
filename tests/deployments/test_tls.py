"""deployments.tls, the pure functions: the CA and what it issues, name matching, and the checks of a customer's
certificate, key and chain (each refusal names its field)."""

import datetime

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from controlplane.errors import ValidationFailed
from deployments import tls
from tests.deployments.tls_helpers import DAY, NOW, key_pem, make_ca, make_leaf, new_key, pem


def _refusal(**kwargs) -> dict[str, str]:
    with pytest.raises(ValidationFailed) as caught:
        tls.check_server_certificate(now=NOW, **kwargs)
    return {str(e.field): e.message for e in caught.value.errors}


def test_ca_issues_a_server_certificate_for_the_given_names_that_verifies_against_it():
    ca_pem, ca_key = tls.generate_certificate_authority(common_name="Unit CA", now=NOW)
    ca = x509.load_pem_x509_certificate(ca_pem.encode())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    certificate_pem, key = tls.issue_server_certificate(
        ca_certificate_pem=ca_pem, ca_private_key_pem=ca_key, host_names=["127.0.0.1", "Broker.Example"], now=NOW
    )
    certificate = x509.load_pem_x509_certificate(certificate_pem.encode())
    certificate.verify_directly_issued_by(ca)
    facts = tls.certificate_facts(certificate_pem)
    assert facts.sans == ("127.0.0.1", "broker.example") and facts.common_name == "127.0.0.1"
    assert facts.key_type == "EC P-256" and not facts.is_ca
    assert facts.not_after - facts.not_before == tls.SERVER_VALIDITY + tls.BACKDATE
    usage = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]
    # What it issues passes the checks a customer's certificate must pass.
    checked = tls.check_server_certificate(
        certificate=certificate_pem, private_key=key, chain=ca_pem, host_names=["broker.example"], now=NOW
    )
    assert checked.warnings == ()


@pytest.mark.parametrize(
    ("san", "host", "covers"),
    [
        ("mqtt.acme.example", "MQTT.acme.example", True),
        ("*.acme.example", "mqtt.acme.example", True),
        ("*.acme.example", "a.b.acme.example", False),
        ("*.acme.example", "acme.example", False),
        ("127.0.0.1", "127.0.0.1", True),
        ("*.0.0.1", "127.0.0.1", False),
        ("::1", "0:0:0:0:0:0:0:1", True),
        ("mqtt.acme.example", "other.acme.example", False),
    ],
)
def test_names_cover_follows_rfc_6125_when_matching_a_host(san, host, covers):
    assert tls.name_covers(san, host) is covers


def test_chain_is_re_encoded_and_warnings_name_hosts_not_covered():
    root = make_ca("Root")
    intermediate = make_ca("Issuing", issuer=root)
    leaf, key = make_leaf(intermediate, "mqtt.acme.example", sans=("mqtt.acme.example",))
    messy = "\r\n".join(pem(leaf).splitlines()) + "\r\n"  # Windows line ends, as pasted from some tools
    checked = tls.check_server_certificate(
        certificate=messy,
        private_key=key_pem(key, traditional=True),
        chain=pem(intermediate[0], root[0]),
        our_host_names=["127.0.0.1"],
        now=NOW,
    )
    assert checked.certificate_pem == pem(leaf)
    assert checked.private_key_pem.startswith("-----BEGIN PRIVATE KEY-----\n")  # PKCS#8 whatever came in
    assert checked.chain_pem == pem(intermediate[0], root[0])
    assert checked.warnings == (
        "The certificate's names do not cover 127.0.0.1, this deployment's own address: clients connecting to it by "
        "that name will refuse the certificate.",
    )


def test_ec_key_is_accepted_when_openssl_ecparam_put_its_parameters_block_first():
    # `openssl ecparam -genkey -name prime256v1` writes an EC PARAMETERS block before the EC PRIVATE KEY.
    root = make_ca("Root")
    leaf, key = make_leaf(root, "mqtt.acme.example", sans=("mqtt.acme.example",))
    parameters = "-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n"
    checked = tls.check_server_certificate(
        certificate=pem(leaf), private_key=parameters + key_pem(key, traditional=True), chain=pem(root[0]), now=NOW
    )
    assert checked.private_key_pem == key_pem(key)
    two = parameters + key_pem(key, traditional=True) + key_pem(new_key(), traditional=True)
    assert _refusal(certificate=pem(leaf), private_key=two, chain=pem(root[0])) == {
        "private_key": "Give exactly one private key."
    }
    alone = _refusal(certificate=pem(leaf), private_key=parameters, chain=pem(root[0]))
    assert "BEGIN PRIVATE KEY" in alone["private_key"]


def test_each_refusal_names_its_field_when_input_is_bad():
    root = make_ca("Root")
    leaf, key = make_leaf(root, "mqtt.acme.example", sans=("mqtt.acme.example",))
    good = {"certificate": pem(leaf), "private_key": key_pem(key), "chain": pem(root[0])}
    assert "certificate" in _refusal(**{**good, "certificate": 42})
    assert "certificate" in _refusal(**{**good, "certificate": "é" + pem(leaf)})
    assert "private_key" in _refusal(**{**good, "private_key": pem(leaf)})
    assert "private_key" in _refusal(**{**good, "private_key": key_pem(key) + key_pem(key)})
    assert "encrypted" in _refusal(**{**good, "private_key": key_pem(key, password=b"pw")})["private_key"]
    assert (
        "encrypted"
        in _refusal(**{**good, "private_key": key_pem(key, traditional=True, password=b"pw")})["private_key"]
    )
    assert "does not match" in _refusal(**{**good, "private_key": key_pem(new_key())})["private_key"]
    weak_key = new_key("rsa1024")
    weak, _ = make_leaf(None, "weak", sans=("weak",), key=weak_key)
    assert "1024 bits" in _refusal(certificate=pem(weak), private_key=key_pem(weak_key))["certificate"]
    assert "did not sign" in _refusal(**{**good, "chain": pem(make_ca("Root")[0])})["chain"]
    assert "host_names.0" in _refusal(**good, host_names=["not a host"])
    assert "other.example" in _refusal(**good, host_names=["other.example"])["host_names"]


def test_a_weak_chain_certificate_is_refused_naming_the_chain():
    weak_root = make_ca("Weak Root", key=new_key("rsa1024"))
    leaf, key = make_leaf(weak_root, "mqtt.acme.example", sans=("mqtt.acme.example",))
    message = _refusal(certificate=pem(leaf), private_key=key_pem(key), chain=pem(weak_root[0]))["chain"]
    assert "1024 bits" in message


def test_a_chain_certificate_that_is_not_a_ca_is_refused():
    fake_root = make_ca("Not a CA", ca=False)
    leaf, key = make_leaf(fake_root, "mqtt.acme.example", sans=("mqtt.acme.example",))
    message = _refusal(certificate=pem(leaf), private_key=key_pem(key), chain=pem(fake_root[0]))["chain"]
    assert "not a CA certificate" in message


def test_client_ca_bundle_warns_when_an_intermediate_lacks_its_root():
    root = make_ca("Devices Root")
    intermediate = make_ca("Devices Issuing", issuer=root)
    alone = tls.check_client_ca(certificate=pem(intermediate[0]), now=NOW)
    assert len(alone.warnings) == 1 and "not a root" in alone.warnings[0]
    bundle = tls.check_client_ca(certificate=pem(intermediate[0], root[0]), now=NOW)
    assert bundle.warnings == () and bundle.facts.subject == "CN=Devices Issuing,O=Acme"
    expired = make_ca("Old", not_before=NOW - 400 * DAY, not_after=NOW - DAY)
    with pytest.raises(ValidationFailed) as caught:
        tls.check_client_ca(certificate=pem(expired[0]), now=NOW)
    assert caught.value.errors[0].field == "certificate" and "expired" in caught.value.errors[0].message


def test_not_valid_yet_message_gives_the_date_when_the_certificate_starts_later():
    start = NOW + datetime.timedelta(days=3)
    leaf, key = make_leaf(None, "soon", sans=("soon",), not_before=start, not_after=start + 30 * DAY)
    message = _refusal(certificate=pem(leaf), private_key=key_pem(key))["certificate"]
    assert start.strftime("%Y-%m-%d") in message


def test_control_characters_in_a_certificates_names_are_escaped_when_shown():
    leaf, key = make_leaf(None, "evil\nBcc: all@example.com", sans=("mqtt.acme.example",))
    facts = tls.check_server_certificate(certificate=pem(leaf), private_key=key_pem(key), now=NOW).facts
    assert "\n" not in facts.subject and "\\x0a" in facts.subject
    assert facts.common_name == "evil\\x0aBcc: all@example.com"


def test_an_oversized_rsa_key_is_refused_when_above_the_bound(monkeypatch):
    monkeypatch.setattr(tls, "MAX_RSA_BITS", 2048)
    big = new_key("rsa3072")
    leaf, _ = make_leaf(None, "big", sans=("big",), key=big)
    assert "larger than" in _refusal(certificate=pem(leaf), private_key=key_pem(big))["certificate"]


def _oversized_rsa_private_key_pem(bits: int) -> str:
    """An RSA private key of `bits` whose primes are not prime (cheap to make): its size is what is read first."""
    import secrets

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    def odd(size: int) -> int:
        # The top two bits set: the product of two such halves has exactly `bits` bits.
        return secrets.randbits(size) | (3 << (size - 2)) | 1

    p, q = odd(bits // 2), odd(bits // 2)
    numbers = rsa.RSAPrivateNumbers(
        p=p,
        q=q,
        d=odd(bits - 8),
        dmp1=odd(bits // 2 - 8),
        dmq1=odd(bits // 2 - 8),
        iqmp=odd(bits // 2 - 8),
        public_numbers=rsa.RSAPublicNumbers(65537, p * q),
    )
    key = numbers.private_key(unsafe_skip_rsa_key_validation=True)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    ).decode()


def test_an_rsa_private_key_above_the_bound_is_refused_by_its_size_before_its_primes_are_checked():
    # Checking an RSA key's primes takes time that grows steeply with its size, and a PEM within the upload limit can
    # hold a key of tens of thousands of bits: its size is refused first, so such a key never reaches that check.
    leaf, _ = make_leaf(None, "mqtt.acme.example", sans=("mqtt.acme.example",))
    private_key = _oversized_rsa_private_key_pem(16384)
    assert len(private_key) < 64 * 1024
    assert _refusal(certificate=pem(leaf), private_key=private_key) == {
        "private_key": f"The private key: an RSA key of 16384 bits is larger than the {tls.MAX_RSA_BITS} bits clients "
        "handle well."
    }


def test_an_rsa_private_key_whose_primes_are_not_prime_is_refused_when_within_the_bound():
    leaf, _ = make_leaf(None, "mqtt.acme.example", sans=("mqtt.acme.example",))
    assert _refusal(certificate=pem(leaf), private_key=_oversized_rsa_private_key_pem(2048)) == {
        "private_key": "Not a valid PEM private key: its content cannot be parsed."
    }
