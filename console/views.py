"""The console's entry points: the home page (which organization?) and accepting an invitation.

Sign-in, sign-up, password and two-factor pages live in console/account_views.py; the pages of an organization in
console.pages. All of them call the same services and access checks as the REST API and never write models directly.
"""

from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods

from console import errors, tenancy
from console.forms import InvitationAcceptForm, OrganizationCreateForm
from console.once import once, posted
from organizations import access, services


def _principal(request):
    return access.Principal.from_request(request)  # made once per request, with its membership memo


@login_required
def home(request):
    organizations = tenancy.organization_choices(_principal(request))
    if len(organizations) == 1:
        return redirect("console:organization", org_id=organizations[0].public_id)
    return render(request, "console/home.html", {"organizations": organizations})


@login_required
@require_http_methods(["GET", "POST"])
@once
def organization_create(request):
    """A new organization with the signed-in user as its Owner (after deleting their last one, for instance)."""
    form = OrganizationCreateForm(posted(request))
    status = 200
    if request.method == "POST":
        status = 400
        if form.is_valid():
            try:
                organization = services.organization_create(name=form.validated["name"], owner=request.user)
            except errors.REFUSALS as exc:
                status = errors.to_form(form, exc)
            else:
                messages.success(request, f"Organization {organization.name} created: you are its Owner.")
                return redirect("console:organization", org_id=organization.public_id)
    return render(request, "console/organization_create.html", {"form": form}, status=status)


@require_http_methods(["GET", "POST"])
def invitation_accept(request):
    token = request.GET.get("token") or request.POST.get("token") or ""
    invitation = services.invitation_by_token(token)
    form = InvitationAcceptForm(request.POST if request.method == "POST" else None)
    status = 200
    if request.method == "POST" and form.is_valid():
        try:
            membership = services.invitation_accept(token=token, user=request.user, **form.cleaned_data)
        except errors.REFUSALS as exc:
            status = errors.to_form(form, exc)
        else:
            if not request.user.is_authenticated:
                login(request, membership.user, backend="django.contrib.auth.backends.ModelBackend")
            return redirect("console:organization", org_id=membership.organization.public_id)
    context = {"form": form, "invitation": invitation, "token": token}
    return render(request, "console/invitation_accept.html", context, status=status)
