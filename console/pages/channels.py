"""Notification channels in the console: create email, webhook, Slack and PagerDuty channels (a webhook's signing
secret shown once), switch them on and off, send a test and watch its result arrive on the page, and read the
delivery history with every attempt's status code.

Every write calls notifications.services after the scope check the API makes (channel:read, channel:write). A new
secret travels from the POST to the page that shows it through the session, popped on display.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from console import errors, shown_once, tenancy
from console.alert_forms import ChannelForm
from console.once import once
from console.once import posted as _posted
from console.pages.alerts import alert_projects
from notifications import selectors as notification_selectors
from notifications import services as notification_services
from notifications.models import Delivery, NotificationChannel

SECRET_SESSION_KEY = "console_new_channel_secret"
DELIVERIES_SHOWN = 50
TEST_PATIENCE_SECONDS = 60


def _console(request, org_id):
    console = tenancy.for_organization(request, org_id, section="alerts")
    console.require("channel:read")
    return console


def _channel(console, channel_id) -> NotificationChannel:
    channel = NotificationChannel.objects.filter(organization=console.organization, public_id=channel_id).first()
    if channel is None:
        raise Http404("No such notification channel.")
    channel.organization = console.organization
    return channel


def _tabs(console) -> dict:
    projects = alert_projects(console)
    home = console.home_project
    return {"tab": "channels", "rules_project": home if home in projects else (projects[0] if projects else None)}


@login_required
@require_http_methods(["GET", "POST"])
@once
def channels(request, org_id):
    console = _console(request, org_id)
    console.crumb("Alerts", reverse("console:alerts", args=[org_id])).crumb("Notification channels")
    can_write = console.can("channel:write")
    form = ChannelForm(_posted(request), initial={"is_default": True, "platform_events": True}, prefix="new")
    status = 200
    if request.method == "POST":
        console.require("channel:write")
        status = 400
        if form.is_valid():
            config = form.config()
            if not form.errors:
                try:
                    channel, secret = notification_services.channel_create(
                        organization=console.organization,
                        actor=console.principal,
                        name=form.cleaned_data["name"],
                        type=form.cleaned_data["type"],
                        config=config,
                        is_default=form.cleaned_data["is_default"],
                        platform_events=form.cleaned_data["platform_events"],
                    )
                except errors.REFUSALS as exc:
                    status = errors.to_form(form, exc, aliases=form.field_aliases())
                else:
                    if secret:
                        shown_once.keep(
                            request.session, SECRET_SESSION_KEY, {"channel": channel.public_id, "secret": secret}
                        )
                    messages.success(request, f"Channel “{channel.name}” created.")
                    return redirect("console:channel", org_id=org_id, channel_id=channel.public_id)
    context = {
        "console": console,
        "channels": list(notification_selectors.channel_list(organization=console.organization).order_by("name")),
        "form": form,
        "can_write": can_write,
        **_tabs(console),
    }
    return render(request, "console/alerts/channels.html", context, status=status)


@login_required
@require_http_methods(["GET", "POST"])
@once
def channel(request, org_id, channel_id):
    """The channel, its switches, the test button and its delivery history. POST changes the switches."""
    console = _console(request, org_id)
    found = _channel(console, channel_id)
    if request.method == "POST":
        console.require("channel:write")
        changes = {
            field: request.POST.get(field) == "on"
            for field in ("enabled", "is_default", "platform_events")
            if field in request.POST
        }
        try:
            found = notification_services.channel_update(channel=found, actor=console.principal, **changes)
        except errors.REFUSALS as exc:
            errors.to_page(request, exc)
        else:
            messages.success(request, f"Channel “{found.name}” saved.")
        return redirect("console:channel", org_id=org_id, channel_id=channel_id)
    console.crumb("Alerts", reverse("console:alerts", args=[org_id]))
    console.crumb("Notification channels", reverse("console:channels", args=[org_id])).crumb(found.name)
    shown = shown_once.peek(request.session, SECRET_SESSION_KEY)
    if shown and shown.get("channel") == found.public_id:
        shown_once.take(request.session, SECRET_SESSION_KEY)
    else:
        shown = None
    deliveries = list(notification_selectors.delivery_list(channel=found)[:DELIVERIES_SHOWN])
    context = {
        "console": console,
        "channel": found,
        "secret": shown and shown["secret"],
        "deliveries": deliveries,
        "limit": DELIVERIES_SHOWN,
        "history_days": settings.NOTIFICATION_HISTORY_DAYS,
        "can_write": console.can("channel:write"),
        **_tabs(console),
    }
    return render(request, "console/alerts/channel.html", context)


@login_required
@require_POST
@once
def channel_test(request, org_id, channel_id):
    """Send a test through the channel. With htmx the answer is the test's result, which polls itself until the
    worker has delivered (or given up); without, the page comes back with the test in its history."""
    console = _console(request, org_id)
    console.require("channel:write")
    found = _channel(console, channel_id)
    try:
        delivery = notification_services.channel_test(channel=found, actor=console.principal)
    except errors.REFUSALS as exc:
        if request.headers.get("HX-Request"):
            explained = errors.explain(exc)
            return render(
                request,
                "console/alerts/_test_result.html",
                {"console": console, "channel": found, "error": explained.text},
                status=explained.status,
            )
        errors.to_page(request, exc)
        return redirect("console:channel", org_id=org_id, channel_id=channel_id)
    if request.headers.get("HX-Request"):
        return _test_result(request, console, found, delivery)
    messages.info(request, "Test sent: its result appears in the delivery history below.")
    return redirect("console:channel", org_id=org_id, channel_id=channel_id)


def _test_result(request, console, channel, delivery):
    delivery = notification_selectors.delivery_list(channel=channel).get(pk=delivery.pk)
    attempts = list(delivery.attempt_rows.all())
    # Not picked up for a while (the task queue down): stop polling and say where the result will appear; the
    # notifications sweep sends what was never enqueued.
    stalled = (
        delivery.status == Delivery.Status.PENDING
        and not attempts
        and (timezone.now() - delivery.created_at).total_seconds() > TEST_PATIENCE_SECONDS
    )
    context = {
        "console": console,
        "channel": channel,
        "delivery": delivery,
        "last": attempts[-1] if attempts else None,
        "done": delivery.status in (Delivery.Status.SUCCEEDED, Delivery.Status.FAILED) or stalled,
        "stalled": stalled,
    }
    return render(request, "console/alerts/_test_result.html", context)


@login_required
@require_GET
def delivery_status(request, org_id, channel_id, delivery_id):
    console = _console(request, org_id)
    found = _channel(console, channel_id)
    delivery = Delivery.objects.filter(channel=found, public_id=delivery_id).first()
    if delivery is None:
        raise Http404("No such delivery.")
    return _test_result(request, console, found, delivery)


@login_required
@require_POST
@once
def channel_delete(request, org_id, channel_id):
    console = _console(request, org_id)
    console.require("channel:write")
    found = _channel(console, channel_id)
    try:
        notification_services.channel_delete(channel=found, actor=console.principal)
    except errors.REFUSALS as exc:
        errors.to_page(request, exc)
        return redirect("console:channel", org_id=org_id, channel_id=channel_id)
    messages.success(request, f"Channel “{found.name}” deleted.")
    return redirect("console:channels", org_id=org_id)
