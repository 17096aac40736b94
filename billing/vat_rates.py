"""EU standard VAT rates and member states' national currencies as dated data, and their lookups on a day.

Owns only the tables, `standard_rate` and `national_currency`; it must never decide which country's rate applies
(billing.tax does). Rates are percentages as Decimal (Decimal("25.5") means 25.5 %).
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal

# ISO 3166-1 alpha-2 codes of the 27 member states. Greece is GR in addresses; its VAT prefix is EL.
EU_MEMBER_STATES: frozenset[str] = frozenset(
    {
        "AT",
        "BE",
        "BG",
        "CY",
        "CZ",
        "DE",
        "DK",
        "EE",
        "ES",
        "FI",
        "FR",
        "GR",
        "HR",
        "HU",
        "IE",
        "IT",
        "LT",
        "LU",
        "LV",
        "MT",
        "NL",
        "PL",
        "PT",
        "RO",
        "SE",
        "SI",
        "SK",
    }
)

# The table starts on TABLE_START: a day before it has no answer (LookupError), so an old invoice is never
# silently taxed at a rate that was not in force (e.g. DE 16 % in H2 2020, IE 21 % to Feb 2021).
TABLE_START = date(2022, 1, 1)

# (country, standard rate %, valid from). Sources, checked 2025/2026:
# - baseline: European Commission "VAT rates applied in the Member States" (taxation_customs), as reproduced
#   e.g. by mindlink.lv/useful/vat-rates-in-eu and newcraft.dev/vat-rates-eu-countries (Dec 2025);
# - EE 20 -> 22 % on 2024-01-01 (Estonian Tax and Customs Board, via support.pagero.com compliance alert
#   2023-07-27) and 22 -> 24 % on 2025-07-01 (tuokko.ee, companyforbusiness.ee);
# - FI 24 -> 25.5 % on 2024-09-01 (newcraft.dev, Tax Foundation 2026 table);
# - LU 17 -> 16 % for 2023 only, back to 17 % on 2024-01-01 (Law of 26 October 2022; chronicle.lu, DLA Piper);
# - SK 20 -> 23 % on 2025-01-01 (EY tax news 2024-1947, DLA Piper);
# - RO 19 -> 21 % on 2025-08-01 (Law 141/2025, Official Gazette 699 of 2025-07-25; BDO Romania tax flash 121).
# No member state changed its standard rate in 2026 (only reduced rates: easytax.co 2026 overview).
STANDARD_RATES: tuple[tuple[str, Decimal, date], ...] = (
    ("AT", Decimal("20"), TABLE_START),
    ("BE", Decimal("21"), TABLE_START),
    ("BG", Decimal("20"), TABLE_START),
    ("CY", Decimal("19"), TABLE_START),
    ("CZ", Decimal("21"), TABLE_START),
    ("DE", Decimal("19"), TABLE_START),
    ("DK", Decimal("25"), TABLE_START),
    ("EE", Decimal("20"), TABLE_START),
    ("EE", Decimal("22"), date(2024, 1, 1)),
    ("EE", Decimal("24"), date(2025, 7, 1)),
    ("ES", Decimal("21"), TABLE_START),
    ("FI", Decimal("24"), TABLE_START),
    ("FI", Decimal("25.5"), date(2024, 9, 1)),
    ("FR", Decimal("20"), TABLE_START),
    ("GR", Decimal("24"), TABLE_START),
    ("HR", Decimal("25"), TABLE_START),
    ("HU", Decimal("27"), TABLE_START),
    ("IE", Decimal("23"), TABLE_START),
    ("IT", Decimal("22"), TABLE_START),
    ("LT", Decimal("21"), TABLE_START),
    ("LU", Decimal("17"), TABLE_START),
    ("LU", Decimal("16"), date(2023, 1, 1)),
    ("LU", Decimal("17"), date(2024, 1, 1)),
    ("LV", Decimal("21"), TABLE_START),
    ("MT", Decimal("18"), TABLE_START),
    ("NL", Decimal("21"), TABLE_START),
    ("PL", Decimal("23"), TABLE_START),
    ("PT", Decimal("23"), TABLE_START),
    ("RO", Decimal("19"), TABLE_START),
    ("RO", Decimal("21"), date(2025, 8, 1)),
    ("SE", Decimal("25"), TABLE_START),
    ("SI", Decimal("22"), TABLE_START),
    ("SK", Decimal("20"), TABLE_START),
    ("SK", Decimal("23"), date(2025, 1, 1)),
)

# VAT-number prefixes that differ from the ISO country code.
_ALIASES = {"EL": "GR"}


class UnknownRate(LookupError):
    """No standard rate is known for that country on that day."""


def normalize_country(country: str) -> str:
    code = (country or "").strip().upper()
    return _ALIASES.get(code, code)


def is_eu(country: str) -> bool:
    return normalize_country(country) in EU_MEMBER_STATES


def standard_rate(country: str, on: date, *, table: tuple[tuple[str, Decimal, date], ...] = STANDARD_RATES) -> Decimal:
    """Standard VAT rate (percent) of an EU member state in force on `on`; raises UnknownRate otherwise."""
    code = normalize_country(country)
    in_force = [(valid_from, rate) for c, rate, valid_from in table if c == code and valid_from <= on]
    if not in_force:
        raise UnknownRate(f"no standard VAT rate for {country!r} on {on.isoformat()}")
    return max(in_force)[1]


# Member states outside the euro area and their currencies, (country, currency, valid from): every other member
# state's national currency is the euro. Bulgaria adopted the euro on 2026-01-01.
NATIONAL_CURRENCIES: tuple[tuple[str, str, date], ...] = (
    ("BG", "BGN", TABLE_START),
    ("BG", "EUR", date(2026, 1, 1)),
    ("CZ", "CZK", TABLE_START),
    ("DK", "DKK", TABLE_START),
    ("HU", "HUF", TABLE_START),
    ("PL", "PLN", TABLE_START),
    ("RO", "RON", TABLE_START),
    ("SE", "SEK", TABLE_START),
)


def national_currency(country: str, on: date) -> str | None:
    """The currency a member state's VAT is accounted in on `on`; None outside the EU."""
    code = normalize_country(country)
    if code not in EU_MEMBER_STATES:
        return None
    in_force = [
        (valid_from, currency) for c, currency, valid_from in NATIONAL_CURRENCIES if c == code and valid_from <= on
    ]
    return max(in_force)[1] if in_force else "EUR"
