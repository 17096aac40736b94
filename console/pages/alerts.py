"""Alerts in the console: the organization's alerts (filter, acknowledge with a comment), a project's alert rules
(each deployment's defaults and the user's own threshold and budget rules: create, edit, enable/disable, delete)
and its silences.

Every write calls the service the API calls, after the same scope checks the API's viewsets make (a budget rule also
needs billing:read; routing a rule to channels needs channel:read). What a service refuses is shown beside the
field. Members with a project role see the alerts of their projects only, and, as in the API, acknowledge none.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db.models import Case, IntegerField, Value, When
from django.http import Http404
from django.middleware.csrf import get_token
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from alerts import rules as rule_services
from alerts import selectors as alert_selectors
from alerts.models import Alert, AlertRule, AlertStatus, Severity, Silence
from billing.money import to_decimal
from console import errors, selectors, tenancy
from console.alert_forms import (
    ACKNOWLEDGE_FOR,
    AcknowledgeForm,
    BudgetRuleEditForm,
    BudgetRuleForm,
    SilenceForm,
    ThresholdRuleEditForm,
    ThresholdRuleForm,
)
from console.once import FORM_KEY, once
from console.once import posted as _posted
from console.templatetags import console as tags
from controlplane.errors import PermissionDenied
from deployments.models import DesiredState
from notifications import selectors as notification_selectors

SHOWN = 200
STATUS_ORDER = Case(
    When(status=AlertStatus.FIRING, then=Value(0)),
    When(status=AlertStatus.PENDING, then=Value(1)),
    default=Value(2),
    output_field=IntegerField(),
)


def alert_projects(console) -> list:
    """The projects whose alerts the caller may read: all of them with an organization role that reads alerts,
    else those where a project role does."""
    if console.can("alert:read"):
        return console.projects
    return [p for p in console.projects if console.can_in_project("alert:read", p)]


def _require_alerts(console) -> list:
    projects = alert_projects(console)
    if not projects:
        console.require("alert:read")
    return projects


# --- The organization's alerts ------------------------------------------------------------------------------------


@dataclass
class AlertRow:
    """What the table shows of an alert: its subject, and value against threshold in the rule's terms."""

    alert: Alert
    subject_kind: str
    subject_name: str
    subject_url: str | None
    value_text: str
    threshold_text: str
    can_acknowledge: bool
    # Written once per row in Python rather than by template tags: a hundred rows of tags were most of the time.
    severity_badge: str = ""
    status_badge: str = ""
    acknowledge_url: str = ""
    post_guard: str = ""
    since_iso: str = ""
    since_text: str = ""


class _Urls:
    """reverse() once per project for the links of a table's rows (a hundred reverses were a tenth of the page):
    the deployment's public id, the only part that changes, is put in place of a placeholder no id can contain."""

    PLACEHOLDER = "DEPLOYMENT-ID"

    def __init__(self) -> None:
        self.found: dict[tuple[str, str, str], str] = {}

    def get(self, name: str, org_id: str, project_id: str, deployment_id: str | None = None) -> str:
        key = (name, org_id, project_id)
        if key not in self.found:
            args = [org_id, project_id] + ([self.PLACEHOLDER] if deployment_id is not None else [])
            self.found[key] = reverse(name, args=args)
        url = self.found[key]
        return url if deployment_id is None else url.replace(self.PLACEHOLDER, deployment_id)


def _describe(alert: Alert, deployments: dict, *, can_acknowledge: bool, urls: _Urls | None = None) -> AlertRow:
    rule = alert.rule
    urls = urls or _Urls()
    deployment = deployments.get(alert.deployment_id) or alert.deployment if alert.deployment_id else None
    url: str | None
    if deployment is not None:
        kind, name = "Deployment", deployment.name
        url = (
            urls.get(
                "console:deployment-monitoring",
                alert.organization.public_id,
                alert.project.public_id,
                deployment.public_id,
            )
            if deployment.desired_state != DesiredState.DELETED
            else None
        )
    elif rule.budget_scope == AlertRule.BudgetScope.ORGANIZATION:
        kind, name, url = "Organization", alert.organization.name, None
    else:
        kind, name = "Project", alert.project.name
        url = urls.get("console:project", alert.organization.public_id, alert.project.public_id)
    if rule.kind == AlertRule.Kind.BUDGET and alert.budget_minor is not None:
        spend = "—" if alert.spend_minor is None else f"{to_decimal(alert.spend_minor, alert.currency):,}"
        value = f"{spend} {alert.currency}"
        threshold = f"{rule.operator} {to_decimal(alert.budget_minor, alert.currency):,} {alert.currency}"
    else:
        value = "—" if alert.value is None else f"{alert.value:,.4g}"
        threshold = "" if alert.threshold is None else f"{rule.operator} {alert.threshold:,.4g}"
    return AlertRow(alert, kind, name, url, value, threshold, can_acknowledge)


@login_required
@require_GET
def alerts(request, org_id):
    console = tenancy.for_organization(request, org_id, section="alerts")
    projects = _require_alerts(console)
    console.crumb("Alerts")
    by_id = {p.public_id: p for p in projects}
    status = request.GET.get("status", "")
    severity = request.GET.get("severity", "")
    project = request.GET.get("project", "")
    queryset = alert_selectors.alert_table(organization=console.organization).filter(
        project__in=[p.pk for p in projects]
    )
    if not console.can("billing:read"):
        # A budget alert tells the month's spend: as in the API, it is for those who may read billing.
        queryset = queryset.exclude(rule__kind=AlertRule.Kind.BUDGET)
    if status in AlertStatus.values:
        queryset = queryset.filter(status=status)
    if severity in Severity.values:
        queryset = queryset.filter(severity=severity)
    if project in by_id:
        queryset = queryset.filter(project=by_id[project])
    found = list(queryset.annotate(rank=STATUS_ORDER).order_by("rank", "-since", "-id")[: SHOWN + 1])
    deployments = selectors.deployments_by_pk([a.deployment_id for a in found if a.deployment_id])
    projects_by_pk = {p.pk: p for p in projects}
    # As the API: acknowledging is an organization-level act (deployment:configure on the organization); members
    # with only project roles read their projects' alerts here but acknowledge none.
    configurable = {p.pk for p in projects} if console.can("deployment:configure") else set()
    # One reverse for every row's acknowledge URL: the alert's public id (lower case) is the only part that changes.
    acknowledge_url = reverse("console:alert-acknowledge", args=[console.organization.public_id, "ALERT-ID"])
    # The hidden fields of {% post_guard %}: one masked CSRF token serves every form of the page (masking it anew
    # per form costs a hundred random strings), and each form still gets its own key against a double submit.
    token = get_token(request)
    urls = _Urls()
    rows = []
    for alert in found[:SHOWN]:
        alert.project = projects_by_pk[alert.project_id]
        alert.organization = console.organization
        firing = alert.status == AlertStatus.FIRING
        row = _describe(alert, deployments, can_acknowledge=firing and alert.project_id in configurable, urls=urls)
        row.severity_badge = tags.severity_badge(alert.severity)
        row.status_badge = tags.status_badge(alert.status)
        since = timezone.localtime(alert.since)
        row.since_iso, row.since_text = since.isoformat(), since.strftime("%Y-%m-%d %H:%M")
        if row.can_acknowledge:
            row.acknowledge_url = acknowledge_url.replace("ALERT-ID", alert.public_id)
            row.post_guard = format_html(
                '<input type="hidden" name="csrfmiddlewaretoken" value="{}"><input type="hidden" name="{}" value="{}">',
                token,
                FORM_KEY,
                uuid.uuid4().hex,
            )
        rows.append(row)
    default_duration = AcknowledgeForm.base_fields["duration"].initial
    context = {
        "console": console,
        "rows": rows,
        "more": len(found) > SHOWN,
        "limit": SHOWN,
        "projects": projects,
        "statuses": AlertStatus.choices,
        "severities": Severity.choices,
        "chosen": {"status": status, "severity": severity, "project": project},
        "filtered": bool(status or severity or project),
        # The acknowledge form of each row is written out in the template, not rendered by Django's widgets: a
        # hundred forms' widgets were most of the page's time. Its POST is validated by AcknowledgeForm.
        "acknowledge_options": format_html_join(
            "",
            '<option value="{}"{}>{}</option>',
            (
                (seconds, " selected" if seconds == default_duration else "", label)
                for seconds, label in ACKNOWLEDGE_FOR
            ),
        ),
        "filters": request.GET.urlencode(),
        "tab": "alerts",
        "rules_project": console.home_project if console.home_project in projects else projects[0],
    }
    return render(request, "console/alerts/list.html", context)


@login_required
@require_POST
@once
def alert_acknowledge(request, org_id, alert_id):
    console = tenancy.for_organization(request, org_id, section="alerts")
    projects = {p.pk: p for p in _require_alerts(console)}
    alert = Alert.objects.filter(organization=console.organization, public_id=alert_id).select_related("rule").first()
    if alert is None or alert.project_id not in projects:
        raise Http404("No such alert.")
    console.require("deployment:configure")
    form = AcknowledgeForm(request.POST, prefix=alert.public_id)
    back = reverse("console:alerts", args=[org_id])
    query = request.POST.get("filters", "")
    if query and query.isprintable() and len(query) < 200:
        back = f"{back}?{query}"
    if not form.is_valid():
        for message in [m for values in form.errors.values() for m in values]:
            messages.error(request, f"“{alert.rule.name}” not acknowledged: {message}")
        return redirect(back)
    try:
        rule_services.alert_acknowledge(
            alert=alert, actor=console.principal, until=form.until(), comment=form.cleaned_data["comment"]
        )
    except errors.REFUSALS as exc:
        errors.to_page(request, exc)
    else:
        messages.success(request, f"“{alert.rule.name}” acknowledged: repeat notifications are withheld meanwhile.")
    return redirect(back)


# --- A project's rules and silences -------------------------------------------------------------------------------

_AGGREGATION_WORDS = {"avg": "average", "max": "maximum", "min": "minimum", "sum": "sum", "last": "last value"}


def _duration(seconds: int | None) -> str:
    if not seconds:
        return "0 s"
    if seconds % 3600 == 0:
        hours = seconds // 3600
        return f"{hours} hour{'s' if hours != 1 else ''}"
    if seconds % 60 == 0:
        minutes = seconds // 60
        return f"{minutes} minute{'s' if minutes != 1 else ''}"
    return f"{seconds} s"


def _bytes(amount: float) -> str:
    for scale, unit in ((1024**4, "TiB"), (1024**3, "GiB"), (1024**2, "MiB"), (1024, "KiB")):
        if amount >= scale:
            return f"{amount / scale:,.4g} {unit}"
    return f"{amount:,.0f} bytes"


def rule_condition(rule: AlertRule) -> str:
    """A rule's condition in words: "average of connections over 5 minutes > 80 % of the tier's limit, for 5 min"."""
    if rule.kind == AlertRule.Kind.BUDGET:
        what = "this month's spend so far" if rule.metric == "spend_month_to_date" else "this month's forecast spend"
        amount = to_decimal(rule.budget_minor, rule.budget_currency) if rule.budget_minor else "—"
        return f"{what} {rule.operator} {amount:,} {rule.budget_currency} ({rule.get_budget_scope_display().lower()})"
    if rule.kind == AlertRule.Kind.CERTIFICATE_EXPIRY:
        return f"a TLS certificate of the deployment expires in {rule.operator} {rule.threshold:g} days"
    if rule.kind == AlertRule.Kind.VPC_PEERING:
        return "a VPC peering of the deployment is failed or abnormal"
    if rule.kind == AlertRule.Kind.DEPLOYMENT_UNAVAILABLE:
        held = f" for {_duration(rule.for_seconds)}" if rule.for_seconds else ""
        return f"the broker is degraded or does not answer the collector{held}"
    if rule.kind != AlertRule.Kind.METRIC:
        return f"{rule.get_kind_display()}: {rule.operator} {rule.threshold:g}"
    if rule.aggregation == "count":
        measure = f"number of {rule.metric.replace('_', ' ')} samples"
    else:
        measure = f"{_AGGREGATION_WORDS.get(rule.aggregation, rule.aggregation)} of {rule.metric.replace('_', ' ')}"
    if rule.threshold_unit == AlertRule.ThresholdUnit.PERCENT_OF_TIER_LIMIT:
        threshold = f"{rule.threshold:g} % of the tier's limit"
    elif rule.metric == "traffic_bytes":
        threshold = _bytes(rule.threshold)
    else:
        threshold = f"{rule.threshold:,.10g}"
    held = f", for {_duration(rule.for_seconds)}" if rule.for_seconds else ""
    return f"{measure} over {_duration(rule.window_seconds)} {rule.operator} {threshold}{held}"


def _live_deployments(project) -> list:
    return list(
        project.deployments.exclude(desired_state=DesiredState.DELETED)
        .only("id", "public_id", "name", "project_id")
        .order_by("name")
    )


def _rules_context(console, *, silence_form=None, shown_deployment: str = "") -> dict:
    """The project's own rules, and the defaults of one deployment at a time (a project of a hundred deployments
    has a thousand default rules: the page shows those of the deployment chosen)."""
    project = console.project
    deployments = _live_deployments(project)
    chosen = next((d for d in deployments if d.public_id == shown_deployment), deployments[0] if deployments else None)
    rules = selectors.alert_rules(project=project, deployment=chosen)
    for rule in rules:
        rule.condition = rule_condition(rule)
    own = [r for r in rules if not r.default_key]
    defaults = [r for r in rules if r.default_key and chosen is not None and r.deployment_id == chosen.pk]
    can_configure = console.can_in_project("deployment:configure")
    return {
        "console": console,
        "project": project,
        "own": own,
        "defaults": defaults,
        "chosen": chosen,
        "deployments": deployments,
        "silences": selectors.silences(project=project),
        "silence_form": silence_form or SilenceForm(deployments=deployments, rules=rules, prefix="silence"),
        "can_configure": can_configure,
        "can_budget": can_configure and console.can("billing:read"),
        "tab": "rules",
        "alert_projects": alert_projects(console),
    }


@login_required
@require_GET
def alert_rules(request, org_id, project_id):
    console = tenancy.for_project(request, org_id, project_id, section="alerts")
    console.require_in_project("alert:read")
    console.crumb("Alert rules")
    context = _rules_context(console, shown_deployment=request.GET.get("deployment", ""))
    return render(request, "console/alerts/rules.html", context)


def _rule(console, rule_id) -> AlertRule:
    rule = (
        AlertRule.objects.filter(project=console.project, public_id=rule_id)
        .select_related("deployment")
        .prefetch_related("channels")
        .first()
    )
    if rule is None:
        raise Http404("No such alert rule.")
    rule.project, rule.organization = console.project, console.organization
    return rule


def _back_to_rules(org_id, project_id, rule: AlertRule | None = None):
    """The rules page, showing the defaults of the rule's deployment when the rule is one of them."""
    url = reverse("console:alert-rules", args=[org_id, project_id])
    if rule is not None and rule.default_key and rule.deployment is not None:
        url = f"{url}?deployment={rule.deployment.public_id}"
    return redirect(url)


def _require_rule_write(console, kind: str) -> None:
    console.require_in_project("deployment:configure")
    if kind == AlertRule.Kind.BUDGET:
        # As the API: a budget alert tells spend, so setting one needs billing:read too.
        console.require("billing:read")


def _channel_choices(console) -> list:
    """Channels a rule may be routed to: only for those who may read the organization's channels (as the API)."""
    if not console.can("channel:read"):
        return []
    return list(notification_selectors.channel_list(organization=console.organization).order_by("name"))


def _channels(console, ids) -> list:
    if not ids:
        return []
    if not console.can("channel:read"):
        raise PermissionDenied("Routing a rule to notification channels needs the channel:read scope.")
    found = {c.public_id: c for c in _channel_choices(console) if c.public_id in set(ids)}
    return [found[i] for i in ids if i in found]


def _billing_currency(organization) -> str:
    from billing.selectors import billing_account_for

    return billing_account_for(organization=organization).currency


@login_required
@require_http_methods(["GET", "POST"])
@once
def alert_rule_create(request, org_id, project_id):
    console = tenancy.for_project(request, org_id, project_id, section="alerts")
    kind = AlertRule.Kind.BUDGET if (request.GET.get("kind") or request.POST.get("kind")) == "budget" else "metric"
    _require_rule_write(console, kind)
    console.crumb("Alert rules", reverse("console:alert-rules", args=[org_id, project_id]))
    console.crumb("New budget rule" if kind == AlertRule.Kind.BUDGET else "New threshold rule")
    channels = _channel_choices(console)
    deployments = _live_deployments(console.project)
    if kind == AlertRule.Kind.BUDGET:
        form = BudgetRuleForm(
            _posted(request), channels=channels, currency=_billing_currency(console.organization), prefix="rule"
        )
    else:
        initial = {"deployment": request.GET.get("deployment", "")}
        form = ThresholdRuleForm(
            _posted(request), deployments=deployments, channels=channels, initial=initial, prefix="rule"
        )
    status = 200
    if request.method == "POST":
        status = 400
        if form.is_valid():
            fields = dict(form.validated)
            deployment_id = fields.pop("deployment", None)
            deployment = next((d for d in deployments if d.public_id == deployment_id), None)
            if kind != AlertRule.Kind.BUDGET:
                fields.pop("budget_scope", None), fields.pop("budget_amount", None)
            try:
                rule = rule_services.alert_rule_create(
                    project=console.project,
                    actor=console.principal,
                    deployment=deployment,
                    channels=_channels(console, fields.pop("channels", [])),
                    **fields,
                )
            except errors.REFUSALS as exc:
                status = errors.to_form(form, exc)
            else:
                messages.success(request, f"Alert rule “{rule.name}” created.")
                return redirect("console:alert-rules", org_id=org_id, project_id=project_id)
    context = {"console": console, "form": form, "kind": kind, "rule": None, "channels": channels}
    return render(request, "console/alerts/rule_form.html", context, status=status)


@login_required
@require_http_methods(["GET", "POST"])
@once
def alert_rule_edit(request, org_id, project_id, rule_id):
    console = tenancy.for_project(request, org_id, project_id, section="alerts")
    console.require_in_project("alert:read")
    rule = _rule(console, rule_id)
    _require_rule_write(console, rule.kind)
    console.crumb("Alert rules", reverse("console:alert-rules", args=[org_id, project_id])).crumb(rule.name)
    channels = _channel_choices(console)
    if rule.kind == AlertRule.Kind.BUDGET:
        form = BudgetRuleEditForm(
            _posted(request),
            channels=channels,
            currency=rule.budget_currency or _billing_currency(console.organization),
            initial=BudgetRuleForm.initial_from(rule),
            rule=rule,
            prefix="rule",
        )
    elif rule.kind == AlertRule.Kind.METRIC:
        form = ThresholdRuleEditForm(
            _posted(request), channels=channels, initial=ThresholdRuleForm.initial_from(rule), rule=rule, prefix="rule"
        )
    else:
        raise Http404("This kind of rule is changed through the API.")
    status = 200
    if request.method == "POST":
        status = 400
        if form.is_valid():
            fields = dict(form.validated)
            wanted = fields.pop("channels", [])
            current = [c.public_id for c in rule.channels.all()]
            try:
                # Without channel:read the form shows no channels, so none come back: that is not a wish to drop
                # the rule's routing (which the API refuses such a role), and the routing stays as it is.
                chosen = _channels(console, wanted) if wanted != current and console.can("channel:read") else None
                rule = rule_services.alert_rule_update(rule=rule, actor=console.principal, channels=chosen, **fields)
            except errors.REFUSALS as exc:
                status = errors.to_form(form, exc)
            else:
                messages.success(request, f"Alert rule “{rule.name}” saved.")
                return _back_to_rules(org_id, project_id, rule)
    context = {"console": console, "form": form, "kind": rule.kind, "rule": rule, "channels": channels}
    return render(request, "console/alerts/rule_form.html", context, status=status)


@login_required
@require_POST
@once
def alert_rule_toggle(request, org_id, project_id, rule_id):
    console = tenancy.for_project(request, org_id, project_id, section="alerts")
    console.require_in_project("alert:read")
    rule = _rule(console, rule_id)
    _require_rule_write(console, rule.kind)
    wanted = request.POST.get("enabled") == "on"
    try:
        rule_services.alert_rule_update(rule=rule, actor=console.principal, enabled=wanted)
    except errors.REFUSALS as exc:
        errors.to_page(request, exc)
    else:
        messages.success(request, f"“{rule.name}” {'enabled' if wanted else 'disabled'}.")
    return _back_to_rules(org_id, project_id, rule)


@login_required
@require_POST
@once
def alert_rule_delete(request, org_id, project_id, rule_id):
    console = tenancy.for_project(request, org_id, project_id, section="alerts")
    console.require_in_project("alert:read")
    rule = _rule(console, rule_id)
    _require_rule_write(console, rule.kind)
    try:
        rule_services.alert_rule_delete(rule=rule, actor=console.principal)
    except errors.REFUSALS as exc:
        errors.to_page(request, exc)
    else:
        messages.success(request, f"Alert rule “{rule.name}” deleted, with its alerts.")
    return redirect("console:alert-rules", org_id=org_id, project_id=project_id)


@login_required
@require_POST
@once
def silence_create(request, org_id, project_id):
    console = tenancy.for_project(request, org_id, project_id, section="alerts")
    console.require_in_project("deployment:configure")
    console.crumb("Alert rules")
    deployments = _live_deployments(console.project)
    rules = selectors.alert_rules(project=console.project, deployment=None)
    form = SilenceForm(request.POST, deployments=deployments, rules=rules, prefix="silence")
    status = 400
    if form.is_valid():
        try:
            rule_services.silence_create(
                project=console.project,
                actor=console.principal,
                matchers=form.matchers(),
                starts_at=form.cleaned_data.get("starts_at"),
                ends_at=form.cleaned_data["ends_at"],
                comment=form.cleaned_data.get("comment") or "",
            )
        except errors.REFUSALS as exc:
            status = errors.to_form(form, exc, aliases={f"matchers.{key}": key for key in Silence.MATCHER_KEYS})
        else:
            messages.success(request, "Silence created: matching alerts notify no one until it ends.")
            return redirect("console:alert-rules", org_id=org_id, project_id=project_id)
    context = _rules_context(console, silence_form=form)
    return render(request, "console/alerts/rules.html", context, status=status)


@login_required
@require_POST
@once
def silence_expire(request, org_id, project_id, silence_id):
    console = tenancy.for_project(request, org_id, project_id, section="alerts")
    console.require_in_project("deployment:configure")
    silence = Silence.objects.filter(project=console.project, public_id=silence_id).first()
    if silence is None:
        raise Http404("No such silence.")
    silence.organization = console.organization
    try:
        rule_services.silence_expire(silence=silence, actor=console.principal)
    except errors.REFUSALS as exc:
        errors.to_page(request, exc)
    else:
        messages.success(request, "Silence ended.")
    return redirect("console:alert-rules", org_id=org_id, project_id=project_id)
