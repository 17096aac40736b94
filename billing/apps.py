from django.apps import AppConfig


def _metering_lag():
    """Seconds between the last fully metered hour and now (an hour or so is normal; more means metering stalls)."""
    from django.utils import timezone

    from billing.models import MeteringCursor

    cursor = MeteringCursor.objects.order_by("-metered_until").values_list("metered_until", flat=True).first()
    return {(): (timezone.now() - cursor).total_seconds()} if cursor else {}


class BillingConfig(AppConfig):
    name = "billing"

    def ready(self):
        from controlplane.metrics import register_gauge_source

        register_gauge_source(
            "controlplane_metering_lag_seconds", "Seconds since the last metered hour ended.", [], _metering_lag
        )
