"""Deployments in the console: the create wizard, the deployment page (live status and timeline, connection details
and command lines), MQTT users, ACL rules, rate limits, lifecycle actions confirmed after a dry run, and history.

Every write calls the service the API calls, after the same scope check the API's viewset makes. A page never
decides a business rule; what a service refuses is shown beside the field or at the top of the page.
"""

from __future__ import annotations

import shlex
import uuid

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from billing.models import BillingAccount
from billing.money import HOURS_PER_YEAR, round_half_up
from console import errors, selectors, tenancy
from console.forms import (
    RATE_FIELDS,
    RATE_LEVELS,
    AclRuleForm,
    ChangeTierForm,
    DeleteDeploymentForm,
    DeploymentCreateForm,
    DeploymentRenameForm,
    MoveDeploymentForm,
    MqttPasswordForm,
    MqttUserForm,
    RateLimitsForm,
)
from console.once import once
from console.once import posted as _posted
from deployments import selectors as deployment_selectors
from deployments import services
from deployments.models import AclRule, DeploymentEvent, MqttUser, Operation, Plan, Region, Tier
from deployments.pricing import DEFAULT_CURRENCY, PriceBook

PROTOCOLS = {
    "mqtt": "MQTT over TCP",
    "mqtts": "MQTT over TLS",
    "ws": "MQTT over WebSocket",
    "wss": "MQTT over secure WebSocket",
    "mqtts_x509": "MQTT over TLS, devices with a client certificate",
}
SAMPLE_TOPIC = "console/test"
EVENTS_SHOWN = 100


def _url(console, page="deployment", **kwargs):
    return tenancy.deployment_url(console.deployment, page)


# --- The create wizard -------------------------------------------------------------------------------------------


def _offerable_plans(organization) -> list[Plan]:
    """Plans with a tier offered in an open region. Premium is invite-only: it appears once staff granted the
    organization a trial (Organization.premium_trial_deployments); the trial pages build on this."""
    offered = set(Tier.objects.filter(regions__is_open=True).values_list("plan_id", flat=True))
    plans = [p for p in Plan.objects.order_by("sort_order", "code") if p.pk in offered]
    if organization.premium_trial_deployments <= 0:
        plans = [p for p in plans if p.code != Plan.Code.PREMIUM]
    return plans


def _billing_currency(organization) -> str:
    found = BillingAccount.objects.filter(organization=organization).values_list("currency", flat=True).first()
    return found or getattr(settings, "BILLING_DEFAULT_CURRENCY", DEFAULT_CURRENCY)


def _wizard_options(organization, data) -> dict:
    """The choices the wizard offers for what is selected so far, with each tier's prices."""
    from billing.annual import annual_offer

    plans = _offerable_plans(organization)
    plan = next((p for p in plans if p.code == data.get("plan")), plans[0] if plans else None)
    regions = list(
        Region.objects.filter(is_open=True, tiers__plan=plan).distinct().order_by("code")
        if plan
        else Region.objects.none()
    )
    region = next((r for r in regions if r.code == data.get("region")), regions[0] if regions else None)
    tiers = list(
        Tier.objects.filter(plan=plan, regions=region).order_by("sort_order", "code") if region else Tier.objects.none()
    )
    currency = _billing_currency(organization)
    book = PriceBook(currency=currency)
    for tier in tiers:
        tier.hourly = book.hourly(plan_id=plan.pk, tier_id=tier.pk, state="running")
        tier.hourly_year = round_half_up(tier.hourly * HOURS_PER_YEAR, currency)
        try:
            _, tier.annual = annual_offer(tier=tier, currency=currency)
        except errors.REFUSALS:
            tier.annual = None  # no hourly price in this currency: no annual plan either
        tier.saving = tier.hourly_year - tier.annual if tier.annual is not None else None
    tier = next((t for t in tiers if t.code == data.get("tier")), tiers[0] if tiers else None)
    return {
        "plans": plans,
        "plan": plan,
        "regions": regions,
        "region": region,
        "tiers": tiers,
        "tier": tier,
        "currency": currency,
        "billing_cycle": data.get("billing_cycle") if data.get("billing_cycle") in ("hourly", "annual") else "hourly",
    }


def _wizard_form(data, options):
    initial = {
        "plan": options["plan"].code if options["plan"] else None,
        "region": options["region"].code if options["region"] else None,
        "tier": options["tier"].code if options["tier"] else None,
        "billing_cycle": options["billing_cycle"],
    }
    return DeploymentCreateForm(
        data, initial=initial, plans=options["plans"], regions=options["regions"], tiers=options["tiers"]
    )


def _dry_run(console, options):
    """The create dry run, as `?dry_run=true` answers it, for the chosen plan, tier and region."""
    if not (options["plan"] and options["region"] and options["tier"]):
        return None
    try:
        return services.deployment_create(
            project=console.project,
            actor=console.principal,
            name=f"preview-{uuid.uuid4().hex}",  # a name no deployment has: the dry run checks names too
            plan=options["plan"].code,
            tier=options["tier"].code,
            region=options["region"].code,
            dry_run=True,
        )
    except errors.REFUSALS:
        return None


@login_required
@require_http_methods(["GET", "POST"])
@once
def create(request, org_id, project_id):
    console = tenancy.for_project(request, org_id, project_id)
    console.require_in_project("deployment:write")
    console.crumb("Create deployment")
    data = request.POST if request.method == "POST" else request.GET
    options = _wizard_options(console.organization, data)
    submitted = request.method == "POST" and "preview" not in request.POST
    form = _wizard_form(request.POST if submitted else None, options)
    status = 200
    if submitted:
        if form.is_valid():
            values = dict(form.validated)
            try:
                if values["billing_cycle"] == "annual":
                    console.require_in_project("deployment:annual")
                # The deployment and its annual plan are made together or not at all, by the service, as the API does.
                deployment, operation = services.deployment_create(
                    project=console.project, actor=console.principal, **values
                )
            except errors.REFUSALS as exc:
                status = errors.to_form(form, exc)
            else:
                deployment.project = console.project
                messages.success(
                    request,
                    f"Creating “{deployment.name}”: operation {operation.public_id} ({operation.kind}) started.",
                )
                return redirect(tenancy.deployment_url(deployment))
        else:
            status = 400
    context = {
        "console": console,
        "form": form,
        **options,
        "dry_run": _dry_run(console, options),
        "can_annual": console.can_in_project("deployment:annual"),
    }
    template = (
        "console/deployments/_wizard_options.html"
        if request.headers.get("HX-Request")
        else "console/deployments/create.html"
    )
    return render(request, template, context, status=status)


# --- The deployment page -----------------------------------------------------------------------------------------


def _connection(deployment, username: str | None):
    endpoints = deployment.endpoints or {}
    host = endpoints.get("host", "")
    ports = [(name, port, PROTOCOLS.get(name, name)) for name, port in sorted((endpoints.get("ports") or {}).items())]
    port = (endpoints.get("ports") or {}).get("mqtt")
    commands = None
    if host and port:
        user = ["-u", username, "-P", "$MQTT_PASSWORD"] if username else []
        base = ["-h", host, "-p", str(port), *user, "-t", SAMPLE_TOPIC, "-q", "1"]

        def line(tool, extra):
            return " ".join([tool, *(a if a == "$MQTT_PASSWORD" else shlex.quote(a) for a in [*base, *extra])]).replace(
                "$MQTT_PASSWORD", '"$MQTT_PASSWORD"'
            )

        commands = {
            "sub": line("mosquitto_sub", ["-v"]),
            "pub": line("mosquitto_pub", ["-m", "hello from the console"]),
        }
    return {"host": host, "ports": ports, "commands": commands}


def _overview_context(console, request):
    deployment = console.deployment
    users = list(MqttUser.objects.filter(deployment=deployment).order_by("username").values_list("username", flat=True))
    chosen = request.GET.get("user")
    if chosen not in users:
        chosen = users[0] if users else None
    operation = selectors.current_operation(deployment)
    events = (
        list(DeploymentEvent.objects.filter(operation=operation).order_by("created_at", "id")[:EVENTS_SHOWN])
        if operation
        else []
    )
    return {
        "console": console,
        "deployment": deployment,
        "settling": not deployment.is_converged,
        "operation": operation,
        "events": events,
        "users": users,
        "chosen_user": chosen,
        "connection": _connection(deployment, chosen),
        "maintenance": deployment_selectors.next_maintenance(deployment),
        "annual_until": selectors.annual_term_end(deployment),
        # The quote itself refuses what cannot switch (not running, Serverless…); the button shows where it can.
        "can_annual": console.can_in_project("deployment:annual")
        and deployment.status == "running"
        and deployment.desired_state == "running",
        "price": PriceBook().hourly(
            plan_id=deployment.plan_id, tier_id=deployment.tier_id, state=deployment.desired_state
        ),
        "tab": "overview",
    }


@login_required
@require_GET
def detail(request, org_id, project_id, dep_id):
    console = tenancy.for_deployment(request, org_id, project_id, dep_id)
    return render(request, "console/deployments/overview.html", _overview_context(console, request))


@login_required
@require_GET
def live(request, org_id, project_id, dep_id):
    """Status, conditions, the current operation's timeline and connection details: polled while not settled."""
    console = tenancy.for_deployment(request, org_id, project_id, dep_id)
    return render(request, "console/deployments/_live.html", _overview_context(console, request))


# --- MQTT users ------------------------------------------------------------------------------------------------


def _configure_allowed(console):
    return console.can_in_project("deployment:configure") and console.deployment.desired_state != "deleted"


@login_required
@require_http_methods(["GET", "POST"])
@once
def mqtt_users(request, org_id, project_id, dep_id):
    console = tenancy.for_deployment(request, org_id, project_id, dep_id)
    deployment = console.deployment
    form = MqttUserForm(_posted(request), prefix="new")
    status = 200
    if request.method == "POST":
        console.require_in_project("deployment:configure")
        if form.is_valid():
            values = form.validated
            try:
                user, operation = services.mqtt_user_create(
                    deployment=deployment,
                    actor=console.principal,
                    username=values["username"],
                    password=values["password"],
                    is_superuser=values.get("superuser", False),
                )
            except errors.REFUSALS as exc:
                status = errors.to_form(form, exc)
            else:
                messages.success(request, f"MQTT user “{user.username}” added; the broker applies it now.")
                return redirect(_url(console, "deployment-mqtt-users"))
        else:
            status = 400
    users = list(MqttUser.objects.filter(deployment=deployment).order_by("username"))
    for user in users:
        user.password_form = MqttPasswordForm(prefix=user.public_id)
    context = {
        "console": console,
        "deployment": deployment,
        "users": users,
        "form": form,
        "can_configure": _configure_allowed(console),
        "tab": "mqtt-users",
    }
    return render(request, "console/deployments/mqtt_users.html", context, status=status)


def _mqtt_user(console, user_id) -> MqttUser:
    user = MqttUser.objects.filter(deployment=console.deployment, public_id=user_id).first()
    if user is None:
        raise Http404("No such MQTT user.")
    user.deployment = console.deployment
    return user


@login_required
@require_POST
@once
def mqtt_user_password(request, org_id, project_id, dep_id, user_id):
    console = tenancy.for_deployment(request, org_id, project_id, dep_id)
    console.require_in_project("deployment:configure")
    user = _mqtt_user(console, user_id)
    form = MqttPasswordForm(request.POST, prefix=user.public_id)
    if form.is_valid():
        try:
            services.mqtt_user_update(user=user, actor=console.principal, password=form.validated["password"])
        except errors.REFUSALS as exc:
            errors.to_page(request, exc)
        else:
            messages.success(request, f"Password of “{user.username}” changed.")
    else:
        for message in form.errors.get("password", []) + form.non_field_errors():
            messages.error(request, f"Password of “{user.username}” not changed: {message}")
    return redirect(_url(console, "deployment-mqtt-users"))


@login_required
@require_POST
@once
def mqtt_user_delete(request, org_id, project_id, dep_id, user_id):
    console = tenancy.for_deployment(request, org_id, project_id, dep_id)
    console.require_in_project("deployment:configure")
    user = _mqtt_user(console, user_id)
    try:
        services.mqtt_user_delete(user=user, actor=console.principal)
    except errors.REFUSALS as exc:
        errors.to_page(request, exc)
    else:
        messages.success(request, f"MQTT user “{user.username}” deleted.")
    return redirect(_url(console, "deployment-mqtt-users"))


# --- ACL rules -------------------------------------------------------------------------------------------------


@login_required
@require_http_methods(["GET", "POST"])
@once
def acl(request, org_id, project_id, dep_id):
    console = tenancy.for_deployment(request, org_id, project_id, dep_id)
    deployment = console.deployment
    form = AclRuleForm(_posted(request), prefix="new")
    status = 200
    if request.method == "POST":
        console.require_in_project("deployment:configure")
        if form.is_valid():
            try:
                services.acl_rule_create(deployment=deployment, actor=console.principal, **form.validated)
            except errors.REFUSALS as exc:
                status = errors.to_form(form, exc)
            else:
                messages.success(request, "ACL rule added.")
                return redirect(_url(console, "deployment-acl"))
        else:
            status = 400
    capabilities = deployment_selectors.driver_capabilities(deployment.region)
    context = {
        "console": console,
        "deployment": deployment,
        "rules": list(AclRule.objects.filter(deployment=deployment).order_by("position", "id")),
        "form": form,
        "capabilities": capabilities,
        "can_configure": _configure_allowed(console),
        "tab": "acl",
    }
    return render(request, "console/deployments/acl.html", context, status=status)


def _rule(console, rule_id) -> AclRule:
    rule = AclRule.objects.filter(deployment=console.deployment, public_id=rule_id).first()
    if rule is None:
        raise Http404("No such ACL rule.")
    rule.deployment = console.deployment
    return rule


@login_required
@require_POST
@once
def acl_delete(request, org_id, project_id, dep_id, rule_id):
    console = tenancy.for_deployment(request, org_id, project_id, dep_id)
    console.require_in_project("deployment:configure")
    try:
        services.acl_rule_delete(rule=_rule(console, rule_id), actor=console.principal)
    except errors.REFUSALS as exc:
        errors.to_page(request, exc)
    else:
        messages.success(request, "ACL rule deleted.")
    return redirect(_url(console, "deployment-acl"))


@login_required
@require_POST
@once
def acl_move(request, org_id, project_id, dep_id, rule_id):
    console = tenancy.for_deployment(request, org_id, project_id, dep_id)
    console.require_in_project("deployment:configure")
    rule = _rule(console, rule_id)
    direction = request.POST.get("direction")
    if direction not in ("up", "down"):
        messages.error(request, "Move a rule up or down.")
        return redirect(_url(console, "deployment-acl"))
    position = rule.position - 1 if direction == "up" else rule.position + 1
    if position < 0:
        messages.info(request, "That rule is already first.")
        return redirect(_url(console, "deployment-acl"))
    try:
        services.acl_rule_update(rule=rule, actor=console.principal, position=position)
    except errors.REFUSALS as exc:
        errors.to_page(request, exc)
    else:
        messages.success(request, f"Rule on “{rule.topic}” moved {direction}.")
    return redirect(_url(console, "deployment-acl"))


# --- Rate limits -----------------------------------------------------------------------------------------------


def _rate_rows(form, capabilities):
    """Per level, per field: the bound field, the tightest limit above it (its parent), and whether it is enforced."""
    levels = [level for level, _ in RATE_LEVELS]
    values = {}
    for level in levels:
        for field, _ in RATE_FIELDS:
            raw = form[f"{level}-{field}"].value()
            try:
                values[(level, field)] = int(raw) if raw not in (None, "") else None
            except (TypeError, ValueError):
                values[(level, field)] = None
    rows = []
    for index, (level, level_label) in enumerate(RATE_LEVELS):
        cells = []
        for field, field_label in RATE_FIELDS:
            parents = [(values[(p, field)], p) for p in levels[:index] if values[(p, field)] is not None]
            parent = min(parents) if parents else None
            cells.append(
                {
                    "field": form[f"{level}-{field}"],
                    "label": field_label,
                    "parent": parent,
                    "honoured": field in capabilities["rate_limits"][level],
                }
            )
        rows.append({"level": level, "label": level_label, "cells": cells})
    return rows


def _field_for_hierarchy_error(message: str) -> str | None:
    """'zone messages_rate (2000/s) exceeds its parent global …' names the field at fault."""
    parts = message.split(" ", 2)
    if len(parts) >= 2 and parts[0] in dict(RATE_LEVELS) and parts[1] in dict(RATE_FIELDS):
        return f"{parts[0]}-{parts[1]}"
    return None


@login_required
@require_http_methods(["GET", "POST"])
@once
def rate_limits(request, org_id, project_id, dep_id):
    console = tenancy.for_deployment(request, org_id, project_id, dep_id)
    deployment = console.deployment
    initial = {
        f"{p.level}-{field}": getattr(p, field)
        for p in deployment_selectors.rate_limit_list(deployment=deployment)
        for field, _ in RATE_FIELDS
    }
    form = RateLimitsForm(_posted(request), initial=initial)
    status = 200
    if request.method == "POST":
        console.require_in_project("deployment:configure")
        if form.is_valid():
            try:
                services.rate_limits_replace(deployment=deployment, actor=console.principal, policies=form.policies())
            except errors.REFUSALS as exc:
                refusal = errors.explain(exc)
                status = refusal.status
                for message in refusal.messages:
                    form.add_error(_field_for_hierarchy_error(message), message)
            else:
                messages.success(request, "Rate limits saved.")
                return redirect(_url(console, "deployment-rate-limits"))
        else:
            status = 400
    capabilities = deployment_selectors.driver_capabilities(deployment.region)
    context = {
        "console": console,
        "deployment": deployment,
        "form": form,
        "rows": _rate_rows(form, capabilities),
        "capabilities": capabilities,
        "can_configure": _configure_allowed(console),
        "tab": "rate-limits",
    }
    return render(request, "console/deployments/rate_limits.html", context, status=status)


# --- Lifecycle: manage page, dry-run confirmations, protection, rename, move, delete -----------------------------

ACTIONS = {
    "stop": ("Stop", services.deployment_stop),
    "start": ("Start", services.deployment_start),
    "restart": ("Restart (maintenance)", services.deployment_restart),
    "change-tier": ("Change tier", services.deployment_change_tier),
}
DISRUPTION = {
    "none": "None: connected clients are not affected.",
    "rolling": "Rolling: brokers restart one at a time; clients reconnect, persistent sessions are kept.",
    "restart": "Restart: every client is disconnected until the broker is back; persistent sessions are kept.",
}


def _manage_context(console, **extra):
    deployment = console.deployment
    other_tiers = [
        t
        for t in Tier.objects.filter(plan_id=deployment.plan_id, regions=deployment.region_id).order_by("sort_order")
        if t.pk != deployment.tier_id
    ]
    targets = [p for p in console.projects if p.pk != console.project.pk]
    targets = [p for p in targets if console.can_in_project("deployment:write", p)]
    return {
        "console": console,
        "deployment": deployment,
        "deleted": deployment.desired_state == "deleted",
        "can_write": console.can_in_project("deployment:write"),
        "can_configure": console.can_in_project("deployment:configure"),
        "rename_form": extra.pop("rename_form", None)
        or DeploymentRenameForm(initial={"name": deployment.name}, prefix="rename"),
        "tier_form": ChangeTierForm(tiers=other_tiers, prefix="tier") if other_tiers else None,
        "move_form": extra.pop("move_form", None) or (MoveDeploymentForm(projects=targets) if targets else None),
        "delete_form": extra.pop("delete_form", None) or DeleteDeploymentForm(deployment=deployment),
        "maintenance": deployment_selectors.next_maintenance(deployment),
        "tab": "manage",
        **extra,
    }


@login_required
@require_GET
def manage(request, org_id, project_id, dep_id):
    console = tenancy.for_deployment(request, org_id, project_id, dep_id)
    return render(request, "console/deployments/manage.html", _manage_context(console))


@login_required
@require_http_methods(["GET", "POST"])
@once
def action(request, org_id, project_id, dep_id, name):
    """GET: the dry run of a lifecycle action (price per hour before and after, disruption) and a confirm button.
    POST: do it."""
    if name not in ACTIONS:
        raise Http404("No such action.")
    console = tenancy.for_deployment(request, org_id, project_id, dep_id)
    console.require_in_project("deployment:write")
    label, service = ACTIONS[name]
    kwargs = {}
    if name == "change-tier":
        kwargs["tier"] = (request.POST.get("tier") or request.GET.get("tier") or "").strip()
        if not kwargs["tier"]:
            messages.error(request, "Choose the new tier.")
            return redirect(_url(console, "deployment-manage"))
    if request.method == "POST":
        try:
            _deployment, operation = service(deployment=console.deployment, actor=console.principal, **kwargs)
        except errors.REFUSALS as exc:
            errors.to_page(request, exc)
            return redirect(_url(console, "deployment-manage"))
        messages.success(request, f"{label}: operation {operation.public_id} started.")
        return redirect(_url(console))
    console.crumb(label)
    try:
        dry_run = service(deployment=console.deployment, actor=console.principal, dry_run=True, **kwargs)
    except errors.REFUSALS as exc:
        status = errors.to_page(request, exc)
        return (
            redirect(_url(console, "deployment-manage"))
            if status != 404
            else render(
                request, "console/problem.html", {"status": 404, "detail": errors.explain(exc).text}, status=404
            )
        )
    context = {
        "console": console,
        "deployment": console.deployment,
        "name": name,
        "label": label,
        "dry_run": dry_run,
        "disruption": DISRUPTION.get(dry_run.disruption, dry_run.disruption),
        "tier": kwargs.get("tier"),
        "tab": "manage",
    }
    return render(request, "console/deployments/confirm.html", context)


@login_required
@require_POST
@once
def protection(request, org_id, project_id, dep_id):
    console = tenancy.for_deployment(request, org_id, project_id, dep_id)
    console.require_in_project("deployment:write")
    wanted = request.POST.get("deletion_protection") == "on"
    try:
        services.deployment_update(deployment=console.deployment, actor=console.principal, deletion_protection=wanted)
    except errors.REFUSALS as exc:
        errors.to_page(request, exc)
    else:
        messages.success(request, "Deletion protection is on." if wanted else "Deletion protection lifted.")
    return redirect(_url(console, "deployment-manage"))


@login_required
@require_POST
@once
def rename(request, org_id, project_id, dep_id):
    console = tenancy.for_deployment(request, org_id, project_id, dep_id)
    console.require_in_project("deployment:configure")
    form = DeploymentRenameForm(request.POST, prefix="rename")
    status = 400
    if form.is_valid():
        try:
            services.deployment_update(
                deployment=console.deployment, actor=console.principal, name=form.validated["name"]
            )
        except errors.REFUSALS as exc:
            status = errors.to_form(form, exc)
        else:
            messages.success(request, "Deployment renamed.")
            return redirect(_url(console, "deployment-manage"))
    context = _manage_context(console, rename_form=form)
    return render(request, "console/deployments/manage.html", context, status=status)


@login_required
@require_POST
@once
def move(request, org_id, project_id, dep_id):
    console = tenancy.for_deployment(request, org_id, project_id, dep_id)
    console.require_in_project("deployment:write")
    targets = [p for p in console.projects if p.pk != console.project.pk]
    form = MoveDeploymentForm(request.POST, projects=targets)
    status = 400
    if form.is_valid():
        target = next(p for p in targets if p.public_id == form.cleaned_data["project"])
        # The target project must allow the same writes as the API's move demands; otherwise it reads as missing.
        if not console.can_in_project("deployment:write", target):
            form.add_error("project", "No such project in this organization.")
        else:
            try:
                deployment, _operation = services.deployment_move(
                    deployment=console.deployment, actor=console.principal, project=target
                )
            except errors.REFUSALS as exc:
                status = errors.to_form(form, exc)
            else:
                messages.success(request, f"“{deployment.name}” moved to project “{target.name}”.")
                target.organization = console.organization
                deployment.project = target
                return redirect(tenancy.deployment_url(deployment))
    context = _manage_context(console, move_form=form)
    return render(request, "console/deployments/manage.html", context, status=status)


@login_required
@require_POST
@once
def delete(request, org_id, project_id, dep_id):
    console = tenancy.for_deployment(request, org_id, project_id, dep_id)
    console.require_in_project("deployment:write")
    form = DeleteDeploymentForm(request.POST, deployment=console.deployment)
    status = 400
    if form.is_valid():
        try:
            _deployment, operation = services.deployment_delete(deployment=console.deployment, actor=console.principal)
        except errors.REFUSALS as exc:
            status = errors.to_form(form, exc)
        else:
            messages.success(request, f"Deleting “{console.deployment.name}”: operation {operation.public_id} started.")
            return redirect(_url(console))
    context = _manage_context(console, delete_form=form)
    return render(request, "console/deployments/manage.html", context, status=status)


# --- History -----------------------------------------------------------------------------------------------------


@login_required
@require_GET
def history(request, org_id, project_id, dep_id):
    console = tenancy.for_deployment(request, org_id, project_id, dep_id)
    deployment = console.deployment
    operations = list(
        Operation.objects.filter(deployment=deployment)
        .select_related("requested_by")
        .order_by("-created_at", "-id")[:EVENTS_SHOWN]
    )
    events = list(
        DeploymentEvent.objects.filter(deployment=deployment)
        .select_related("operation")
        .order_by("-created_at", "-id")[:EVENTS_SHOWN]
    )
    context = {
        "console": console,
        "deployment": deployment,
        "operations": operations,
        "events": events,
        "limit": EVENTS_SHOWN,
        "tab": "history",
    }
    return render(request, "console/deployments/history.html", context)
