"""Money arithmetic: integer minor units of an ISO 4217 currency, Decimal prices, half-up rounding.

Owns how prices become amounts (per-second usage lines, traffic, annual prices, prorations, VAT, currency
conversion) and how amounts print. Every rounding in billing goes through `round_minor`, half away from zero. It must
never use float, and never round more than once per invoice line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

SECONDS_PER_HOUR = 3600
HOURS_PER_YEAR = 8760
ANNUAL_DISCOUNT = Decimal("0.15")

# Neither pycountry nor babel is in the venv, so the ISO 4217 minor-unit exponents are kept here.
# Only the currencies whose exponent is not 2 are listed (ISO 4217 list one, exponents as published
# by the ISO 4217 maintenance agency); every other well-formed code has 2.
_MINOR_UNIT_EXCEPTIONS: dict[str, int] = {
    # zero decimals
    "BIF": 0,
    "CLP": 0,
    "DJF": 0,
    "GNF": 0,
    "ISK": 0,
    "JPY": 0,
    "KMF": 0,
    "KRW": 0,
    "PYG": 0,
    "RWF": 0,
    "UGX": 0,
    "UYI": 0,
    "VND": 0,
    "VUV": 0,
    "XAF": 0,
    "XOF": 0,
    "XPF": 0,
    # three decimals
    "BHD": 3,
    "IQD": 3,
    "JOD": 3,
    "KWD": 3,
    "LYD": 3,
    "OMR": 3,
    "TND": 3,
    # four decimals (units of account)
    "CLF": 4,
    "UYW": 4,
}
_CURRENCY_RE = re.compile(r"^[A-Z]{3}\Z")


def normalize_currency(currency: str) -> str:
    code = (currency or "").strip().upper()
    if not _CURRENCY_RE.match(code):
        raise ValueError(f"not an ISO 4217 currency code: {currency!r}")
    return code


def minor_units(currency: str) -> int:
    """Number of decimal places of the currency's minor unit (JPY 0, EUR 2, KWD 3)."""
    return _MINOR_UNIT_EXCEPTIONS.get(normalize_currency(currency), 2)


def _quantum(currency: str) -> Decimal:
    return Decimal(1).scaleb(-minor_units(currency))


def round_minor(value: Decimal) -> int:
    """The one rounding rule of billing: a Decimal number of minor units to an integer, half away from zero."""
    if not isinstance(value, Decimal):
        raise TypeError(f"money must be Decimal, got {type(value).__name__}")
    return int(value.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def round_half_up(value: Decimal, currency: str) -> int:
    """Round an amount in major units (Decimal) to an integer number of minor units, half away from zero."""
    if not isinstance(value, Decimal):
        raise TypeError(f"money must be Decimal, got {type(value).__name__}")
    return round_minor(value.scaleb(minor_units(currency)))


def to_decimal(minor: int, currency: str) -> Decimal:
    """Exact major-unit value of an integer minor amount (268056 USD -> Decimal('2680.56'))."""
    if not isinstance(minor, int) or isinstance(minor, bool):
        raise TypeError(f"minor amount must be int, got {type(minor).__name__}")
    return Decimal(minor).scaleb(-minor_units(currency)).quantize(_quantum(currency))


def format_money(minor: int, currency: str) -> str:
    """Human form with thousands separators and the code after it: '2,680.56 USD', '-1,000 JPY'."""
    code = normalize_currency(currency)
    value = to_decimal(minor, code)
    return f"{value:,} {code}"


@dataclass(frozen=True, slots=True)
class Money:
    """An amount in integer minor units of one currency; adding different currencies is an error."""

    minor: int
    currency: str

    def __post_init__(self) -> None:
        if not isinstance(self.minor, int) or isinstance(self.minor, bool):
            raise TypeError("Money.minor must be int")
        object.__setattr__(self, "currency", normalize_currency(self.currency))

    def _same(self, other: Money) -> None:
        if other.currency != self.currency:
            raise ValueError(f"cannot combine {self.currency} with {other.currency}")

    def __add__(self, other: Money) -> Money:
        self._same(other)
        return Money(self.minor + other.minor, self.currency)

    def __sub__(self, other: Money) -> Money:
        self._same(other)
        return Money(self.minor - other.minor, self.currency)

    def __neg__(self) -> Money:
        return Money(-self.minor, self.currency)

    @property
    def amount(self) -> Decimal:
        return to_decimal(self.minor, self.currency)

    def __str__(self) -> str:
        return format_money(self.minor, self.currency)


def usage_line_amount(*, seconds: int, hourly_price: Decimal, currency: str) -> int:
    """Amount of one invoice line billed by the second at an hourly price, rounded once."""
    if seconds < 0:
        raise ValueError("seconds must be >= 0")
    return round_half_up(Decimal(seconds) * hourly_price / SECONDS_PER_HOUR, currency)


def annual_price(*, hourly_price: Decimal, currency: str, discount: Decimal = ANNUAL_DISCOUNT) -> int:
    """Default annual price: 8,760 hours at the hourly price less the annual discount (15 %)."""
    if not Decimal(0) <= discount < Decimal(1):
        raise ValueError("discount must be in [0, 1)")
    return round_half_up(HOURS_PER_YEAR * hourly_price * (Decimal(1) - discount), currency)


def prorate(*, amount_minor: int, part: int | Decimal, whole: int | Decimal) -> int:
    """amount × part / whole in minor units, rounded half-up once (e.g. seconds left of a term)."""
    if whole <= 0:
        raise ValueError("whole must be > 0")
    if part < 0 or part > whole:
        raise ValueError("part must be within [0, whole]")
    return round_minor(Decimal(amount_minor) * Decimal(part) / Decimal(whole))


def percentage_of(*, amount_minor: int, rate_percent: Decimal) -> int:
    """rate % of an amount in minor units, rounded half-up once (the VAT on a net total)."""
    return round_minor(Decimal(amount_minor) * rate_percent / Decimal(100))


BYTES_PER_GIB = 1024**3  # the GiB of the catalog's traffic prices and allowances (and of the traffic alert rules)


def traffic_line_amount(*, billable_bytes: int, price_per_gib: Decimal, currency: str) -> int:
    """Amount of a traffic line: the bytes above the allowance at the price per GiB, rounded once."""
    if billable_bytes < 0:
        raise ValueError("billable bytes must be >= 0")
    return round_half_up(Decimal(billable_bytes) * price_per_gib / BYTES_PER_GIB, currency)


def convert(*, amount_minor: int, currency: str, to_currency: str, rate: Decimal) -> int:
    """`amount_minor` of `currency` in minor units of `to_currency` at `rate` (units of to_currency per unit)."""
    if rate <= 0:
        raise ValueError("an exchange rate must be positive")
    return round_half_up(to_decimal(amount_minor, currency) * rate, to_currency)
