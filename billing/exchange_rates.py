"""ECB euro reference rates as dated data: reads the ECB's eurofxref XML (the daily, 90-day or historical file) from
a file or a URL and stores one rate per currency and day.

A file is taken whole or not at all: malformed XML, a rate that is not a positive number, or a day that lacks a
currency billing needs is refused with a message naming it, and nothing is stored. It never converts an amount
(billing.money and billing.invoicing do).
"""

from __future__ import annotations

import datetime
import re
import xml.etree.ElementTree as ET
from decimal import Decimal, InvalidOperation
from pathlib import Path

import requests
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from billing.models import BillingAccount, ExchangeRate
from billing.vat_rates import national_currency

ECB_DAILY_URL = "https://www.ecb.europa.eu/stats/eurofxref/eurofxref-daily.xml"
_CURRENCY = re.compile(r"^[A-Z]{3}\Z")


class RatesMalformed(ValueError):
    """The file is not usable; the message names what is wrong or missing."""


class RatesUnavailable(Exception):
    """The URL did not answer with a file (the task retries)."""


def read_source(source: str) -> tuple[bytes, str]:
    """The bytes of a file path or an http(s) URL, and a label for where they came from."""
    if source.startswith(("http://", "https://")):
        try:
            response = requests.get(source, timeout=30)
        except requests.RequestException as exc:
            raise RatesUnavailable(f"{source}: {type(exc).__name__}: {exc}") from exc
        if response.status_code != 200:
            raise RatesUnavailable(f"{source}: HTTP {response.status_code}")
        return response.content, source
    path = Path(source)
    try:
        return path.read_bytes(), str(path)
    except OSError as exc:
        raise RatesMalformed(f"cannot read {source}: {exc.strerror or exc}") from exc


def parse_ecb(data: bytes) -> dict[datetime.date, dict[str, Decimal]]:
    """Rates by day and currency (units per euro) from the ECB's XML; RatesMalformed naming the first problem."""
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise RatesMalformed(f"not well-formed XML: {exc}") from exc
    days: dict[datetime.date, dict[str, Decimal]] = {}
    for cube in root.iter():
        if not cube.tag.endswith("Cube") or "time" not in cube.attrib:
            continue
        raw_day = cube.attrib["time"]
        try:
            day = datetime.date.fromisoformat(raw_day)
        except ValueError:
            raise RatesMalformed(f"Cube time={raw_day!r} is not a date (YYYY-MM-DD)") from None
        if day in days:
            raise RatesMalformed(f"the rates of {day} appear twice")
        rates: dict[str, Decimal] = {}
        for item in cube:
            currency, raw_rate = item.attrib.get("currency", ""), item.attrib.get("rate", "")
            if not _CURRENCY.match(currency):
                raise RatesMalformed(f"on {day}: currency {currency!r} is not an ISO 4217 code")
            try:
                rate = Decimal(raw_rate)
            except InvalidOperation:
                raise RatesMalformed(f"on {day}: the rate of {currency} ({raw_rate!r}) is not a number") from None
            if not rate.is_finite() or rate <= 0:
                raise RatesMalformed(f"on {day}: the rate of {currency} ({raw_rate!r}) is not a positive number")
            rates[currency] = rate
        if not rates:
            raise RatesMalformed(f"the Cube of {day} holds no rate")
        days[day] = rates
    if not days:
        raise RatesMalformed("no dated rates in the file (expected <Cube time='YYYY-MM-DD'> elements)")
    return days


def required_currencies(on: datetime.date | None = None) -> set[str]:
    """The currencies billing needs a euro rate for: those accounts are billed in and the seller country's, but
    the euro itself."""
    on = on or timezone.now().date()
    needed = set(BillingAccount.objects.values_list("currency", flat=True).distinct())
    needed.add(settings.BILLING_DEFAULT_CURRENCY)
    national = national_currency(settings.SELLER_COUNTRY, on)
    if national:
        needed.add(national)
    return needed - {"EUR"}


def exchange_rates_load(*, source: str, day: datetime.date | None = None) -> int:
    """Load every day's rates of `source` (a file path or URL); `day`, when given, must be in it. Returns the number
    of rates stored (new or replaced). Nothing is stored unless the whole file is usable."""
    data, label = read_source(source)
    days = parse_ecb(data)
    if day is not None and day not in days:
        have = ", ".join(str(d) for d in sorted(days)[-3:])
        raise RatesMalformed(f"the file has no rates for {day} (its latest: {have})")
    needed = required_currencies()
    for on, rates in sorted(days.items()):
        missing = sorted(needed - rates.keys())
        if missing:
            raise RatesMalformed(f"the rates of {on} lack {', '.join(missing)}, which billing needs")
    now = timezone.now()
    rows = [
        ExchangeRate(currency=currency, on=on, rate=rate, source=label[:300], loaded_at=now)
        for on, rates in days.items()
        for currency, rate in rates.items()
    ]
    with transaction.atomic():
        ExchangeRate.objects.bulk_create(
            rows,
            batch_size=2000,
            update_conflicts=True,
            unique_fields=["currency", "on"],
            update_fields=["rate", "source", "loaded_at"],
        )
    return len(rows)
