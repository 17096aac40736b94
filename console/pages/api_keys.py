"""API keys: list (role, project limits, expiry, last use), create, rotate with an overlap, revoke, deletion protection.

A new secret is shown once: it travels from the POST to the page that shows it through the session, popped on
display, so a replayed double submit never carries it and no page after that one shows it again.
"""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_http_methods, require_POST

from console import errors, selectors, shown_once, tenancy
from console.forms import ApiKeyCreateForm, ApiKeyRotateForm
from console.once import once
from console.once import posted as _posted
from controlplane.ids import holds_nul
from organizations import access, services
from organizations.models import ApiKey
from organizations.roles import PROJECT_ROLES, Role

SECRET_SESSION_KEY = "console_new_api_key_secret"


def _key_roles(console) -> list[Role]:
    """Roles a key may be given: within what the caller holds in the organization, as the service requires of every
    key, and, for a project role, on some project (a key of one needs a project)."""
    principal, organization = console.principal, console.organization
    return [
        role
        for role in Role
        if access.grantable(principal, organization=organization, roles=[role])
        and (
            role not in PROJECT_ROLES
            or any(
                access.grantable(principal, organization=organization, roles=[role], project=p)
                for p in console.projects
            )
        )
    ]


def _show_secret_next(request, key: ApiKey, secret: str, note: str) -> None:
    shown_once.keep(
        request.session, SECRET_SESSION_KEY, {"key": key.public_id, "name": key.name, "secret": secret, "note": note}
    )


@login_required
@require_http_methods(["GET", "POST"])
@once
def api_keys(request, org_id):
    console = tenancy.for_organization(request, org_id, section="api-keys")
    console.require("apikey:read")
    console.crumb("API keys")
    can_write = console.can("apikey:write")
    form = ApiKeyCreateForm(
        _posted(request), roles=_key_roles(console) if can_write else [], projects=console.projects, prefix="new"
    )
    status = 200
    if request.method == "POST":
        console.require("apikey:write")
        if request.POST.get("revoke"):  # the first console's revoke form posted here; it still works
            return _revoke(request, console, request.POST["revoke"])
        if form.is_valid():
            values = form.validated
            try:
                key, secret = services.api_key_create(
                    organization=console.organization,
                    actor=console.principal,
                    name=values["name"],
                    role=values["role"],
                    project_ids=values.get("projects", []),
                    expires_at=values.get("expires_at"),
                    created_by=request.user,
                )
            except errors.REFUSALS as exc:
                status = errors.to_form(form, exc, aliases={"project_ids": "projects"})
            else:
                _show_secret_next(request, key, secret, "created")
                return redirect("console:api-keys", org_id=org_id)
        else:
            status = 400
    context = {
        "console": console,
        "keys": selectors.api_keys(organization=console.organization),
        "form": form,
        "can_write": can_write,
        "shown": shown_once.take(request.session, SECRET_SESSION_KEY),
    }
    return render(request, "console/api_keys/list.html", context, status=status)


def _key(console, key_id) -> ApiKey:
    # The list page's revoke form names the key in the body, which the address's NUL check never sees: no id holds a
    # NUL (PostgreSQL would refuse the lookup), so such a key is missing.
    key = (
        None
        if holds_nul(key_id)
        else ApiKey.objects.filter(organization=console.organization, public_id=key_id).first()
    )
    if key is None:
        raise Http404("No such API key.")
    key.organization = console.organization
    return key


@login_required
@require_http_methods(["GET", "POST"])
@once
def api_key_rotate(request, org_id, key_id):
    console = tenancy.for_organization(request, org_id, section="api-keys")
    console.require("apikey:write")
    key = _key(console, key_id)
    try:
        services.api_key_check_rotatable(actor=console.principal, key=key)
    except errors.REFUSALS as exc:
        errors.to_page(request, exc)
        return redirect("console:api-keys", org_id=org_id)
    form = ApiKeyRotateForm(_posted(request))
    status = 200
    if request.method == "POST":
        if form.is_valid():
            try:
                key, secret = services.api_key_rotate(key=key, actor=console.principal, **form.validated)
            except errors.REFUSALS as exc:
                errors.to_page(request, exc)
                return redirect("console:api-keys", org_id=org_id)
            if key.previous_expires_at:
                note = f"rotated: the old secret keeps working until {key.previous_expires_at:%Y-%m-%d %H:%M} UTC"
            else:
                note = "rotated: the old secret stopped working at once"
            _show_secret_next(request, key, secret, note)
            return redirect("console:api-keys", org_id=org_id)
        status = 400
    console.crumb("API keys", reverse("console:api-keys", args=[org_id])).crumb(f"Rotate {key.name}")
    return render(
        request, "console/api_keys/rotate.html", {"console": console, "key": key, "form": form}, status=status
    )


@login_required
@require_POST
@once
def api_key_revoke(request, org_id, key_id):
    console = tenancy.for_organization(request, org_id, section="api-keys")
    console.require("apikey:write")
    return _revoke(request, console, key_id)


def _revoke(request, console, key_id):
    key = _key(console, key_id)
    try:
        services.api_key_revoke(key=key, actor=console.principal)
    except errors.REFUSALS as exc:
        errors.to_page(request, exc)
    else:
        messages.success(request, f"API key “{key.name}” revoked.")
    return redirect("console:api-keys", org_id=console.organization.public_id)


@login_required
@require_POST
@once
def api_key_protection(request, org_id, key_id):
    console = tenancy.for_organization(request, org_id, section="api-keys")
    console.require("apikey:write")
    key = _key(console, key_id)
    wanted = request.POST.get("deletion_protection") == "on"
    try:
        services.api_key_update(key=key, actor=console.principal, deletion_protection=wanted)
    except errors.REFUSALS as exc:
        errors.to_page(request, exc)
    else:
        messages.success(request, f"Deletion protection of “{key.name}” is {'on' if wanted else 'lifted'}.")
    return redirect("console:api-keys", org_id=org_id)
