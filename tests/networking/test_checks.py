"""The pre-flight's pure parts: CIDR parsing, private and reserved ranges, identifier formats."""

import ipaddress

import pytest

from networking import checks


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("10.0.0.0/33", "the prefix length must be 0 to 32"),
        ("10.0.0.0/١٦", "the prefix length must be 0 to 32"),  # Arabic-Indic digits are digits, not ASCII ones
        ("10.0.0.0", "not in CIDR notation"),
        ("10.0.0.256/24", "'10.0.0.256' is not an IPv4 address"),
        ("fd00::/8", "'fd00::' is not an IPv4 address"),
        ("10.1.2.3/16", "has host bits set; did you mean 10.1.0.0/16?"),
    ],
)
def test_parse_cidr_explains_what_is_wrong_when_malformed(text, message):
    with pytest.raises(ValueError, match=message.replace("?", r"\?")):
        checks.parse_cidr(text)


@pytest.mark.parametrize(
    ("text", "private"),
    [
        ("10.200.0.0/16", "RFC 1918"),
        ("172.31.255.0/24", "RFC 1918"),
        ("192.168.10.0/24", "RFC 1918"),
        ("100.64.0.0/16", "RFC 6598"),
        ("172.32.0.0/16", None),  # just past 172.16.0.0/12
        ("100.128.0.0/16", None),  # just past 100.64.0.0/10
        ("10.0.0.0/7", None),  # larger than the private range it starts in
        ("8.8.8.0/24", None),
    ],
)
def test_private_range_is_the_whole_network_inside_one_rfc_range(text, private):
    found = checks.private_range_of(ipaddress.IPv4Network(text))
    assert (found[1] if found else None) == private


def test_reserved_conflict_names_the_range_and_why_when_overlapping():
    network = ipaddress.IPv4Network("172.17.128.0/17")
    assert checks.reserved_conflict(network, "aws")[0] == ipaddress.IPv4Network("172.17.0.0/16")
    assert checks.reserved_conflict(network, "gcp") is None
    extra = checks.reserved_conflict(ipaddress.IPv4Network("10.100.0.0/16"), "gcp", ["10.96.0.0/12"])
    assert extra == (ipaddress.IPv4Network("10.96.0.0/12"), "reserved by the platform in this region")


@pytest.mark.parametrize(
    ("field", "value", "ok"),
    [
        ("account_id", "123456789012", True),
        ("account_id", "12345678901", False),
        ("account_id", "123456789012\n", False),
        ("vpc_id", "vpc-0a1b2c3d", True),
        ("vpc_id", "vpc-0a1b2c3d4e5f60718", True),
        ("vpc_id", "vpc-0A1B2C3D", False),
        ("region", "eu-central-1", True),
        ("region", "us-gov-west-1", True),
        ("region", "eu central 1", False),
        ("project_id", "acme-factory-42", True),
        ("project_id", "acme-", False),
        ("project_id", "42acme", False),
        ("network", "default", True),
        ("network", "Plant", False),
        ("tenant_id", "33333333-3333-4333-8333-333333333333", True),
        ("tenant_id", "33333333333343338333333333333333", False),
        ("resource_group", "acme-rg_(prod)", True),
        ("resource_group", "acme rg", False),
        ("resource_group", "acme.", False),
        ("vnet_name", "plant-vnet", True),
        ("vnet_name", "p", False),
        ("vnet_name", "plant$(reboot)", False),
    ],
)
def test_field_formats_accept_only_the_providers_identifiers(field, value, ok):
    assert (checks.field_error(field, value) is None) is ok
