"""Template helpers of the console: the hidden fields every mutating form carries, status badges, money."""

import uuid
from decimal import Decimal

from django import template
from django.middleware.csrf import get_token
from django.utils.html import format_html

from console.once import FORM_KEY

register = template.Library()

SETTLED = {"running", "stopped", "deleted"}


@register.simple_tag(takes_context=True)
def post_guard(context):
    """The CSRF token and a fresh form key: a double submit of this form is replayed, not repeated."""
    request = context["request"]
    return format_html(
        '<input type="hidden" name="csrfmiddlewaretoken" value="{}"><input type="hidden" name="{}" value="{}">',
        get_token(request),
        FORM_KEY,
        uuid.uuid4().hex,
    )


@register.simple_tag
def status_badge(status, label=None):
    tone = {
        "running": "ok",
        "stopped": "neutral",
        "deleted": "neutral",
        "failed": "bad",
        "degraded": "bad",
        "succeeded": "ok",
        "active": "ok",
        "pending": "busy",
        "accepted": "ok",
        "revoked": "neutral",
        "expired": "neutral",
        "ended": "neutral",
        "scheduled": "busy",
        "firing": "bad",
        "resolved": "ok",
        "enabled": "ok",
        "disabled": "neutral",
        "paid": "ok",
        "open": "busy",
        "overdue": "bad",
        "void": "neutral",
        "draft": "neutral",
        "uncollectible": "bad",
    }.get(str(status), "busy")
    return format_html('<span class="badge badge-{}">{}</span>', tone, label or str(status).replace("_", " "))


@register.simple_tag
def severity_badge(severity):
    tone = {"critical": "bad", "warning": "busy", "info": "neutral"}.get(str(severity), "neutral")
    return format_html('<span class="badge badge-{}">{}</span>', tone, str(severity))


@register.filter
def price(amount, currency="USD"):
    """A per-hour catalog price: '$0.36' for USD, '0.36 EUR' otherwise; up to 6 decimals, at least 2."""
    if amount is None:
        return "—"
    value = Decimal(amount).normalize()
    exponent = -value.as_tuple().exponent if value.as_tuple().exponent < 0 else 0
    text = f"{value:,.{max(2, min(exponent, 6))}f}"
    return f"${text}" if currency == "USD" else f"{text} {currency}"


@register.filter
def money_minor(minor, currency="USD"):
    from billing.money import to_decimal

    if minor is None:
        return "—"
    value = to_decimal(int(minor), currency)
    return f"${value:,}" if currency == "USD" else f"{value:,} {currency}"


@register.simple_tag
def security_settings_url():
    from console.tenancy import security_settings_url as url

    return url()


def _number(value: float) -> str:
    if value == int(value):
        return f"{int(value):,}"
    if abs(value) < 10:
        return f"{value:,.2f}"
    if abs(value) < 100:
        return f"{value:,.1f}"
    return f"{value:,.0f}"


@register.filter
def metric_value(value, unit=""):
    """A metric as the monitoring tab writes it: '3', '0.25 messages/s', '1.2 kB/s'; '—' for no sample."""
    if value is None:
        return "—"
    value = float(value)
    if unit == "bytes/s":
        for scale, name in ((1e9, "GB/s"), (1e6, "MB/s"), (1e3, "kB/s")):
            if abs(value) >= scale:
                return f"{value / scale:,.1f} {name}"
        return f"{value:,.0f} B/s"
    text = _number(value)
    return f"{text} {unit}" if unit.endswith("/s") else text


@register.filter
def metric_cell(value, unit=""):
    """A metric in a table whose caption names the unit: the bare number, bytes scaled with their unit."""
    if unit == "bytes/s" or value is None:
        return metric_value(value, unit)
    return _number(float(value))


@register.simple_tag
def silence_active(silence) -> bool:
    from django.utils import timezone

    return silence.starts_at <= timezone.now() < silence.ends_at


@register.simple_tag
def silence_state(silence):
    from django.utils import timezone

    now = timezone.now()
    if silence.ends_at <= now:
        return status_badge("ended", "ended")
    if silence.starts_at > now:
        return status_badge("scheduled", "scheduled")
    return status_badge("active", "active")
