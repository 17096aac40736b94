"""The pre-flight of a VPC peering as pure functions: CIDR arithmetic and the format of each provider's identifiers.

Every value a customer types that later appears in a provider call or in a command we show is checked here against
a strict pattern (no spaces, quotes or shell metacharacters can pass). Nothing here touches the database or a network.
"""

from __future__ import annotations

import ipaddress
import re

from controlplane.validators import whole_number

PROVIDERS = ("aws", "gcp", "azure")

# What an Azure customer grants our application on their VNet so that it creates both sides of a peering (Azure's
# own list for a peering between subscriptions or tenants; the built-in Network Contributor role holds all four).
AZURE_PEERING_ROLE = "Network Contributor"
AZURE_PEERING_ACTIONS = (
    "Microsoft.Network/virtualNetworks/read",  # the owner tag below, read before anything is created
    "Microsoft.Network/virtualNetworks/peer/action",
    "Microsoft.Network/virtualNetworks/virtualNetworkPeerings/write",
    "Microsoft.Network/virtualNetworks/virtualNetworkPeerings/read",
    "Microsoft.Network/virtualNetworks/virtualNetworkPeerings/delete",
)
# The tag (with the organization's public id as its value) an Azure customer puts on their VNet. Our application's role
# there lets it peer that VNet with anything: the tag, which only someone who may write the VNet can set, is what
# stops another organization from naming a VNet whose owner granted us the role for peerings of their own.
AZURE_OWNER_TAG = "mqtt-cloud-organization"

# The ranges a peered network may use: private address space only.
PRIVATE_RANGES: tuple[tuple[ipaddress.IPv4Network, str], ...] = (
    (ipaddress.IPv4Network("10.0.0.0/8"), "RFC 1918"),
    (ipaddress.IPv4Network("172.16.0.0/12"), "RFC 1918"),
    (ipaddress.IPv4Network("192.168.0.0/16"), "RFC 1918"),
    (ipaddress.IPv4Network("100.64.0.0/10"), "RFC 6598"),
)

# Private ranges a provider keeps for itself, with why. Public ones (link-local, Azure's 168.63.129.16, …) never pass
# the private-range check in the first place. A region may add its own (`reserved_cidrs`: the cluster's pod and service
# ranges, for example).
PROVIDER_RESERVED: dict[str, tuple[tuple[ipaddress.IPv4Network, str], ...]] = {
    "aws": (
        (
            ipaddress.IPv4Network("172.17.0.0/16"),
            "used by some AWS services (Cloud9, SageMaker), which AWS advises keeping out of VPCs",
        ),
    ),
    "gcp": (),
    "azure": (),
}

# The customer-side fields of each provider, in the order the API documents them.
PROVIDER_FIELDS: dict[str, tuple[str, ...]] = {
    "aws": ("account_id", "vpc_id", "region"),
    "gcp": ("project_id", "network"),
    "azure": ("tenant_id", "subscription_id", "resource_group", "vnet_name"),
}
ALL_FIELDS: tuple[str, ...] = tuple(dict.fromkeys(f for fields in PROVIDER_FIELDS.values() for f in fields))

_GUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
FIELD_FORMATS: dict[str, tuple[re.Pattern, str]] = {
    # re.ASCII: a Unicode \d also takes Arabic-Indic and other digits, which AWS does not.
    "account_id": (re.compile(r"\d{12}", re.ASCII), "An AWS account id is 12 digits."),
    "vpc_id": (
        re.compile(r"vpc-(?:[0-9a-f]{8}|[0-9a-f]{17})"),
        "An AWS VPC id is vpc- followed by 8 or 17 lowercase hexadecimal characters.",
    ),
    "region": (
        re.compile(r"[a-z]{2}(?:-gov|-iso[a-z]?)?-[a-z]+-\d{1,2}", re.ASCII),
        "An AWS region code looks like eu-west-1.",
    ),
    "project_id": (
        re.compile(r"[a-z][a-z0-9-]{4,28}[a-z0-9]"),
        "A GCP project id is 6 to 30 lowercase letters, digits or hyphens, starting with a letter and not ending "
        "with a hyphen.",
    ),
    "network": (
        re.compile(r"[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?"),
        "A GCP network name is 1 to 63 lowercase letters, digits or hyphens, starting with a letter and not ending "
        "with a hyphen.",
    ),
    "tenant_id": (re.compile(_GUID), "An Azure tenant id is a GUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)."),
    "subscription_id": (
        re.compile(_GUID),
        "An Azure subscription id is a GUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx).",
    ),
    "resource_group": (
        re.compile(r"[-\w.()]{0,89}[-\w()]", re.ASCII),
        "An Azure resource group name is 1 to 90 letters, digits, '-', '_', '.', '(' or ')', not ending with '.'.",
    ),
    "vnet_name": (
        re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}[A-Za-z0-9_]"),
        "An Azure virtual network name is 2 to 64 letters, digits, '_', '.' or '-', starting with a letter or digit "
        "and ending with a letter, digit or '_'.",
    ),
}


def field_error(name: str, value: str) -> str | None:
    """The message for a malformed provider field, or None when it is well formed."""
    pattern, message = FIELD_FORMATS[name]
    return None if pattern.fullmatch(value) else message


def normalize_field(name: str, value: str) -> str:
    """GUIDs compare case-insensitively: store them lowercase, as Azure writes them in resource ids."""
    return value.lower() if name in ("tenant_id", "subscription_id") else value


def parse_cidr(text: str) -> ipaddress.IPv4Network:
    """An IPv4 network in CIDR notation, or ValueError with a message a customer can act on."""
    if not isinstance(text, str) or "/" not in text:
        raise ValueError(f"{text!r} is not in CIDR notation (address/prefix, e.g. 10.1.0.0/16).")
    address, _, prefix = text.partition("/")
    try:
        ipaddress.IPv4Address(address)
    except ValueError:
        raise ValueError(f"{text!r} is not a valid IPv4 CIDR: {address!r} is not an IPv4 address.") from None
    length = whole_number(prefix)
    if length is None or not 0 <= length <= 32:
        raise ValueError(f"{text!r} is not a valid IPv4 CIDR: the prefix length must be 0 to 32.")
    try:
        return ipaddress.IPv4Network(text, strict=True)
    except ValueError:
        suggestion = ipaddress.IPv4Network(text, strict=False)
        raise ValueError(f"{text!r} has host bits set; did you mean {suggestion}?") from None


def private_range_of(network: ipaddress.IPv4Network) -> tuple[ipaddress.IPv4Network, str] | None:
    """The private range (and the RFC that sets it aside) holding the whole of `network`, or None."""
    for candidate, rfc in PRIVATE_RANGES:
        if network.subnet_of(candidate):
            return candidate, rfc
    return None


def public_range_message(network: ipaddress.IPv4Network) -> str:
    allowed = ", ".join(f"{net} ({rfc})" for net, rfc in PRIVATE_RANGES)
    return f"{network} is not a private range: a peered network must lie within {allowed}."


def reserved_conflict(
    network: ipaddress.IPv4Network, provider: str, extra: list[str] | tuple[str, ...] = ()
) -> tuple[ipaddress.IPv4Network, str] | None:
    """The first reserved range `network` overlaps, with the reason it is reserved, or None."""
    ranges = list(PROVIDER_RESERVED.get(provider, ()))
    for text in extra:
        ranges.append((ipaddress.IPv4Network(text), "reserved by the platform in this region"))
    for candidate, why in ranges:
        if network.overlaps(candidate):
            return candidate, why
    return None
