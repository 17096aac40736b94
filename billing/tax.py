"""Tax identity and tax treatment: tax-id format/checksum checks (python-stdnum), postal codes, and the
EU VAT decision (domestic, reverse charge, EU consumer, outside scope) for one invoice.

Pure functions of their arguments: it must never call the network (billing.vies does) nor read the database.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from enum import StrEnum
from types import ModuleType

from stdnum.eu import vat as eu_vat
from stdnum.exceptions import ValidationError

from billing.vat_rates import EU_MEMBER_STATES, is_eu, normalize_country, standard_rate

REVERSE_CHARGE_MENTION = (
    "Reverse charge: VAT to be accounted for by the recipient (Article 196, Council Directive 2006/112/EC)."
)


def unconfirmed_vat_note(number: str, country: str) -> str:
    return (
        f"VAT number {number} has not been confirmed by VIES: VAT is charged at the rate of {country} as to a "
        "consumer (Article 18(1)(a), Implementing Regulation (EU) No 282/2011)."
    )


class VatStatus(StrEnum):
    """What we know about a customer's tax id. `valid` is only ever set after a VIES confirmation; `format_valid`
    is a number that passed the format check and that VIES has not confirmed (yet): it never earns reverse charge."""

    NONE = "none"
    FORMAT_VALID = "format_valid"
    VALID = "valid"
    INVALID = "invalid"


class TaxTreatment(StrEnum):
    DOMESTIC = "domestic"
    REVERSE_CHARGE = "reverse_charge"
    EU_CONSUMER = "eu_consumer"
    OUTSIDE_SCOPE = "outside_scope"


@dataclass(frozen=True, slots=True)
class TaxIdCheck:
    status: VatStatus
    message: str
    normalized: str | None = None
    # Stripe's tax id type for this number (eu_vat, us_ein...), to keep the Stripe customer in sync.
    stripe_type: str | None = None


@dataclass(frozen=True, slots=True)
class TaxDecision:
    treatment: TaxTreatment
    rate: Decimal
    mention: str | None = None
    # A statement the invoice must carry besides the mention (a number taxed as a consumer's while unconfirmed).
    note: str | None = None


def _vat_prefix(country: str) -> str:
    return "EL" if country == "GR" else country


def _clean(number: str) -> str:
    return re.sub(r"[\s.\-/]", "", number).upper()


# Two leading letters that name a country are taken as the VAT prefix; anything else is the national part.
_COUNTRY_PREFIXES = frozenset({_vat_prefix(c) for c in EU_MEMBER_STATES} | {"GR", "XI", "GB", "CH", "NO"})


def _check_eu_vat(country: str, number: str) -> TaxIdCheck:
    expected = _vat_prefix(country)
    compact = _clean(number)
    prefix = compact[:2]
    if prefix in _COUNTRY_PREFIXES:
        # GR is accepted from users but VIES and invoices use EL.
        given = "EL" if prefix == "GR" else prefix
        if given != expected:
            return TaxIdCheck(
                VatStatus.INVALID,
                f"The VAT number starts with {prefix}, but the billing country is {country}: "
                f"a {country} VAT number must start with {expected}.",
            )
        compact = compact[2:]
    compact = expected + compact
    try:
        eu_vat.validate(compact)
    except ValidationError as exc:
        return TaxIdCheck(VatStatus.INVALID, f"{compact} is not a valid {expected} VAT number: {exc}")
    return TaxIdCheck(VatStatus.FORMAT_VALID, "Format and checksum are valid.", compact, "eu_vat")


def _check_gb(number: str) -> TaxIdCheck:
    from stdnum.gb import vat as gb_vat

    if _clean(number).startswith("XI"):
        # Northern Ireland traders keep an EU VAT number for goods (XI prefix, in VIES).
        return _check_eu_vat("XI", number)
    return _check_with(gb_vat, number, label="GB VAT number", stripe_type="gb_vat", prefix="GB")


def _check_with(
    module: ModuleType, number: str, *, label: str, stripe_type: str, prefix: str = "", formatted: bool = False
) -> TaxIdCheck:
    try:
        compact = module.validate(number)
    except ValidationError as exc:
        return TaxIdCheck(VatStatus.INVALID, f"{number.strip()} is not a valid {label}: {exc}")
    shown = module.format(compact) if formatted else compact
    return TaxIdCheck(VatStatus.FORMAT_VALID, "Format and checksum are valid.", prefix + shown, stripe_type)


# country -> (stdnum module, label, Stripe tax id type, whether Stripe expects the punctuated form)
@dataclass(frozen=True)
class _TaxIdValidator:
    module: str  # the python-stdnum module that checks the number
    label: str
    stripe_type: str
    formatted: bool  # shown as the module's format() of it, not compact


_NON_EU_VALIDATORS: dict[str, _TaxIdValidator] = {
    "US": _TaxIdValidator("stdnum.us.ein", "US EIN", "us_ein", formatted=True),
    "AU": _TaxIdValidator("stdnum.au.abn", "Australian ABN", "au_abn", formatted=False),
    "CA": _TaxIdValidator("stdnum.ca.bn", "Canadian business number", "ca_bn", formatted=False),
    "CH": _TaxIdValidator("stdnum.ch.uid", "Swiss UID", "ch_uid", formatted=True),
    "NO": _TaxIdValidator("stdnum.no.mva", "Norwegian MVA number", "no_vat", formatted=False),
    "IN": _TaxIdValidator("stdnum.in_.gstin", "Indian GSTIN", "in_gst", formatted=False),
}


def validate_tax_id(country: str, number: str | None) -> TaxIdCheck:
    """Check a tax id's format and checksum for the billing country; an empty number is status none."""
    code = normalize_country(country)
    if not number or not number.strip():
        return TaxIdCheck(VatStatus.NONE, "No tax id given.")
    if is_eu(code):
        return _check_eu_vat(code, number)
    if code == "GB":
        return _check_gb(number)
    if validator := _NON_EU_VALIDATORS.get(code):
        return _check_with(
            importlib.import_module(validator.module),
            number,
            label=validator.label,
            stripe_type=validator.stripe_type,
            formatted=validator.formatted,
        )
    return TaxIdCheck(
        VatStatus.NONE, f"Tax ids for {code} are not checked; the number is kept as given.", number.strip()
    )


# re.ASCII: a Unicode \d also takes Arabic-Indic, fullwidth and other digits, which no post office writes.
_POSTAL_CODES: dict[str, re.Pattern[str]] = {
    "US": re.compile(r"^\d{5}(-?\d{4})?\Z", re.ASCII),
    "CA": re.compile(r"^[ABCEGHJ-NPRSTVXY]\d[ABCEGHJ-NPRSTV-Z] ?\d[ABCEGHJ-NPRSTV-Z]\d\Z", re.ASCII),
    # UK: outward code (area, district) + inward code; GIR 0AA is the one historic exception.
    "GB": re.compile(r"^(GIR ?0AA|[A-Z]{1,2}\d[A-Z\d]? ?\d[A-Z]{2})\Z", re.ASCII),
    "DE": re.compile(r"^\d{5}\Z", re.ASCII),
    "FR": re.compile(r"^\d{5}\Z", re.ASCII),
    "NL": re.compile(r"^[1-9]\d{3} ?[A-Z]{2}\Z", re.ASCII),
}


@dataclass(frozen=True, slots=True)
class PostalCodeCheck:
    valid: bool
    message: str
    normalized: str


def validate_postal_code(country: str, code: str) -> PostalCodeCheck:
    """Check a postal code's shape for countries we know; any other country's code is accepted."""
    country = normalize_country(country)
    value = " ".join((code or "").upper().split())
    pattern = _POSTAL_CODES.get(country)
    if pattern is None:
        return PostalCodeCheck(True, f"Postal codes for {country} are not checked.", value)
    if pattern.match(value):
        return PostalCodeCheck(True, "Postal code is valid.", value)
    examples = {
        "US": "12345 or 12345-6789",
        "CA": "K1A 0B1",
        "GB": "SW1A 1AA",
        "DE": "10115",
        "FR": "75001",
        "NL": "1012 AB",
    }
    return PostalCodeCheck(False, f"{code!r} is not a valid {country} postal code (e.g. {examples[country]}).", value)


def tax_treatment(
    *,
    seller_country: str,
    customer_country: str,
    is_business: bool,
    vat_status: VatStatus | str,
    on: date,
    tax_id: str = "",
) -> TaxDecision:
    """VAT treatment and rate of an invoice for electronically supplied services, on the supply date.

    Reverse charge needs a number VIES confirmed (status valid, Art. 18(1)(a) of Implementing Regulation
    282/2011): a number that only passed the format check, or that VIES could not be asked about, is taxed as a
    consumer of its country, and the decision carries the note the invoice prints.

    Simplification: the rules are those of an EU-established seller. A seller outside the EU is treated as
    outside scope for non-EU customers and charges the customer's rate to EU customers without a confirmed VAT
    number (OSS/non-Union scheme), reverse charge otherwise; domestic rates exist only for EU sellers.
    """
    seller = normalize_country(seller_country)
    customer = normalize_country(customer_country)
    status = VatStatus(vat_status)
    if seller == customer and is_eu(seller):
        return TaxDecision(TaxTreatment.DOMESTIC, standard_rate(seller, on))
    if not is_eu(customer):
        return TaxDecision(TaxTreatment.OUTSIDE_SCOPE, Decimal(0))
    if is_business and status is VatStatus.VALID:
        return TaxDecision(TaxTreatment.REVERSE_CHARGE, Decimal(0), REVERSE_CHARGE_MENTION)
    note = unconfirmed_vat_note(tax_id, customer) if is_business and status is VatStatus.FORMAT_VALID else None
    return TaxDecision(TaxTreatment.EU_CONSUMER, standard_rate(customer, on), note=note)


def tax_id_country_mismatch(country: str, number: str | None) -> str | None:
    """For an EU billing country: a message when the number carries another country's VAT prefix, else None.

    That is a mistake in the request (the wrong field or the wrong country), unlike a bad checksum, which is a
    fact about the number: the first is refused, the second kept with status invalid.
    """
    code = normalize_country(country)
    if not number or not is_eu(code):
        return None
    prefix = _clean(number)[:2]
    expected = _vat_prefix(code)
    if prefix in _COUNTRY_PREFIXES and ("EL" if prefix == "GR" else prefix) != expected:
        return (
            f"The VAT number starts with {prefix}, but the billing country is {code}: "
            f"a {code} VAT number must start with {expected}."
        )
    return None
