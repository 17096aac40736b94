from django.apps import AppConfig


def _metering_lag():
    """Seconds between the last fully metered hour and now (an hour or so is normal; more means metering stalls)."""
    from django.utils import timezone

    from billing.models import MeteringCursor

    cursor = MeteringCursor.objects.order_by("-metered_until").values_list("metered_until", flat=True).first()
    return {(): (timezone.now() - cursor).total_seconds()} if cursor else {}


def _unpriced_usage():
    """Seconds metered without a price, by currency: each one is an invoice waiting for the operator."""
    from billing.metering import unpriced_usage_summary

    return {(currency,): seconds for currency, (_records, seconds) in unpriced_usage_summary().items()}


def _held_invoices():
    from collections import Counter

    from billing.models import Invoice

    counts = Counter()
    for reasons in (
        Invoice.objects.filter(status="draft").exclude(hold_reasons=[]).values_list("hold_reasons", flat=True)
    ):
        counts.update(reasons)
    return {(reason,): count for reason, count in counts.items()}


class BillingConfig(AppConfig):
    name = "billing"

    def ready(self):
        from billing import metering, selectors
        from controlplane.metrics import register_gauge_source
        from deployments import hooks
        from organizations import closing

        hooks.on_billable_time_corrected(metering.deployment_time_corrected)
        # Nor while it owes anything: usage not invoiced, invoices not paid, an annual plan running.
        closing.on_deletion_check(selectors.organization_deletion_blockers)

        register_gauge_source(
            "controlplane_metering_lag_seconds", "Seconds since the last metered hour ended.", [], _metering_lag
        )
        register_gauge_source(
            "controlplane_billing_unpriced_usage_seconds",
            "Usage seconds recorded without a price in their currency (an operator error: add the catalog price).",
            ["currency"],
            _unpriced_usage,
        )
        register_gauge_source(
            "controlplane_billing_held_invoices",
            "Invoices waiting as drafts, by hold reason.",
            ["reason"],
            _held_invoices,
        )
