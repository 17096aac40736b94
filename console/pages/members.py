"""Members (sub-accounts) and invitations: list, invite with a role, resend and revoke invitations, change roles and
project grants, remove a member (their API keys are revoked: the confirmation says which).

The roles offered are only those the signed-in member may grant (organizations.access.grantable); the services check
the same rule again, so a crafted request gets the same refusal.
"""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_http_methods, require_POST

from console import errors, selectors, tenancy
from console.forms import InvitationForm, MemberForm
from console.once import once
from console.once import posted as _posted
from organizations import access, services
from organizations.models import Invitation, Membership
from organizations.roles import ORGANIZATION_ROLES, PROJECT_ROLES, Role

# The order the pages list roles in.
ROLE_ORDER = [
    Role.OWNER,
    Role.ADMINISTRATOR,
    Role.ACCOUNTANT,
    Role.AUDITOR,
    Role.PROJECT_ADMINISTRATOR,
    Role.PROJECT_USER,
]


def grantable_roles(console) -> list[Role]:
    principal, organization = console.principal, console.organization
    out = []
    for role in ROLE_ORDER:
        if role in ORGANIZATION_ROLES:
            allowed = access.grantable(principal, organization=organization, roles=[role])
        else:
            allowed = any(
                access.grantable(principal, organization=organization, roles=[role], project=p)
                for p in console.projects
            )
        if allowed:
            out.append(role)
    return out


def _grantable_projects(console, roles) -> list:
    project_roles = [r for r in roles if r in PROJECT_ROLES]
    return [
        p
        for p in console.projects
        if any(
            access.grantable(console.principal, organization=console.organization, roles=[r], project=p)
            for r in project_roles
        )
    ]


def _role_label(value: str) -> str:
    try:
        return Role(value).label
    except ValueError:
        return value


@login_required
@require_http_methods(["GET", "POST"])
@once
def members(request, org_id):
    console = tenancy.for_organization(request, org_id, section="members")
    console.require("member:read")
    console.crumb("Members")
    can_write = console.can("member:write")
    roles = grantable_roles(console) if can_write else []
    projects = _grantable_projects(console, roles)
    form = InvitationForm(_posted(request), roles=roles, projects=projects, prefix="invite")
    status = 200
    if request.method == "POST":
        console.require("member:write")
        if form.is_valid():
            values = form.validated
            try:
                invitation, _token = services.invitation_create(
                    organization=console.organization,
                    actor=console.principal,
                    email=values["email"],
                    roles=values["roles"],
                    project_grants=values["project_grants"],
                )
            except errors.REFUSALS as exc:
                status = errors.to_form(form, exc, aliases={"roles": "role", "project_grants": "projects"})
            else:
                messages.success(request, f"Invitation sent to {invitation.email}.")
                return redirect("console:members", org_id=org_id)
        else:
            status = 400
    rows = selectors.members(organization=console.organization)
    me = console.membership
    for member in rows:
        member.role_labels = [_role_label(r) for r in ROLE_ORDER if r in member.roles]
        member.grant_labels = [(g.project.name, _role_label(g.role)) for g in member.grants.all()]
        member.is_me = me is not None and member.pk == me.pk
    invitations = selectors.pending_invitations(organization=console.organization)
    project_names = {p.public_id: p.name for p in console.projects}
    for invitation in invitations:
        invitation.role_labels = [_role_label(r) for r in invitation.roles] + [
            f"{_role_label(g['role'])} on {project_names.get(g['project'], g['project'])}"
            for g in invitation.project_grants
        ]
    context = {
        "console": console,
        "members": rows,
        "invitations": invitations,
        "form": form,
        "can_write": can_write,
        "can_transfer": console.can("org:transfer"),
    }
    return render(request, "console/members/list.html", context, status=status)


def _member(console, member_id) -> Membership:
    membership = (
        Membership.objects.filter(organization=console.organization, public_id=member_id).select_related("user").first()
    )
    if membership is None:
        raise Http404("No such member.")
    membership.organization = console.organization
    return membership


@login_required
@require_http_methods(["GET", "POST"])
@once
def member_edit(request, org_id, member_id):
    console = tenancy.for_organization(request, org_id, section="members")
    console.require("member:write")
    membership = _member(console, member_id)
    console.crumb("Members", reverse("console:members", args=[org_id])).crumb(membership.user.email)
    offered = grantable_roles(console)
    org_offered = [r for r in offered if r in ORGANIZATION_ROLES]
    # Roles the member holds that this caller may not hand out stay as they are: they are shown, not offered.
    kept = [r for r in membership.roles if r not in org_offered]
    projects = console.projects
    grants = {g.project_id: g.role for g in membership.grants.all()}
    initial = {"roles": [r for r in membership.roles if r in org_offered]}
    initial.update({f"grant_{p.public_id}": grants.get(p.pk, "") for p in projects})
    form = MemberForm(_posted(request), roles=org_offered, projects=projects, initial=initial)
    status = 200
    if request.method == "POST":
        if form.is_valid():
            try:
                services.membership_update(
                    membership=membership,
                    actor=console.principal,
                    roles=sorted(set(form.cleaned_data["roles"]) | set(kept)),
                    project_grants=form.project_grants(),
                )
            except errors.REFUSALS as exc:
                status = errors.to_form(form, exc)
            else:
                messages.success(request, f"Roles of {membership.user.email} changed.")
                return redirect("console:members", org_id=org_id)
        else:
            status = 400
    context = {
        "console": console,
        "member": membership,
        "form": form,
        "kept": [_role_label(r) for r in kept],
    }
    return render(request, "console/members/edit.html", context, status=status)


@login_required
@require_http_methods(["GET", "POST"])
@once
def member_remove(request, org_id, member_id):
    console = tenancy.for_organization(request, org_id, section="members")
    console.require("member:write")
    membership = _member(console, member_id)
    if request.method == "POST":
        email = membership.user.email
        try:
            services.membership_remove(membership=membership, actor=console.principal)
        except errors.REFUSALS as exc:
            errors.to_page(request, exc)
            return redirect("console:members", org_id=org_id)
        messages.success(request, f"{email} was removed from {console.organization.name}; their API keys are revoked.")
        if membership.user_id == request.user.pk:
            return redirect("console:home")
        return redirect("console:members", org_id=org_id)
    console.crumb("Members", reverse("console:members", args=[org_id])).crumb(f"Remove {membership.user.email}")
    context = {
        "console": console,
        "member": membership,
        "keys": selectors.active_keys_of(organization=console.organization, user=membership.user),
    }
    return render(request, "console/members/remove.html", context)


def _invitation(console, invitation_id) -> Invitation:
    invitation = Invitation.objects.filter(organization=console.organization, public_id=invitation_id).first()
    if invitation is None:
        raise Http404("No such invitation.")
    invitation.organization = console.organization
    return invitation


@login_required
@require_POST
@once
def invitation_resend(request, org_id, invitation_id):
    console = tenancy.for_organization(request, org_id, section="members")
    console.require("member:write")
    invitation = _invitation(console, invitation_id)
    try:
        services.invitation_resend(invitation=invitation, actor=console.principal)
    except errors.REFUSALS as exc:
        errors.to_page(request, exc)
    else:
        messages.success(request, f"Invitation sent again to {invitation.email}; the earlier link no longer works.")
    return redirect("console:members", org_id=org_id)


@login_required
@require_POST
@once
def invitation_revoke(request, org_id, invitation_id):
    console = tenancy.for_organization(request, org_id, section="members")
    console.require("member:write")
    invitation = _invitation(console, invitation_id)
    try:
        services.invitation_revoke(invitation=invitation, actor=console.principal)
    except errors.REFUSALS as exc:
        errors.to_page(request, exc)
    else:
        messages.success(request, f"Invitation to {invitation.email} revoked.")
    return redirect("console:members", org_id=org_id)
