"""The minimal customer console: organization and project switcher, API keys, invitations (sign-in, sign-up and
two-factor pages live in console/account_views.py).

Pages call the same services and access checks as the REST API; they never write models directly.
"""

from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import Http404
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods
from rest_framework.exceptions import APIException

from console.forms import ApiKeyCreateForm, InvitationAcceptForm
from controlplane.errors import DomainError
from organizations import access, services
from organizations.models import ApiKey, Organization
from projects.models import Project


def _add_errors(form, exc):
    if isinstance(exc, DomainError):
        by_field = {}
        for error in exc.errors:
            by_field.setdefault(error.field or "__all__", []).append(error.message)
        for field, errors in (by_field or {"__all__": [exc.message]}).items():
            form.add_error(field if field in form.fields else None, errors)
    elif isinstance(exc, ValidationError) and hasattr(exc, "error_dict"):
        for field, errors in exc.message_dict.items():
            form.add_error(field if field in form.fields else None, errors)
    elif isinstance(exc, APIException):
        detail = exc.detail
        if isinstance(detail, dict):
            for field, errors in detail.items():
                form.add_error(field if field in form.fields else None, [str(e) for e in errors])
        else:
            form.add_error(None, str(detail))
    else:
        form.add_error(None, exc.messages if hasattr(exc, "messages") else str(exc))


def _principal(request):
    return access.Principal.from_request(request)  # made once per request, with its membership memo


def _organization(request, org_id) -> Organization:
    organization = Organization.objects.filter(public_id=org_id).first()
    if organization is None or not access.can_see_organization(_principal(request), organization):
        raise Http404("No such organization")
    return organization


@login_required
def home(request):
    organizations = list(access.visible_organizations(_principal(request)).order_by("name"))
    if len(organizations) == 1:
        return redirect("console:organization", org_id=organizations[0].public_id)
    return render(request, "console/home.html", {"organizations": organizations})


@login_required
def organization(request, org_id):
    organization = _organization(request, org_id)
    principal = _principal(request)
    projects = access.visible_projects(principal, organization, Project.objects.filter(organization=organization))
    return render(
        request,
        "console/organization.html",
        {
            "organization": organization,
            "organizations": access.visible_organizations(principal).order_by("name"),
            "projects": projects.order_by("-is_default", "name"),
            "membership": principal.membership(organization),
        },
    )


@login_required
def project(request, org_id, project_id):
    organization = _organization(request, org_id)
    project = Project.objects.filter(organization=organization, public_id=project_id).first()
    principal = _principal(request)
    if project is None or not access.has_scope(principal, "project:read", organization=organization, project=project):
        raise Http404("No such project")
    projects = access.visible_projects(principal, organization, Project.objects.filter(organization=organization))
    return render(
        request,
        "console/project.html",
        {
            "organization": organization,
            "project": project,
            "projects": projects.order_by("-is_default", "name"),
            "organizations": access.visible_organizations(principal).order_by("name"),
        },
    )


@login_required
@require_http_methods(["GET", "POST"])
def api_keys(request, org_id):
    organization = _organization(request, org_id)
    principal = _principal(request)
    if not access.has_scope(principal, "apikey:read", organization=organization):
        raise Http404("No such page")
    can_write = access.has_scope(principal, "apikey:write", organization=organization)
    project_choices = [
        (p.public_id, p.name) for p in Project.objects.filter(organization=organization).order_by("name")
    ]
    form = ApiKeyCreateForm(request.POST or None, project_choices=project_choices)
    secret = None
    created = None
    if request.method == "POST":
        if not can_write:
            raise Http404("No such page")
        if request.POST.get("revoke"):
            key = ApiKey.objects.filter(organization=organization, public_id=request.POST["revoke"]).first()
            if key is None:
                raise Http404("No such key")
            try:
                services.api_key_revoke(key=key, actor=principal)
                messages.success(request, f"Revoked {key.name}.")
            except DomainError as exc:
                messages.error(request, exc.message)
            return redirect("console:api-keys", org_id=org_id)
        if form.is_valid():
            try:
                created, secret = services.api_key_create(
                    organization=organization,
                    actor=principal,
                    name=form.cleaned_data["name"],
                    role=form.cleaned_data["role"],
                    project_ids=form.cleaned_data["projects"],
                    expires_at=form.cleaned_data["expires_at"],
                    created_by=request.user,
                )
                form = ApiKeyCreateForm(project_choices=project_choices)
            except (ValidationError, DomainError) as exc:
                _add_errors(form, exc)
    keys = ApiKey.objects.filter(organization=organization).select_related("created_by").prefetch_related("projects")
    return render(
        request,
        "console/api_keys.html",
        {
            "organization": organization,
            "keys": keys.order_by("-created_at"),
            "form": form,
            "secret": secret,
            "created": created,
            "can_write": can_write,
            "organizations": access.visible_organizations(principal).order_by("name"),
        },
    )


@require_http_methods(["GET", "POST"])
def invitation_accept(request):
    token = request.GET.get("token") or request.POST.get("token") or ""
    invitation = services.invitation_by_token(token)
    form = InvitationAcceptForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            membership = services.invitation_accept(token=token, user=request.user, **form.cleaned_data)
        except (ValidationError, DomainError) as exc:
            _add_errors(form, exc)
        else:
            if not request.user.is_authenticated:
                login(request, membership.user, backend="django.contrib.auth.backends.ModelBackend")
            return redirect("console:organization", org_id=membership.organization.public_id)
    return render(request, "console/invitation_accept.html", {"form": form, "invitation": invitation, "token": token})
