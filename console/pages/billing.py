"""The Billing section of the console: the overview (spend, forecast, credits, open invoices, spend by day, project
and deployment, a budget alert), the billing details with the VAT number's live status and the tax treatment that
follows, the card through Stripe Checkout in setup mode, and credits with coupon redemption.

Reads go through billing.selectors, writes through billing.services and alerts.rules, exactly as the API's; this
module computes no amount and decides no tax: it only shows what those return.
"""

from __future__ import annotations

import datetime
from urllib.parse import urlsplit

from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from alerts import rules as alert_rules
from alerts.metrics import SPEND_FORECAST, SPEND_MONTH_TO_DATE
from billing import invoicing, selectors, services
from billing.api import BillingAccountInputSerializer, CouponRedeemInputSerializer
from billing.money import to_decimal
from billing.tax import TaxTreatment, VatStatus, tax_id_country_mismatch, tax_treatment, validate_tax_id
from billing.vat_rates import normalize_country
from console import errors, tenancy
from console.forms import ApiForm, ConsoleForm
from console.once import once
from console.once import posted as _posted
from console.templatetags.console import money_minor
from deployments.models import Deployment
from projects.models import Project

TABS = (
    ("overview", "Overview", "console:billing"),
    ("details", "Details and card", "console:billing-details"),
    ("invoices", "Invoices", "console:billing-invoices"),
    ("annual", "Annual plans", "console:billing-subscriptions"),
    ("credits", "Credits and coupons", "console:billing-credits"),
)


def billing_console(request, org_id: str, tab: str):
    """The console of a billing page: billing:read or a 403 (a Project User has no Billing link either)."""
    console = tenancy.for_organization(request, org_id, section="billing")
    console.require("billing:read")
    console.crumb("Billing", reverse("console:billing", args=[org_id]))
    label = dict((key, name) for key, name, _ in TABS)[tab]
    if tab != "overview":
        console.crumb(label)
    console.tabs = [(key, name, reverse(url, args=[org_id]), key == tab) for key, name, url in TABS]
    return console


def account_of(console):
    account = selectors.billing_account_for(organization=console.organization)
    account.organization = console.organization
    return account


def _money(minor: int, currency: str) -> str:
    return money_minor(minor, currency)


# --- Overview ------------------------------------------------------------------------------------------------------


class BudgetForm(ConsoleForm):
    metric = forms.ChoiceField(
        label="Tell me when",
        choices=[(SPEND_MONTH_TO_DATE, "this month's spend passes"), (SPEND_FORECAST, "this month's forecast passes")],
    )
    budget_amount = forms.CharField(label="Amount", max_length=20, help_text="In the billing currency, e.g. 250.00.")

    def __init__(self, *args, currency: str = "USD", **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["budget_amount"].label = f"Amount ({currency})"


def _spend_tables(account, breakdown):
    deployment_ids = [row.key for row in breakdown.by_deployment]
    found = {
        d.pk: d for d in Deployment.objects.filter(pk__in=deployment_ids).select_related("project", "tier", "plan")
    }
    projects = {p.pk: p for p in Project.objects.filter(pk__in=[row.key for row in breakdown.by_project])}
    by_deployment = []
    for row in breakdown.by_deployment:
        deployment = found[row.key]
        deployment.project.organization = account.organization
        by_deployment.append(
            {
                "deployment": deployment,
                "url": None if deployment.deleted_at else tenancy.deployment_url(deployment),
                "amount": _money(row.amount, account.currency),
            }
        )
    by_project = [
        {"project": projects[row.key], "amount": _money(row.amount, account.currency)} for row in breakdown.by_project
    ]
    return by_deployment, by_project


def _budget_allowed(console) -> bool:
    # The API's rule: creating an alert rule needs deployment:configure on the project, and a budget billing:read.
    home = console.home_project
    return home is not None and console.can("billing:read") and console.can_in_project("deployment:configure", home)


def _overview_context(console, account, budget_form=None):
    now = timezone.now()
    breakdown = selectors.spend_breakdown(account=account, now=now)
    overview = selectors.billing_overview(account=account, now=now, spend=breakdown.spend)
    by_deployment, by_project = _spend_tables(account, breakdown)
    currency = overview.currency
    days = [(day, to_decimal(amount, currency)) for day, amount in breakdown.by_day]
    allowed = _budget_allowed(console)
    budgets = []
    if console.home_project is not None:
        from alerts.models import AlertRule

        budgets = [
            {"rule": rule, "amount": _money(rule.budget_minor, rule.budget_currency)}
            for rule in AlertRule.objects.filter(
                organization=console.organization, kind=AlertRule.Kind.BUDGET
            ).order_by("name", "id")[:20]
        ]
    return {
        "console": console,
        "account": account,
        "overview": overview,
        "month_to_date": _money(overview.month_to_date, currency),
        "forecast": _money(overview.forecast, currency),
        "credit_balance": _money(overview.credit_balance, currency),
        "open_amount": _money(overview.open_amount, currency),
        "days": days,
        "chart_days": ",".join(f"{day:%Y-%m-%d}" for day, _ in days),
        "chart_amounts": ",".join(f"{amount:f}" for _, amount in days),
        "by_deployment": by_deployment,
        "by_project": by_project,
        "budget_form": budget_form or (BudgetForm(currency=currency, prefix="budget") if allowed else None),
        "budget_allowed": allowed,
        "budgets": budgets,
        "month": overview.month_start,
        "missing": [name.replace("_", " ") for name in overview.missing_details],
        "late_invoices": [
            {
                "month": late.month,
                "amount": _money(late.subtotal, currency),
                "treatment": TREATMENT_LABELS[TaxTreatment(late.tax_treatment)],
                "rate": f"{late.tax_rate.normalize():f}",
            }
            for late in overview.late_usage_invoices
        ],
    }


@login_required
@require_GET
def overview(request, org_id):
    console = billing_console(request, org_id, "overview")
    account = account_of(console)
    return render(request, "console/billing/overview.html", _overview_context(console, account))


@login_required
@require_POST
@once
def budget_create(request, org_id):
    console = billing_console(request, org_id, "overview")
    account = account_of(console)
    if not _budget_allowed(console):
        console.require_in_project("deployment:configure", console.home_project)
    form = BudgetForm(request.POST, currency=account.currency, prefix="budget")
    status = 400
    if form.is_valid():
        metric = form.cleaned_data["metric"]
        amount = form.cleaned_data["budget_amount"].strip()
        words = "spend" if metric == SPEND_MONTH_TO_DATE else "forecast"
        try:
            alert_rules.alert_rule_create(
                project=console.home_project,
                actor=console.principal,
                name=f"Monthly {words} above {amount} {account.currency}"[:100],
                kind="budget",
                metric=metric,
                operator=">",
                budget_scope="organization",
                budget_amount=amount,
            )
        except errors.REFUSALS as exc:
            status = errors.to_form(form, exc)
        else:
            messages.success(
                request, f"Budget alert set: you are told when this month's {words} passes {amount} {account.currency}."
            )
            return redirect("console:billing", org_id=org_id)
    context = _overview_context(console, account, budget_form=form)
    return render(request, "console/billing/overview.html", context, status=status)


# --- Details, VAT number and card ----------------------------------------------------------------------------------


class BillingDetailsForm(ApiForm):
    serializer_class = BillingAccountInputSerializer

    country = forms.CharField(
        label="Country", max_length=2, help_text="Two-letter ISO code: FR for France, FI for Finland, US…"
    )
    company = forms.CharField(label="Company", max_length=200, required=False, help_text="Empty for a private person.")
    email = forms.EmailField(label="Billing email", max_length=254, help_text="Invoices and reminders go there.")
    address = forms.CharField(label="Street address", max_length=200, required=False)
    postal_code = forms.CharField(label="Postal code", max_length=20, required=False)
    city = forms.CharField(label="City", max_length=100, required=False)
    state = forms.CharField(label="State or region", max_length=100, required=False)
    tax_id = forms.CharField(
        label="VAT or GST number",
        max_length=40,
        required=False,
        help_text="With its country prefix in the EU (FR40303265045); the EIN in the US.",
    )

    def __init__(self, *args, check_url: str = "", **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["country"].widget.attrs.update({"autocomplete": "country", "class": "short"})
        self.fields["email"].widget.attrs["autocomplete"] = "email"
        self.fields["address"].widget.attrs["autocomplete"] = "street-address"
        self.fields["postal_code"].widget.attrs["autocomplete"] = "postal-code"
        self.fields["city"].widget.attrs["autocomplete"] = "address-level2"
        self.fields["state"].widget.attrs["autocomplete"] = "address-level1"
        self.fields["company"].widget.attrs["autocomplete"] = "organization"
        live = {
            "hx-get": check_url,
            "hx-trigger": "input changed delay:300ms",
            "hx-target": "#vat-check",
            "hx-swap": "innerHTML",
            "hx-include": "#id_details-country, #id_details-tax_id, #id_details-company",
            "aria-describedby": "vat-check",
        }
        for name in ("tax_id", "country", "company"):
            self.fields[name].widget.attrs.update(live)
        self.fields["tax_id"].widget.attrs["autocomplete"] = "off"


def _treatment_sentence(treatment: str, rate, country: str) -> str:
    percent = f"{rate.normalize():f} %"
    seller = settings.SELLER_COUNTRY
    return {
        TaxTreatment.DOMESTIC: f"You are billed in the seller's own country ({seller}): invoices charge {seller} "
        f"VAT at {percent}.",
        TaxTreatment.REVERSE_CHARGE: "VIES confirmed the VAT number of a business in another EU member state: "
        "invoices carry no VAT and you account for it yourself (reverse charge, Article 196 of the VAT Directive).",
        TaxTreatment.EU_CONSUMER: f"Without a VAT number confirmed by VIES you are billed as a consumer in {country}: "
        f"invoices charge {country} VAT at {percent}.",
        TaxTreatment.OUTSIDE_SCOPE: "Your billing country is outside the EU: invoices carry no VAT (outside the "
        "scope of EU VAT).",
    }[TaxTreatment(treatment)]


TREATMENT_LABELS = {
    TaxTreatment.DOMESTIC: "Domestic VAT",
    TaxTreatment.REVERSE_CHARGE: "Reverse charge",
    TaxTreatment.EU_CONSUMER: "EU consumer VAT",
    TaxTreatment.OUTSIDE_SCOPE: "Outside the scope of VAT",
}
VAT_LABELS = {
    VatStatus.NONE: ("No number", "neutral"),
    VatStatus.FORMAT_VALID: ("Format valid, waiting for VIES", "busy"),
    VatStatus.VALID: ("Confirmed by VIES", "ok"),
    VatStatus.INVALID: ("Not valid", "bad"),
}


def _vat_context(console, account) -> dict:
    """The saved number's status and the treatment of the next invoice (billing.invoicing.tax_decision, as the API
    serializer shows it); polled while VIES has not answered."""
    decision = invoicing.tax_decision(account, timezone.now().date())
    label, tone = VAT_LABELS.get(VatStatus(account.vat_status), (account.vat_status, "neutral"))
    country = account.country or settings.SELLER_COUNTRY
    return {
        "console": console,
        "account": account,
        "vat_label": label,
        "vat_tone": tone,
        "waiting": account.vat_status == VatStatus.FORMAT_VALID and account.vat_next_check_at is not None,
        "treatment": decision.treatment.value,
        "treatment_label": TREATMENT_LABELS[decision.treatment],
        "treatment_sentence": _treatment_sentence(decision.treatment, decision.rate, country),
        "rate": f"{decision.rate.normalize():f}",
    }


def _card_context(account) -> dict:
    enabled = bool(settings.STRIPE_SECRET_KEY)
    return {"cards_enabled": enabled, "card": services.card_on_file(account=account) if enabled else None}


def _checkout_origins() -> str:
    """Where the card form may send the browser: Stripe's hosted Checkout, or the configured API base's host when
    Checkout is served there (a stand-in in tests)."""
    origins = ["https://checkout.stripe.com"]
    if settings.STRIPE_API_BASE:
        parts = urlsplit(settings.STRIPE_API_BASE)
        origins.append(f"{parts.scheme}://{parts.netloc}")
    return " ".join(origins)


def _with_checkout_csp(response):
    policy = settings.CONTENT_SECURITY_POLICY
    if policy and settings.STRIPE_SECRET_KEY and "form-action 'self'" in policy:
        response["Content-Security-Policy"] = policy.replace(
            "form-action 'self'", f"form-action 'self' {_checkout_origins()}"
        )
    return response


def _details_initial(account) -> dict:
    return {name: getattr(account, name) for name in ("country", "company", "email", "address", "city", "state")} | {
        "postal_code": account.postal_code,
        "tax_id": account.tax_id,
    }


@login_required
@require_http_methods(["GET", "POST"])
@once
def details(request, org_id):
    console = billing_console(request, org_id, "details")
    account = account_of(console)
    check_url = reverse("console:billing-vat-check", args=[org_id])
    form = BillingDetailsForm(
        _posted(request), initial=_details_initial(account), prefix="details", check_url=check_url
    )
    status = 200
    if request.method == "POST":
        console.require("billing:write")
        if form.is_valid():
            values = form.validated
            try:
                services.billing_account_update(
                    account=account,
                    actor=console.principal,
                    country=values["country"],
                    company=values.get("company", ""),
                    email=values["email"],
                    address=values.get("address", ""),
                    city=values.get("city", ""),
                    state=values.get("state", ""),
                    postal_code=values.get("postal_code", ""),
                    tax_id=values.get("tax_id", ""),
                )
            except errors.REFUSALS as exc:
                status = errors.to_form(form, exc)
            else:
                messages.success(request, "Billing details saved.")
                return redirect("console:billing-details", org_id=org_id)
        else:
            status = 400
        account = account_of(console)  # nothing was saved: show what is in force
    # The saved number's status has its own panel: the preview is of what is typed and not saved yet.
    preview = (
        _vat_preview(
            form.data.get("details-country", ""),
            form.data.get("details-tax_id", ""),
            form.data.get("details-company", ""),
            account=account,
        )
        if form.is_bound
        else None
    )
    context = {
        **_vat_context(console, account),
        **_card_context(account),
        "form": form,
        "can_write": console.can("billing:write"),
        "preview": preview,
        "missing": _missing(account),
    }
    return _with_checkout_csp(render(request, "console/billing/details.html", context, status=status))


def _missing(account) -> list[str]:
    from billing.models import missing_address_fields

    return missing_address_fields(account)


def _vat_preview(country: str, tax_id: str, company: str, *, account) -> dict | None:
    """The format check of what is typed, at once, and the treatment it would get before VIES has answered. The
    checks are billing.tax's own; nothing is saved. The saved number itself is described by its own panel."""
    country = normalize_country(country or "")
    tax_id = (tax_id or "").strip()
    if not tax_id or len(country) != 2 or not country.isalpha() or len(tax_id) > 40:
        return None
    mismatch = tax_id_country_mismatch(country, tax_id)
    if mismatch:
        return {"ok": False, "message": mismatch}
    check = validate_tax_id(country, tax_id)
    if (country, check.normalized or tax_id) == (account.country, account.tax_id):
        return None
    if check.status == VatStatus.INVALID:
        return {"ok": False, "message": check.message}
    decision = tax_treatment(
        seller_country=settings.SELLER_COUNTRY,
        customer_country=country,
        is_business=bool(company.strip()),  # as BillingAccount.is_business: a company name makes a business
        vat_status=check.status,
        on=timezone.now().date(),
        tax_id=check.normalized or tax_id,
    )
    waiting = check.status == VatStatus.FORMAT_VALID
    message = check.message
    if waiting:
        message = f"{check.normalized or tax_id}: format and checksum are valid. VIES confirms it after you save."
    return {
        "ok": True,
        "message": message,
        "treatment_label": TREATMENT_LABELS[decision.treatment],
        "sentence": _treatment_sentence(decision.treatment, decision.rate, country),
        "until_vies": waiting and decision.treatment == TaxTreatment.EU_CONSUMER,
    }


@login_required
@require_GET
def vat_check(request, org_id):
    """htmx: the live format check of the number being typed (before it is saved)."""
    console = billing_console(request, org_id, "details")
    preview = _vat_preview(
        request.GET.get("details-country", "")[:10],
        request.GET.get("details-tax_id", "")[:60],
        request.GET.get("details-company", "")[:200],
        account=account_of(console),
    )
    return render(request, "console/billing/_vat_check.html", {"console": console, "preview": preview})


@login_required
@require_GET
def vat_status(request, org_id):
    """htmx: the saved number's status, polled until VIES has answered."""
    console = billing_console(request, org_id, "details")
    return render(request, "console/billing/_vat_status.html", _vat_context(console, account_of(console)))


@login_required
@require_POST
@once
def card_checkout(request, org_id):
    """Send the browser to Stripe Checkout in setup mode; it comes back to card_return."""
    console = billing_console(request, org_id, "details")
    console.require("billing:write")
    account = account_of(console)
    back = request.build_absolute_uri(reverse("console:billing-card-return", args=[org_id]))
    cancel = request.build_absolute_uri(reverse("console:billing-details", args=[org_id]))
    try:
        url = services.card_checkout_session_create(
            account=account,
            actor=console.principal,
            success_url=f"{back}?session_id={{CHECKOUT_SESSION_ID}}",
            cancel_url=f"{cancel}#card-heading",
        )
    except errors.REFUSALS as exc:
        errors.to_page(request, exc)
        return redirect("console:billing-details", org_id=org_id)
    return redirect(url)


@login_required
@require_GET
def card_return(request, org_id):
    """Back from Checkout: the card the session saved becomes the default (the webhook may have done it first)."""
    console = billing_console(request, org_id, "details")
    console.require("billing:write")
    account = account_of(console)
    try:
        saved = services.card_checkout_complete(
            account=account, actor=console.principal, session_id=request.GET.get("session_id", "")
        )
    except errors.REFUSALS as exc:
        errors.to_page(request, exc)
    else:
        if saved:
            messages.success(request, "Card saved: it pays your invoices from now on.")
        else:
            messages.warning(request, "Stripe has not confirmed the card yet; it appears here once it does.")
    return redirect(reverse("console:billing-details", args=[org_id]) + "#card-heading")


# --- Credits and coupons -------------------------------------------------------------------------------------------


class CouponForm(ApiForm):
    serializer_class = CouponRedeemInputSerializer
    code = forms.CharField(label="Coupon code", max_length=40)


def _credits_context(console, account, form):
    now = timezone.now()
    grants = list(selectors.credit_list(account=account).order_by("-granted_at", "-id")[:200])
    rows = [
        {
            "grant": grant,
            "amount": _money(grant.amount, grant.currency),
            "remaining": _money(grant.remaining, grant.currency),
            "expired": grant.expires_at is not None and grant.expires_at <= now,
            "soon": grant.expires_at is not None and now < grant.expires_at <= now + datetime.timedelta(days=30),
        }
        for grant in grants
    ]
    return {
        "console": console,
        "rows": rows,
        "balance": _money(selectors.credit_balance(account=account, at=now), account.currency),
        "form": form,
        "can_write": console.can("billing:write"),
    }


@login_required
@require_http_methods(["GET", "POST"])
@once
def credits(request, org_id):
    console = billing_console(request, org_id, "credits")
    account = account_of(console)
    form = CouponForm(_posted(request), prefix="coupon")
    status = 200
    if request.method == "POST":
        console.require("billing:write")
        if form.is_valid():
            try:
                grant = services.coupon_redeem(account=account, actor=console.principal, code=form.validated["code"])
            except errors.REFUSALS as exc:
                status = errors.to_form(form, exc)
            else:
                messages.success(request, f"Coupon redeemed: {_money(grant.amount, grant.currency)} of credit added.")
                return redirect("console:billing-credits", org_id=org_id)
        else:
            status = 400
    return render(request, "console/billing/credits.html", _credits_context(console, account, form), status=status)
