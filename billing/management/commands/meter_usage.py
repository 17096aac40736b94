"""`python manage.py meter_usage [--now ISO-8601] [--since ISO-8601]`: record the complete hours up to --now."""

import datetime

from django.core.management.base import BaseCommand, CommandError

from billing import annual, invoicing, metering


def parse_instant(value: str) -> datetime.datetime:
    try:
        parsed = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise CommandError(f"not an ISO-8601 instant: {value!r}") from exc
    if parsed.tzinfo is None:
        raise CommandError(f"give a time zone (e.g. 2026-03-01T00:00:00Z): {value!r}")
    return parsed


class Command(BaseCommand):
    help = (
        "Meter deployments' billable seconds per hour slot up to --now (default: now); catches up every missed hour, "
        "however many, in batches. Usage without a price in its currency is recorded unpriced and reported."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--now",
            type=parse_instant,
            default=None,
            help="Meter the complete hours before this ISO-8601 instant (default: now).",
        )
        parser.add_argument(
            "--since",
            type=parse_instant,
            default=None,
            help="Re-meter from this hour (already recorded hours are left as they are).",
        )

    def handle(self, *args, now=None, since=None, **options):
        recorded = metering.usage_meter(now=now, since=since)
        priced = metering.usage_price_pending()
        released = invoicing.invoices_release_held(now=now)
        upgrades = annual.annual_upgrades_bill(now=now)
        self.stdout.write(f"{recorded} usage records, {upgrades} annual upgrades billed")
        unpriced = metering.unpriced_usage_summary()
        if priced or released:
            self.stdout.write(f"{priced} records priced since, {len(released)} held invoices issued")
        for currency, (records, seconds) in sorted(unpriced.items()):
            self.stderr.write(
                f"error: {records} usage records ({seconds} s) in {currency} have no price: add the catalog price"
            )
