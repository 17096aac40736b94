"""The deployment page's VPC peering tab: the peerings with their states, a create form whose fields follow the
provider with its pre-flight shown before anything is created, and a page per peering with its live state, the exact
step awaited from the customer, deletion protection and delete.

Every write calls networking.services, the API's services, after the scope check the API's viewset makes; what a
service refuses is shown beside the field it names. Nothing here decides whether a range or an id is acceptable.
"""

from __future__ import annotations

import hashlib
import json

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import NON_FIELD_ERRORS, PermissionDenied
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from console import errors, tenancy
from console.forms import ApiForm
from console.once import once
from controlplane import errors as domain
from networking import checks, selectors, services
from networking.api import VpcPeeringCreateSerializer, VpcPeeringSerializer
from networking.models import VpcPeering

State = VpcPeering.State
# States the poll will still move on its own: the pages poll while a peering is in one of them.
SETTLING = {State.PENDING, State.AWAITING_CUSTOMER_ACTION, State.DELETING}
POLL_EVERY = "2s"

FIELD_LABELS = {
    "account_id": "AWS account ID",
    "vpc_id": "VPC ID",
    "region": "AWS region",
    "project_id": "GCP project ID",
    "network": "VPC network name",
    "tenant_id": "Tenant ID",
    "subscription_id": "Subscription ID",
    "resource_group": "Resource group",
    "vnet_name": "Virtual network name",
}
FIELD_HELP = {
    "account_id": "The 12-digit ID of the AWS account that owns your VPC.",
    "vpc_id": "vpc- followed by 8 or 17 hexadecimal characters.",
    "region": "Your VPC's region: peering stays within one region, this deployment's.",
    "project_id": "The ID of the Google Cloud project that holds your network.",
    "network": "The name of your VPC network in that project.",
    "tenant_id": "Your Microsoft Entra tenant (directory) ID, a GUID.",
    "subscription_id": "The ID of the subscription that holds your virtual network, a GUID.",
    "resource_group": "The resource group of your virtual network.",
    "vnet_name": "The name of your virtual network.",
}
PROVIDER_NAMES = dict(VpcPeering.Provider.choices)


class VpcPeeringForm(ApiForm):
    """The create (and pre-flight) input. Only the chosen provider's fields exist on the form: a message about a
    field always has a field to sit beside, and another provider's values are never read."""

    serializer_class = VpcPeeringCreateSerializer
    provider = forms.ChoiceField(label="Cloud provider", choices=VpcPeering.Provider.choices)
    cidr = forms.CharField(
        label="Your network's CIDR",
        help_text="The address range of your VPC or VNet to reach the brokers from, private (RFC 1918 or RFC 6598), "
        "for example 10.1.0.0/16.",
        widget=forms.TextInput(attrs={"autocomplete": "off", "spellcheck": "false"}),
    )
    deletion_protection = forms.BooleanField(
        label="Turn on deletion protection (refuse deleting this peering until it is lifted)", required=False
    )

    def __init__(self, *args, provider: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.chosen_provider = provider
        self.provider_name = PROVIDER_NAMES[provider]
        # What the customer does in their cloud before creating (services.customer_prerequisite); set by the view.
        self.before: dict | None = None
        fields = {}
        for name in checks.PROVIDER_FIELDS[provider]:
            # Not required here: the pre-flight says "Required for an Azure peering", as the API does.
            fields[name] = forms.CharField(
                label=FIELD_LABELS[name],
                required=False,
                help_text=FIELD_HELP[name],
                widget=forms.TextInput(attrs={"autocomplete": "off", "spellcheck": "false"}),
            )
        # The provider's fields first, in the order its console shows them, then the range and the protection.
        self.fields = {
            "provider": self.fields["provider"],
            **fields,
            **{k: self.fields[k] for k in ("cidr", "deletion_protection")},
        }

    def has_field_errors(self) -> bool:
        return any(name != NON_FIELD_ERRORS for name in self.errors)

    def provider_fields(self):
        return [self[name] for name in checks.PROVIDER_FIELDS[self.chosen_provider]]

    def request_values(self) -> dict:
        """What the service takes, from the API serializer's validated data: provider, cidr, deletion_protection
        and the provider's fields."""
        values = {"provider": self.validated["provider"], "cidr": self.validated["cidr"]}
        values["deletion_protection"] = self.validated.get("deletion_protection", False)
        for name in checks.PROVIDER_FIELDS[self.chosen_provider]:
            values[name] = self.validated.get(name)
        return values


def _chosen_provider(data, deployment) -> str:
    """The provider whose fields the form shows: the one asked for, else the deployment's region's cloud."""
    wanted = (data or {}).get("provider")
    if wanted in checks.PROVIDERS:
        return wanted
    return deployment.region.provider if deployment.region.provider in checks.PROVIDERS else checks.PROVIDERS[0]


def _form_initial(deployment, data=None) -> dict:
    initial = {"provider": _chosen_provider(data, deployment)}
    if deployment.region.provider == "aws":
        initial["region"] = deployment.region.cloud_region
    for name in ("cidr", "deletion_protection", *checks.ALL_FIELDS):
        if data and data.get(name) not in (None, ""):
            initial[name] = data.get(name) if name != "deletion_protection" else data.get(name) == "on"
    return initial


def _unbound_form(deployment, data=None) -> VpcPeeringForm:
    """The form as last typed, without errors: the provider changed, nothing was submitted yet."""
    initial = _form_initial(deployment, data)
    form = VpcPeeringForm(initial=initial, provider=initial["provider"])
    form.before = services.customer_prerequisite(deployment=deployment, provider=form.chosen_provider)
    return form


def _bound_form(deployment, data) -> VpcPeeringForm:
    form = VpcPeeringForm(data, provider=_chosen_provider(data, deployment))
    form.before = services.customer_prerequisite(deployment=deployment, provider=form.chosen_provider)
    return form


def _digest(values) -> str:
    """A short fingerprint of what a polled region shows: the poll answers 204 (htmx swaps nothing) while it is the
    same, so text a person is selecting or copying is not replaced under them every two seconds."""
    return hashlib.sha256(json.dumps(values, default=str, sort_keys=True).encode()).hexdigest()[:16]


def _unchanged(request, digest: str) -> bool:
    return bool(request.headers.get("HX-Request")) and request.GET.get("v") == digest


# --- The tab: list and create ------------------------------------------------------------------------------------


def _peerings(deployment) -> list[VpcPeering]:
    found = list(selectors.peering_list(deployment=deployment).order_by("-created_at", "-id"))
    for peering in found:
        peering.deployment = deployment
    return found


def _rows_context(console) -> dict:
    peerings = _peerings(console.deployment)
    settling = any(p.state in SETTLING for p in peerings)
    return {
        "console": console,
        "deployment": console.deployment,
        "peerings": peerings,
        "settling": settling,
        "rows_digest": _digest([(p.public_id, p.state, p.provider_state, p.deletion_protection) for p in peerings]),
    }


def _tab_context(console, form, *, preflight=None, preflight_failed=False) -> dict:
    deployment = console.deployment
    return {
        **_rows_context(console),
        "form": form,
        "preflight": preflight,
        "preflight_failed": preflight_failed,
        "unavailable": services.peering_unavailable_reason(deployment),
        "can_configure": console.can_in_project("deployment:configure"),
        "region": deployment.region,
        "region_provider": PROVIDER_NAMES.get(deployment.region.provider, deployment.region.provider or "local"),
        "platform_cidr": (deployment.region.network or {}).get("cidr"),
        "tab": "vpc-peering",
    }


def _tab_console(request, org_id, project_id, dep_id):
    console = tenancy.for_deployment(request, org_id, project_id, dep_id)
    console.crumb("VPC peering", tenancy.deployment_url(console.deployment, "deployment-vpc-peering"))
    return console


def _render_tab(request, console, form, *, status=200, **extra):
    context = _tab_context(console, form, **extra)
    if request.headers.get("HX-Request"):
        # htmx swaps only a 2xx answer: the refused form (its messages beside their fields) is the answer to show.
        return render(request, "console/vpc_peering/_form.html", context)
    return render(request, "console/vpc_peering/list.html", context, status=status)


@login_required
@require_http_methods(["GET", "POST"])
@once
def peerings(request, org_id, project_id, dep_id):
    """GET: the peerings and the create form (`?provider=` picks the fields). POST: create, or (the `choose` button of
    a page without JavaScript) show the fields of the provider chosen."""
    console = _tab_console(request, org_id, project_id, dep_id)
    deployment = console.deployment
    if request.method == "GET":
        return _render_tab(request, console, _unbound_form(deployment, request.GET))
    console.require_in_project("deployment:configure")
    if "choose" in request.POST:
        return _render_tab(request, console, _unbound_form(deployment, request.POST))
    form = _bound_form(deployment, request.POST)
    if not form.is_valid():
        return _render_tab(request, console, form, status=400, preflight_failed=True)
    try:
        peering = services.vpc_peering_create(deployment=deployment, actor=console.principal, **form.request_values())
    except errors.REFUSALS as exc:
        status = errors.to_form(form, exc)
        return _render_tab(request, console, form, status=status, preflight_failed=True)
    if peering.provider == "azure":
        # Both sides are ours to create (services.customer_prerequisite): nothing more to do in Azure.
        follow = "the platform is creating both sides with the role you granted its application."
    else:
        follow = (
            f"the platform is creating its side. The step to take in your {PROVIDER_NAMES[peering.provider]} "
            f"account appears here as soon as it is known."
        )
    messages.success(request, f"Peering {peering.public_id} requested: {follow}")
    return redirect(_peering_url(console, peering))


@login_required
@require_GET
def peering_fields(request, org_id, project_id, dep_id):
    """htmx: the fields of the provider just chosen, keeping what was already typed."""
    console = tenancy.for_deployment(request, org_id, project_id, dep_id)
    console.require_in_project("deployment:configure")
    context = {
        "console": console,
        "deployment": console.deployment,
        "form": _unbound_form(console.deployment, request.GET),
    }
    return render(request, "console/vpc_peering/_fields.html", context)


@login_required
@require_POST
def peering_check(request, org_id, project_id, dep_id):
    """The pre-flight alone: nothing is created. Answers the form with each check passed, or each field at fault
    with the range or value it conflicts with (the whole page without JavaScript, the form with htmx)."""
    console = _tab_console(request, org_id, project_id, dep_id)
    console.require_in_project("deployment:configure")
    deployment = console.deployment
    form = _bound_form(deployment, request.POST)
    if not form.is_valid():
        return _render_tab(request, console, form, status=400, preflight_failed=True)
    values = form.request_values()
    values.pop("deletion_protection")
    provider, cidr = values.pop("provider"), values.pop("cidr")
    try:
        checked = services.peering_preflight_check(
            deployment=deployment, actor=console.principal, provider=provider, cidr=cidr, fields=values
        )
    except errors.REFUSALS as exc:
        status = errors.to_form(form, exc)
        return _render_tab(request, console, form, status=status, preflight_failed=True)
    # A fresh (unbound) form keeps the values, without the bound form's "already submitted" look.
    return _render_tab(request, console, _unbound_form(deployment, request.POST), preflight=checked)


@login_required
@require_GET
def peering_rows(request, org_id, project_id, dep_id):
    """htmx: the table of peerings, polled while one of them is still moving."""
    console = tenancy.for_deployment(request, org_id, project_id, dep_id)
    context = _rows_context(console)
    if _unchanged(request, context["rows_digest"]):
        return HttpResponse(status=204)
    return render(request, "console/vpc_peering/_rows.html", context)


# --- One peering -------------------------------------------------------------------------------------------------


def _peering_url(console, peering, page="deployment-vpc-peering-detail") -> str:
    return reverse(
        f"console:{page}",
        args=[
            console.organization.public_id,
            console.project.public_id,
            console.deployment.public_id,
            peering.public_id,
        ],
    )


def _peering(console, peering_id) -> VpcPeering:
    peering = (
        selectors.peering_list(deployment=console.deployment, include_deleted=True).filter(public_id=peering_id).first()
    )
    if peering is None:
        raise Http404("No such VPC peering.")
    peering.deployment = console.deployment
    return peering


def _peering_console(request, org_id, project_id, dep_id, peering_id):
    console = _tab_console(request, org_id, project_id, dep_id)
    peering = _peering(console, peering_id)
    console.crumb(peering.public_id, _peering_url(console, peering))
    return console, peering


def _customer_fields(peering) -> list[tuple[str, str]]:
    return [(FIELD_LABELS[name], getattr(peering, name)) for name in checks.PROVIDER_FIELDS[peering.provider]]


def _peering_context(console, peering) -> dict:
    shown = VpcPeeringSerializer(peering).data  # the API's view of it: provider id, platform CIDR, the step
    can_configure = console.can_in_project("deployment:configure")
    gone = peering.state in (State.DELETING, State.DELETED)
    return {
        "console": console,
        "deployment": console.deployment,
        "peering": peering,
        "shown": shown,
        "provider_name": PROVIDER_NAMES[peering.provider],
        "customer_fields": _customer_fields(peering),
        "settling": peering.state in SETTLING,
        "can_delete": can_configure and not gone,
        "can_protect": can_configure and not gone and not peering.deletion_protection,
        "can_lift": console.can_in_project("deployment:write") and not gone and peering.deletion_protection,
        "digest": _digest(
            [shown, peering.state, peering.last_error, peering.provider_state, peering.deletion_protection]
        ),
        "tab": "vpc-peering",
    }


@login_required
@require_GET
def peering_detail(request, org_id, project_id, dep_id, peering_id):
    console, peering = _peering_console(request, org_id, project_id, dep_id, peering_id)
    return render(request, "console/vpc_peering/detail.html", _peering_context(console, peering))


@login_required
@require_GET
def peering_live(request, org_id, project_id, dep_id, peering_id):
    """htmx: the peering's state, the step awaited and its actions, polled while the peering is still moving; 204
    while nothing shown has changed."""
    console = tenancy.for_deployment(request, org_id, project_id, dep_id)
    peering = _peering(console, peering_id)
    context = _peering_context(console, peering)
    if _unchanged(request, context["digest"]):
        return HttpResponse(status=204)
    return render(request, "console/vpc_peering/_live.html", context)


@login_required
@require_POST
@once
def peering_protection(request, org_id, project_id, dep_id, peering_id):
    """Turn deletion protection on (deployment:configure) or lift it (deployment:write, as the API demands)."""
    console, peering = _peering_console(request, org_id, project_id, dep_id, peering_id)
    console.require_in_project("deployment:configure")
    wanted = request.POST.get("deletion_protection") == "on"
    try:
        services.vpc_peering_update(peering=peering, actor=console.principal, deletion_protection=wanted)
    except domain.PermissionDenied as exc:  # a crafted post: the page offers no Lift button to this caller
        raise PermissionDenied(exc.message) from None
    except errors.REFUSALS as exc:
        errors.to_page(request, exc)
    else:
        messages.success(
            request,
            f"Deletion protection of {peering.public_id} is on."
            if wanted
            else f"Deletion protection of {peering.public_id} lifted.",
        )
    return redirect(_peering_url(console, peering))


@login_required
@require_http_methods(["GET", "POST"])
@once
def peering_delete(request, org_id, project_id, dep_id, peering_id):
    """GET: what deleting the peering does, and a confirm button. POST: delete it (the poll removes it at the
    provider; the peering page follows it to `deleted`)."""
    console, peering = _peering_console(request, org_id, project_id, dep_id, peering_id)
    console.require_in_project("deployment:configure")
    if request.method == "POST":
        try:
            services.vpc_peering_delete(peering=peering, actor=console.principal)
        except errors.REFUSALS as exc:
            errors.to_page(request, exc)
        else:
            messages.success(request, f"Deleting {peering.public_id}: the platform is removing its side.")
        return redirect(_peering_url(console, peering))
    console.crumb("Delete")
    context = _peering_context(console, peering)
    return render(request, "console/vpc_peering/delete.html", context)
