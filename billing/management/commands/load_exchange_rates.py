"""`python manage.py load_exchange_rates [--file PATH | --url URL] [--date YYYY-MM-DD]`: store ECB reference rates."""

import datetime

from django.core.management.base import BaseCommand, CommandError

from billing import exchange_rates, invoicing


def parse_day(value: str) -> datetime.date:
    try:
        return datetime.date.fromisoformat(value)
    except ValueError as exc:
        raise CommandError(f"--date must be YYYY-MM-DD, not {value!r}") from exc


class Command(BaseCommand):
    help = (
        "Store the ECB's euro reference rates (eurofxref XML: daily, 90-day or historical) from a file or a URL, "
        "then issue invoices that waited for a rate. A malformed file, or one lacking a currency billing needs, "
        "stores nothing."
    )

    def add_arguments(self, parser):
        source = parser.add_mutually_exclusive_group()
        source.add_argument("--file", help="An ECB eurofxref XML file.")
        source.add_argument(
            "--url", help=f"Where to fetch the XML (default, with neither option: {exchange_rates.ECB_DAILY_URL})."
        )
        parser.add_argument(
            "--date", type=parse_day, default=None, help="Fail unless the file holds this day's rates (YYYY-MM-DD)."
        )

    def handle(self, *args, file=None, url=None, date=None, **options):
        source = file or url or exchange_rates.ECB_DAILY_URL
        try:
            stored = exchange_rates.exchange_rates_load(source=source, day=date)
        except (exchange_rates.RatesMalformed, exchange_rates.RatesUnavailable) as exc:
            raise CommandError(f"{source}: {exc}") from exc
        released = invoicing.invoices_release_held()
        self.stdout.write(f"{stored} rates stored from {source}; {len(released)} held invoices issued")
