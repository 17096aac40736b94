"""`python manage.py close_invoices [--month YYYY-MM]`: issue the monthly invoices of a month (default: last month)."""

import datetime

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from billing import invoicing, metering, services


def parse_month(value: str) -> datetime.date:
    try:
        return datetime.datetime.strptime(value, "%Y-%m").date()
    except ValueError as exc:
        raise CommandError(f"--month must be YYYY-MM, not {value!r}") from exc


class Command(BaseCommand):
    help = (
        "Close a month: one invoice per billing account for its unbilled usage and traffic (late usage of earlier "
        "months included). Unconfirmed VAT numbers are asked about at VIES first. An invoice that cannot be issued "
        "complete (address, price, exchange rate) waits as a draft. Safe to run again."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--month",
            type=parse_month,
            default=None,
            help="The month to close, YYYY-MM (default: the month before the current one).",
        )

    def handle(self, *args, month=None, **options):
        if month is None:
            month = (metering.month_start(timezone.now()) - datetime.timedelta(days=1)).date()
        services.vat_checks_run_due(unconfirmed_only=True, budget_seconds=600)
        try:
            result = invoicing.invoices_close(month=month)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"{month:%Y-%m}: {len(result.invoices)} invoices to collect, {len(result.held)} held")
