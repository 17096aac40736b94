"""The organization's settings: its name, transferring its ownership, and deleting it (the danger zone)."""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_http_methods, require_POST

from console import errors, selectors, tenancy
from console.forms import OrganizationDeleteForm, OrganizationRenameForm, TransferOwnershipForm
from console.once import once
from console.once import posted as _posted
from deployments.models import Deployment
from networking.models import VpcPeering
from organizations import services


def _transfer_candidates(console) -> list:
    me = console.membership
    return [m for m in selectors.members(organization=console.organization) if me is None or m.pk != me.pk]


def _transfer_form(console, data=None):
    candidates = _transfer_candidates(console)
    return TransferOwnershipForm(data, members=candidates, prefix="transfer") if candidates else None


def _blocker_links(console, blocker) -> list[tuple[str, str]]:
    """(label, url) of the pages where the Owner can act on what blocks the deletion."""
    organization = console.organization
    if blocker.code == "deployments":
        deployments = Deployment.objects.filter(
            project__organization=organization, public_id__in=blocker.ids
        ).select_related("project__organization")
        return [(f"{d.name} ({d.public_id})", tenancy.deployment_url(d)) for d in deployments.order_by("created_at")]
    if blocker.code == "vpc-peerings":
        peerings = VpcPeering.objects.filter(
            deployment__project__organization=organization, public_id__in=blocker.ids
        ).select_related("deployment__project__organization")
        return [
            (p.public_id, tenancy.deployment_url(p.deployment, "deployment-vpc-peering"))
            for p in peerings.order_by("created_at")
        ]
    if blocker.code == "invoices":
        return [(i, reverse("console:billing-invoice", args=[organization.public_id, i])) for i in blocker.ids]
    if blocker.code == "annual-subscriptions":
        return [("Annual plans", reverse("console:billing-subscriptions", args=[organization.public_id]))]
    return [("Billing overview", reverse("console:billing", args=[organization.public_id]))]


def _danger_zone(console, delete_form=None) -> dict:
    """For the Owner: what blocks deleting the organization, each with links to act on it, or (when nothing does)
    the form where they type its name."""
    if not console.can("org:delete"):
        return {"can_delete": False}
    blockers = services.organization_deletion_blockers(organization=console.organization)
    return {
        "can_delete": True,
        "deletion_blockers": [(blocker, _blocker_links(console, blocker)) for blocker in blockers],
        "delete_form": None if blockers else (delete_form or OrganizationDeleteForm(prefix="delete")),
    }


def _settings(request, console, *, form=None, transfer_form=None, delete_form=None, status=200):
    """The settings page; `form`, `transfer_form` or `delete_form`: the one submitted, bound, with its errors beside
    its fields."""
    if form is None:
        form = OrganizationRenameForm(initial={"name": console.organization.name}, prefix="org")
    if transfer_form is None and console.can("org:transfer"):
        transfer_form = _transfer_form(console)
    context = {
        "console": console,
        "form": form,
        "can_rename": console.can("org:write"),
        "transfer_form": transfer_form,
        **_danger_zone(console, delete_form),
    }
    return render(request, "console/organization/settings.html", context, status=status)


@login_required
@require_http_methods(["GET", "POST"])
@once
def settings_page(request, org_id):
    console = tenancy.for_organization(request, org_id, section="settings")
    if not (console.can("org:write") or console.can("org:transfer")):
        console.require("org:write")
    console.crumb("Settings")
    form = OrganizationRenameForm(_posted(request), initial={"name": console.organization.name}, prefix="org")
    status = 200
    if request.method == "POST":
        console.require("org:write")
        if form.is_valid():
            try:
                services.organization_update(
                    organization=console.organization, actor=console.principal, name=form.validated["name"]
                )
            except errors.REFUSALS as exc:
                status = errors.to_form(form, exc)
            else:
                messages.success(request, "Organization renamed.")
                return redirect("console:settings", org_id=org_id)
        else:
            status = 400
    return _settings(request, console, form=form, status=status)


@login_required
@require_POST
@once
def transfer(request, org_id):
    console = tenancy.for_organization(request, org_id, section="settings")
    console.require("org:transfer")
    form = _transfer_form(console, request.POST)
    if form is None:  # no other member to choose (a page older than a removal): nothing to show beside
        messages.error(request, "Choose the member who becomes Owner.")
        return redirect("console:settings", org_id=org_id)
    if not form.is_valid():
        return _settings(request, console, transfer_form=form, status=400)
    try:
        # The service reads the member under its lock: one removed since the form was checked is refused there.
        target = services.ownership_transfer(
            organization=console.organization, actor=console.principal, member_id=form.cleaned_data["member"]
        )
    except errors.REFUSALS as exc:
        status = errors.to_form(form, exc)  # the API's message beside the member select ("member" in both)
        form.offer(_transfer_candidates(console))  # as they are now: a member the service did not find is gone
        return _settings(request, console, transfer_form=form, status=status)
    messages.success(request, f"{target.user.email} is now an Owner; you are an Administrator.")
    return redirect("console:members", org_id=org_id)


@login_required
@require_POST
@once
def delete(request, org_id):
    console = tenancy.for_organization(request, org_id, section="settings")
    console.require("org:delete")
    console.crumb("Settings")
    form = OrganizationDeleteForm(request.POST, prefix="delete")
    status = 400
    if form.is_valid():
        name = console.organization.name
        try:
            # The service checks the name and what blocks again, under the organization's lock.
            services.organization_delete(
                organization=console.organization, actor=console.principal, confirm_name=form.validated["confirm_name"]
            )
        except errors.REFUSALS as exc:
            status = errors.to_form(form, exc)
        else:
            messages.success(request, f"The organization {name} was deleted.")
            return redirect("console:home")
    return _settings(request, console, delete_form=form, status=status)
