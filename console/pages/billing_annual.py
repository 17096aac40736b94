"""Annual plans in the console: "Switch to annual" on a deployment (a quote from billing.annual, shown with its VAT,
saving and expiry, accepted in one click) and the organization's subscriptions with their renewal switch.

Every figure is the quote's or the subscription's as billing.annual stored it; this module computes none.
"""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from billing import annual
from billing.models import AnnualQuote, AnnualSubscription, SubscriptionStatus
from billing.tax import TaxTreatment
from console import errors, tenancy
from console.forms import ConsoleForm
from console.once import once
from console.pages.billing import TREATMENT_LABELS, _money, account_of, billing_console


class AcceptForm(ConsoleForm):
    auto_renew = forms.BooleanField(label="Renew automatically for another year at the end of the term", required=False)


def _quote_context(console, quote: AnnualQuote, form=None, stale: bool = False) -> dict:
    currency = quote.currency
    now = timezone.now()
    return {
        "console": console,
        "deployment": console.deployment,
        "tab": "overview",
        "quote": quote,
        "annual_price": _money(quote.annual_price, currency),
        "tax": _money(quote.tax, currency),
        "total": _money(quote.total, currency),
        "saving": _money(quote.saving, currency),
        "hourly_equivalent": _money(quote.hourly_equivalent, currency),
        "accrued": _money(quote.accrued_this_month, currency),
        "rate": f"{quote.tax_rate.normalize():f}",
        "treatment_label": TREATMENT_LABELS[TaxTreatment(quote.tax_treatment)],
        "expired": quote.expires_at <= now,
        "accepted": quote.accepted_at is not None,
        "form": form or AcceptForm(prefix="accept"),
        "stale": stale,
        "can_accept": console.can_in_project("deployment:annual"),
    }


@login_required
@require_POST
@once
def annual_quote_create(request, org_id, project_id, dep_id):
    console = tenancy.for_deployment(request, org_id, project_id, dep_id)
    console.require_in_project("deployment:annual")
    try:
        quote = annual.annual_quote_create(deployment=console.deployment, actor=console.principal)
    except errors.REFUSALS as exc:
        errors.to_page(request, exc)
        return redirect(tenancy.deployment_url(console.deployment))
    return redirect("console:deployment-annual-quote", org_id, project_id, dep_id, quote.public_id)


@login_required
@require_http_methods(["GET", "POST"])
@once
def annual_quote(request, org_id, project_id, dep_id, quote_id):
    console = tenancy.for_deployment(request, org_id, project_id, dep_id)
    console.require_in_project("deployment:annual")
    quote = (
        AnnualQuote.objects.select_related("tier", "subscription")
        .filter(deployment=console.deployment, public_id=quote_id)
        .first()
    )
    if quote is None:
        raise Http404("No such quote.")
    console.crumb("Switch to annual")
    if request.method == "GET":
        return render(request, "console/billing/annual_quote.html", _quote_context(console, quote))
    form = AcceptForm(request.POST, prefix="accept")
    status = 400
    if form.is_valid():
        try:
            subscription = annual.annual_quote_accept(
                quote=quote, actor=console.principal, auto_renew=form.cleaned_data["auto_renew"]
            )
        except errors.REFUSALS as exc:
            status = errors.explain(exc).status
            form.add_error(None, errors.explain(exc).messages)
            quote.refresh_from_db()
            return render(
                request,
                "console/billing/annual_quote.html",
                _quote_context(console, quote, form, stale=True),
                status=status,
            )
        messages.success(
            request,
            f"{console.deployment.name} is on an annual plan until {subscription.term_end:%Y-%m-%d}; "
            "its prepaid invoice is issued.",
        )
        if console.can("billing:read"):
            return redirect("console:billing-invoices", org_id=org_id)
        return redirect(tenancy.deployment_url(console.deployment))
    return render(request, "console/billing/annual_quote.html", _quote_context(console, quote, form), status=status)


# --- Subscriptions ---------------------------------------------------------------------------------------------


@login_required
@require_GET
def subscriptions(request, org_id):
    console = billing_console(request, org_id, "annual")
    account = account_of(console)
    rows = []
    for subscription in (
        AnnualSubscription.objects.filter(billing_account=account)
        .select_related("deployment__project", "tier__plan")
        .order_by("-term_start", "-id")[:200]
    ):
        deployment = subscription.deployment
        deployment.project.organization = console.organization
        rows.append(
            {
                "subscription": subscription,
                "deployment": deployment,
                "url": None if deployment.deleted_at else tenancy.deployment_url(deployment),
                "price": _money(subscription.annual_price, subscription.currency),
                "active": subscription.status == SubscriptionStatus.ACTIVE,
            }
        )
    context = {"console": console, "rows": rows, "can_write": console.can("billing:write")}
    return render(request, "console/billing/subscriptions.html", context)


@login_required
@require_POST
@once
def subscription_auto_renew(request, org_id, sub_id):
    console = billing_console(request, org_id, "annual")
    console.require("billing:write")
    subscription = AnnualSubscription.objects.filter(
        billing_account__organization=console.organization, public_id=sub_id
    ).first()
    if subscription is None:
        raise Http404("No such subscription.")
    wanted = request.POST.get("auto_renew") == "on"
    try:
        subscription = annual.annual_subscription_set_auto_renew(
            subscription=subscription, actor=console.principal, auto_renew=wanted
        )
    except errors.REFUSALS as exc:
        errors.to_page(request, exc)
    else:
        name = subscription.deployment.name
        messages.success(
            request,
            f"{name} renews for another year on {subscription.term_end:%Y-%m-%d}."
            if wanted
            else f"{name} returns to hourly billing on {subscription.term_end:%Y-%m-%d}.",
        )
    return redirect(reverse("console:billing-subscriptions", args=[org_id]))
