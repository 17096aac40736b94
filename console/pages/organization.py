"""The organization's settings: its name, and transferring its ownership."""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from console import errors, selectors, tenancy
from console.forms import OrganizationRenameForm, TransferOwnershipForm
from console.once import once
from console.once import posted as _posted
from organizations import services


def _transfer_form(console, data=None):
    me = console.membership
    candidates = [m for m in selectors.members(organization=console.organization) if me is None or m.pk != me.pk]
    return TransferOwnershipForm(data, members=candidates, prefix="transfer") if candidates else None


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
    context = {
        "console": console,
        "form": form,
        "can_rename": console.can("org:write"),
        "transfer_form": _transfer_form(console) if console.can("org:transfer") else None,
    }
    return render(request, "console/organization/settings.html", context, status=status)


@login_required
@require_POST
@once
def transfer(request, org_id):
    console = tenancy.for_organization(request, org_id, section="settings")
    console.require("org:transfer")
    form = _transfer_form(console, request.POST)
    if form is None or not form.is_valid():
        messages.error(request, "Choose the member who becomes Owner.")
        return redirect("console:settings", org_id=org_id)
    try:
        # The service reads the member under its lock: one removed since the form was checked is refused there.
        target = services.ownership_transfer(
            organization=console.organization, actor=console.principal, member_id=form.cleaned_data["member"]
        )
    except errors.REFUSALS as exc:
        errors.to_page(request, exc)
        return redirect("console:settings", org_id=org_id)
    messages.success(request, f"{target.user.email} is now an Owner; you are an Administrator.")
    return redirect("console:members", org_id=org_id)
