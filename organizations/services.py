"""Every change to organizations, members, invitations and API keys.

Each function validates, writes, records an AuditEvent in the same transaction and sends email on commit. Callers
(API views, console views, the admin, management commands) have already resolved the tenant; the role rules that
concern *who may grant what* are enforced here, so every entry point obeys them.
"""

from __future__ import annotations

import datetime
import hashlib
import re
import secrets
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.mail import send_mail
from django.db import IntegrityError, connection, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Field, Model
from django.db.models.expressions import Col
from django.utils import timezone

from audit.services import audit_record
from controlplane import crypto
from controlplane.errors import (
    Conflict,
    FieldError,
    NotFound,
    PermissionDenied,
    Unavailable,
    ValidationFailed,
    model_clean,
)
from controlplane.ids import holds_nul
from controlplane.tasks import enqueue_on_commit
from controlplane.validators import CONTROL_CHARACTERS, control_character_message, find_control_character
from organizations import access, closing
from organizations.models import ApiKey, Invitation, Membership, Organization
from organizations.roles import ORGANIZATION_ROLES, PROJECT_ROLES, Role
from projects.models import DEFAULT_PROJECT_NAME, Project, ProjectGrant

if TYPE_CHECKING:
    from accounts.models import User

# A project grant as the API and the console send it: {"project": public id, "role": project role}, unchecked.
GrantInput = Mapping[str, Any]

INVITATION_TTL = datetime.timedelta(days=7)
MAX_ROTATION_OVERLAP = datetime.timedelta(hours=24)
API_KEY_SECRET_PREFIX = "cpk_"


class TwoFactorSessionRequired(PermissionDenied):
    """A security setting changed by an API key, or by a session that no second factor verified."""

    code = "two-factor-session-required"
    default_message = (
        "The two-factor requirement can only be changed from a console session verified by your second factor "
        "(sign in with your authenticator code), not with an API key."
    )


class PersonRequired(PermissionDenied):
    """An operation a person must perform from their own session: an API key, whatever its role, may not."""

    code = "api-key-not-allowed"
    default_message = (
        "Only a person can delete an organization: an Owner, signed in to the console or the API with their own "
        "session, not with an API key."
    )


class OrganizationNotEmpty(Conflict):
    """Something still runs or is owed in the organization; `errors` lists each blocker with its own code."""

    code = "organization-not-empty"


class RoleTooHigh(PermissionDenied):
    """The caller asked for (or to act on something holding) more rights than it holds itself."""

    code = "role-too-high"
    default_message = "You cannot grant a role with more rights than your own."


def _hash(secret: str) -> str:
    # Secrets are 256-bit random: a plain SHA-256 is as strong as a slow hash here and keeps auth cheap.
    return hashlib.sha256(secret.encode()).hexdigest()


def _clean_roles(roles: Collection[str], *, field: str = "roles") -> list[str]:
    unknown = [role for role in roles if role not in ORGANIZATION_ROLES]
    if unknown:
        raise ValidationFailed({field: f"Not an organization role: {', '.join(map(str, unknown))}."})
    return sorted(set(roles))


def _resolve_grants(
    organization: Organization, grants: Sequence[GrantInput], *, lock: bool = False
) -> list[tuple[Project, str]]:
    """The grants' projects and roles, checked. With `lock`, for a caller about to write grants, the projects' rows
    are locked (in id order) as project_delete locks them: a deletion at the same moment either waits and deletes the
    new grants with the project, or has committed and its project is not found here."""
    resolved: list[tuple[Project, str]] = []
    seen: set[int] = set()
    # One read for every grant; through the organization's manager, so each project knows its organization.
    projects = organization.projects.filter(
        public_id__in=[g.get("project") for g in grants if isinstance(g.get("project"), str)]
    )
    if lock:
        projects = projects.select_for_update().order_by("pk")
    by_id: dict[object, Project] = {project.public_id: project for project in projects}
    for grant in grants:
        role = grant.get("role")
        if role not in PROJECT_ROLES:
            raise ValidationFailed({"project_grants": f"Not a project role: {role}."})
        project = by_id.get(grant.get("project"))
        if project is None:
            raise ValidationFailed({"project_grants": f"No project {grant.get('project')} in this organization."})
        if project.pk in seen:
            raise ValidationFailed({"project_grants": f"Project {project.public_id} is listed twice."})
        seen.add(project.pk)
        resolved.append((project, role))
    return resolved


def _check_grantable(
    actor: access.Principal | None,
    organization: Organization,
    roles: list[str],
    grants: list[tuple[Project, str]],
) -> None:
    if actor is None:  # the system itself (management commands, migrations)
        return
    if not access.grantable(actor, organization=organization, roles=roles):
        raise RoleTooHigh(fields={"roles": "You cannot grant a role with more rights than your own."})
    for project, role in grants:
        if not access.grantable(actor, organization=organization, roles=[role], project=project):
            raise RoleTooHigh(fields={"project_grants": f"You cannot grant {role} on {project.public_id}."})


# --- Organizations ---------------------------------------------------------------------------------------------


@transaction.atomic
def organization_create(*, name: str, owner: User, actor: access.Principal | None = None) -> Organization:
    """An organization with `owner` as its Owner and its undeletable Default project."""
    organization = Organization(name=name)
    model_clean(organization)
    organization.save()
    membership = Membership.objects.create(organization=organization, user=owner, roles=[Role.OWNER.value])
    project = Project.objects.create(organization=organization, name=DEFAULT_PROJECT_NAME, is_default=True)
    actor = actor or access.Principal(user=owner)
    audit_record(
        actor=actor,
        organization=organization,
        action="organization.create",
        target=organization,
        summary={"name": name},
    )
    audit_record(
        actor=actor,
        organization=organization,
        action="member.add",
        target=membership,
        summary={"email": owner.email, "roles": membership.roles},
    )
    audit_record(
        actor=actor, organization=organization, action="project.create", target=project, summary={"name": project.name}
    )
    return organization


@transaction.atomic
def organization_update(*, organization: Organization, actor: access.Principal | None, name: str) -> Organization:
    old = organization.name
    organization.name = name
    model_clean(organization)
    organization.save(update_fields=["name"])
    audit_record(
        actor=actor,
        organization=organization,
        action="organization.update",
        target=organization,
        summary={"name": [old, name]},
    )
    return organization


@transaction.atomic
def organization_require_two_factor(
    *, organization: Organization, actor: access.Principal | None, required: bool
) -> Organization:
    """Require (or stop requiring) two-factor authentication of every member's console session in the organization.

    Owners only (the org:security scope), and only from a console session verified by a second factor: API keys are
    not held to the requirement, so a leaked Owner key, which no second factor protects, must not be able to lift it
    for every member. Turning it on needs the acting member to have a device already, so the one who sets the rule
    is never the first one shut out by it. API keys are not affected by the rule itself."""
    from django_otp import user_has_device

    if actor is not None and not access.has_scope(actor, "org:security", organization=organization):
        raise RoleTooHigh("Only an Owner can change the organization's two-factor requirement.")
    if actor is not None and actor.api_key is not None:
        raise TwoFactorSessionRequired()
    organization = Organization.objects.select_for_update().get(pk=organization.pk)
    user = access.acting_user(actor)
    if required and user is not None and not user_has_device(user):
        raise Conflict(
            fields={"require_two_factor": "Set up two-factor authentication for yourself before requiring it."},
            code="two-factor-not-set-up",
        )
    if actor is not None and not actor.two_factor_verified:
        raise TwoFactorSessionRequired()
    old = organization.require_two_factor
    if old != required:
        organization.require_two_factor = required
        organization.save(update_fields=["require_two_factor"])
        audit_record(
            actor=actor,
            organization=organization,
            action="organization.require_two_factor",
            target=organization,
            summary={"require_two_factor": [old, required]},
        )
    return organization


def organization_check_deletable(*, organization: Organization, actor: access.Principal | None) -> None:
    """Whether `actor` may delete the organization at all: its Owner (the org:delete scope), acting in person. Checked
    by organization_delete, and before it by the API and the console so that a caller who may not delete is told so
    before anything about the request's input."""
    if actor is None or not access.has_scope(actor, "org:delete", organization=organization):
        raise RoleTooHigh("Only an Owner can delete the organization.")
    if actor.api_key is not None:
        raise PersonRequired()


def organization_deletion_blockers(*, organization: Organization) -> list[closing.DeletionBlocker]:
    """What must end, be billed or be paid before the organization can be deleted (empty: nothing)."""
    return closing.deletion_blockers(organization)


def organization_lock_open(*, organization_id: int) -> bool:
    """Share-lock the organization's row, which organization_delete locks for update before anything else; False when
    it is gone or deleted (closed). Whatever adds to an organization (a deployment, a member by invitation) takes it
    first: a deletion at the same moment then either committed before and is seen here, or waits for the addition to
    commit and sees it. Shared, so additions in one organization do not wait on each other."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT closed_at FROM {connection.ops.quote_name(Organization._meta.db_table)} WHERE id = %s FOR SHARE",
            [organization_id],
        )
        row = cursor.fetchone()
    return row is not None and row[0] is None


def organization_require_open(*, organization_id: int) -> None:
    """organization_lock_open for what a request adds to or changes in the organization (a deployment, a notification
    channel): 404 when it was deleted meanwhile, as for any organization the caller can no longer reach. What adds
    and what the deletion turns off are then either seen by the deletion or refused here."""
    if not organization_lock_open(organization_id=organization_id):
        raise NotFound("No such organization.")


@transaction.atomic
def organization_delete(
    *, organization: Organization, actor: access.Principal | None, confirm_name: str
) -> Organization:
    """Delete (close) the organization, as its Owner, who types its name to confirm.

    Soft: the row stays, marked closed, with its projects and their history, its billing account and invoices (kept
    for the legal retention period) and its audit log. What goes is every way in: its members, its pending
    invitations and its API keys (revoked); and, in the same transaction, what the apps above registered to turn off
    (closing.on_closing: its notification channels are disabled, nobody being left to tell). Refused while anything
    still runs or is owed (closing.deletion_blockers: a deployment not deleted, usage not yet invoiced, an invoice not
    paid, an annual plan, a VPC peering), checked under the organization's lock, which deployment_create takes too: a
    deployment created at the same moment either committed first and blocks, or finds the organization closed."""
    organization_check_deletable(organization=organization, actor=actor)
    organization = Organization.objects.select_for_update().get(pk=organization.pk)
    if organization.closed_at is not None:
        raise NotFound("No such organization.")
    _lock_memberships(organization)
    # The acting member's Owner role as it stands under the lock, not as the request first read it.
    current = Membership.objects.filter(organization=organization, user=access.acting_user(actor)).first()
    if current is None or not current.is_owner:
        raise RoleTooHigh("Only an Owner can delete the organization.")
    if not isinstance(confirm_name, str) or confirm_name != organization.name:
        raise ValidationFailed({"confirm_name": "Type the organization's name exactly as it is shown to delete it."})
    blockers = closing.deletion_blockers(organization)
    if blockers:
        refusal = OrganizationNotEmpty(
            "The organization cannot be deleted yet: " + " ".join(blocker.message for blocker in blockers)
        )
        refusal.errors = [FieldError(None, blocker.message, blocker.code) for blocker in blockers]
        raise refusal
    now = timezone.now()
    memberships = Membership.objects.filter(organization=organization)
    keys = ApiKey.objects.filter(organization=organization, revoked_at=None)
    invitations = Invitation.objects.filter(organization=organization, accepted_at=None, revoked_at=None)
    # What the apps above turn off (notification channels: nobody is left to tell), in this transaction.
    turned_off = closing.closing_steps_run(organization, now=now)
    # Recorded in the organization, naming the actor, before the memberships (the actor's among them) go.
    audit_record(
        actor=actor,
        organization=organization,
        action="organization.delete",
        target=organization,
        summary={
            "name": organization.name,
            "members": sorted(memberships.values_list("user__email", flat=True)),
            "revoked_api_keys": sorted(keys.values_list("prefix", flat=True)),
            "revoked_invitations": sorted(invitations.values_list("email", flat=True)),
            **turned_off,
        },
    )
    keys.update(revoked_at=now)
    invitations.update(revoked_at=now)
    memberships.delete()
    organization.closed_at = now
    organization.save(update_fields=["closed_at"])
    return organization


# --- Invitations -----------------------------------------------------------------------------------------------


def _invitation_token() -> str:
    return secrets.token_urlsafe(32)


@transaction.atomic
def invitation_create(
    *,
    organization: Organization,
    actor: access.Principal | None,
    email: str,
    roles: Collection[str],
    project_grants: Sequence[GrantInput] = (),
) -> tuple[Invitation, str]:
    """An invitation by email. Returns the invitation and the single-use token (only ever sent by email)."""
    email = email.strip().lower()
    roles = _clean_roles(roles)
    grants = _resolve_grants(organization, project_grants)
    if not roles and not grants:
        raise ValidationFailed({"roles": "Give at least one organization role or one project grant."})
    _check_grantable(actor, organization, roles, grants)
    # Invitations are created one at a time per organization, under the lock member changes take: otherwise two to
    # one address at once would both find no open invitation to replace, and the second would hit
    # invitation_open_unique.
    _lock_memberships(organization)
    if Membership.objects.filter(organization=organization, user__email__iexact=email).exists():
        raise Conflict(fields={"email": f"{email} is already a member of this organization."})
    # An open invitation to the same address is replaced: the newest link is the one that works. Its revocation is
    # audited below, on it, once the new invitation has an id to name.
    open_invitations = Invitation.objects.filter(
        organization=organization, email=email, accepted_at=None, revoked_at=None
    )
    replaced = list(open_invitations)
    open_invitations.update(revoked_at=timezone.now())
    token = _invitation_token()
    invitation = Invitation(
        organization=organization,
        email=email,
        roles=roles,
        project_grants=[{"project": p.public_id, "role": r} for p, r in grants],
        token_hash=_hash(token),
        invited_by=access.acting_user(actor),
        expires_at=timezone.now() + INVITATION_TTL,
    )
    # `roles` was checked above and may be empty (an invitation with project grants only); the model's blank rule
    # would refuse that.
    model_clean(invitation, exclude=["roles"])
    try:
        with transaction.atomic():
            invitation.save()
    except IntegrityError as exc:
        # The lock above is the guarantee; the constraint is the last line, answered as the conflict it is.
        if "invitation_open_unique" not in str(exc):
            raise
        raise Conflict(fields={"email": f"An invitation to {email} was sent at the same moment; try again."}) from None
    audit_record(
        actor=actor,
        organization=organization,
        action="invitation.create",
        target=invitation,
        summary={"email": email, "roles": roles, "project_grants": invitation.project_grants},
    )
    for old in replaced:
        audit_record(
            actor=actor,
            organization=organization,
            action="invitation.revoke",
            target=old,
            summary={"email": old.email, "replaced_by": invitation.public_id},
        )
    _send_invitation(invitation, token)
    return invitation, token


def _one_line(text: str) -> str:
    """`text` with every control character (line breaks included) made a space: names stored before they were
    refused can still head an email."""
    return " ".join(CONTROL_CHARACTERS.sub(" ", text).split())


def _send_invitation(invitation: Invitation, token: str) -> None:
    """Queue the invitation's e-mail once the transaction commits: a worker sends it and retries a mail server that
    refuses or does not answer, so the request never waits on SMTP. The link's token crosses the broker sealed with
    FIELD_ENCRYPTION_KEYS. With the broker unreachable it is logged and counted (controlplane.tasks), and the
    invitation can be sent again (invitation_resend)."""
    from organizations import tasks  # the task calls invitation_email_send

    enqueue_on_commit(tasks.send_invitation_email, invitation.pk, crypto.encrypt_str(token))


def invitation_email_send(*, invitation_id: int, sealed_token: str) -> bool:
    """Send the e-mail of an open invitation with the link of `sealed_token` (run by the
    organizations.send_invitation_email task, never in the request). Returns False, sending nothing, when that link
    no longer opens it: the invitation was accepted, revoked, has expired, or was sent again with a new link since.
    Raises OSError (SMTP errors among them) for the task to retry."""
    token = crypto.decrypt_str(sealed_token)
    invitation = (
        Invitation.objects.select_related("organization")
        .filter(
            pk=invitation_id,
            token_hash=_hash(token),
            accepted_at__isnull=True,
            revoked_at__isnull=True,
            expires_at__gt=timezone.now(),
        )
        .first()
    )
    if invitation is None:
        return False
    name = _one_line(invitation.organization.name)
    link = f"{settings.PUBLIC_URL}/console/invitations/accept?token={token}"
    send_mail(
        subject=f"You are invited to {name}",
        message=(
            f"You have been invited to the organization {name} on MQTT Cloud.\n\n"
            f"Accept the invitation within 7 days: {link}\n"
        ),
        from_email=settings.DEFAULT_FROM_EMAIL,
        recipient_list=[invitation.email],
    )
    return True


@transaction.atomic
def invitation_resend(*, invitation: Invitation, actor: access.Principal | None) -> tuple[Invitation, str]:
    """Send a pending (or expired) invitation again with a new link, valid for 7 more days; the old link stops
    working. Sending it again is a new decision, made by the caller: the roles it grants are checked against the
    caller's own, and the caller becomes its sender, the one whose rights invitation_accept checks again. Whoever
    sent it first, since demoted perhaps, no longer vouches for it."""
    from controlplane import errors as domain

    invitation = Invitation.objects.select_for_update().select_related("organization").get(pk=invitation.pk)
    if invitation.status not in ("pending", "expired"):
        raise domain.Conflict(f"The invitation is {invitation.status}; only an open invitation can be sent again.")
    organization = invitation.organization
    grants = _resolve_grants(
        organization,
        [g for g in invitation.project_grants if organization.projects.filter(public_id=g.get("project")).exists()],
    )
    _check_grantable(actor, organization, invitation.roles, grants)
    if Membership.objects.filter(organization=organization, user__email__iexact=invitation.email).exists():
        raise domain.Conflict(f"{invitation.email} is already a member of this organization.")
    first_sender = invitation.invited_by
    token = _invitation_token()
    invitation.token_hash = _hash(token)
    invitation.expires_at = timezone.now() + INVITATION_TTL
    invitation.invited_by = access.acting_user(actor)
    invitation.save(update_fields=["token_hash", "expires_at", "invited_by"])
    summary: dict[str, object] = {"email": invitation.email, "expires_at": invitation.expires_at.isoformat()}
    if first_sender != invitation.invited_by:
        summary["invited_by"] = [getattr(user, "email", None) for user in (first_sender, invitation.invited_by)]
    audit_record(
        actor=actor,
        organization=organization,
        action="invitation.resend",
        target=invitation,
        summary=summary,
    )
    _send_invitation(invitation, token)
    return invitation, token


@transaction.atomic
def invitation_revoke(*, invitation: Invitation, actor: access.Principal | None) -> Invitation:
    # The status is read again under the row's lock (invitation_accept takes it too): the view's copy may predate an
    # acceptance, which a revocation must not overwrite.
    invitation = Invitation.objects.select_for_update(of=("self",)).select_related("organization").get(pk=invitation.pk)
    if invitation.status != "pending":
        raise Conflict(f"The invitation is {invitation.status}; only pending invitations can be revoked.")
    invitation.revoked_at = timezone.now()
    invitation.save(update_fields=["revoked_at"])
    audit_record(
        actor=actor,
        organization=invitation.organization,
        action="invitation.revoke",
        target=invitation,
        summary={"email": invitation.email},
    )
    return invitation


def invitation_by_token(token: str) -> Invitation | None:
    if not isinstance(token, str) or not token:
        return None
    return Invitation.objects.select_related("organization").filter(token_hash=_hash(token)).first()


INVITATION_OUTGROWN = (
    "This invitation no longer holds: whoever sent it may no longer grant its roles. Ask for a new one."
)

INVITATION_SENDER_INACTIVE = (
    "This invitation no longer holds: the account that sent it is deactivated. Ask for a new one."
)


def _check_inviter_still_grants(invitation: Invitation) -> None:
    """An invitation grants what its sender could grant when it is accepted, not only when it was sent: one sent by
    a member since removed or demoted would otherwise hand out rights its sender no longer holds (an Administrator
    could invite a second address of theirs and come back after being removed). One the system sent (no sender) is
    not held to it. A sender whose account is deactivated may grant nothing while it is (as their API keys do
    nothing): their invitations are refused until staff reactivate the account."""
    if invitation.invited_by is None:
        return
    if not invitation.invited_by.is_active:
        raise ValidationFailed({"token": INVITATION_SENDER_INACTIVE})
    sender = access.Principal(user=invitation.invited_by, two_factor_verified=True)
    organization = invitation.organization
    projects = Project.objects.filter(
        organization=organization, public_id__in=[grant["project"] for grant in invitation.project_grants]
    ).in_bulk(field_name="public_id")
    # A project deleted since is skipped here as invitation_accept skips it.
    grants = [(projects[g["project"]], g["role"]) for g in invitation.project_grants if g["project"] in projects]
    try:
        _check_grantable(sender, organization, list(invitation.roles), grants)
    except RoleTooHigh:
        raise ValidationFailed({"token": INVITATION_OUTGROWN}) from None


@transaction.atomic
def invitation_accept(
    *, token: str, user: User | None = None, password: str | None = None, full_name: str = ""
) -> Membership:
    """Accept an invitation: link the signed-in user, or create the account. Single use, even under races."""
    from django.contrib.auth.password_validation import validate_password

    from accounts.models import User

    found = invitation_by_token(token)
    if found is None:
        raise ValidationFailed({"token": "This invitation link is not valid."})
    # The organization's lock before the invitation's, in organization_delete's order: an acceptance while the
    # organization is deleted waits for the deletion and is refused here, or commits first and its member is
    # removed (and named) by the deletion. Never a member of a closed organization.
    if not organization_lock_open(organization_id=found.organization_id):
        raise ValidationFailed(
            {"token": f"{found.organization.name} has been deleted: this invitation can no longer be accepted."}
        )
    invitation = Invitation.objects.select_for_update().get(pk=found.pk)
    if invitation.status != "pending":
        raise ValidationFailed({"token": f"This invitation is {invitation.status}."})
    _check_inviter_still_grants(invitation)
    existing = User.objects.filter(email__iexact=invitation.email).first()
    account_exists = ValidationFailed(
        {"token": f"An account for {invitation.email} exists: sign in to accept the invitation."}
    )
    if user is not None and getattr(user, "is_authenticated", False):
        if user.email.lower() != invitation.email.lower():
            raise ValidationFailed(
                {"token": f"This invitation is for {invitation.email}; you are signed in as {user.email}."}
            )
    elif existing is not None:
        raise account_exists
    else:
        if not password:
            raise ValidationFailed({"password": "Choose a password for your new account."})
        control = find_control_character(full_name or "")
        if control is not None:
            raise ValidationFailed({"full_name": control_character_message(*control)})
        candidate = User(email=invitation.email, full_name=full_name)
        try:
            validate_password(password, user=candidate)
        except ValidationError as exc:
            raise ValidationFailed({"__all__": list(exc.messages)}) from None
        try:
            with transaction.atomic():
                user = User.objects.create_user(invitation.email, password, full_name=full_name)
        except IntegrityError:
            # The lock above is this invitation's only: another organization's invitation to the same address (or a
            # sign-up) created the account meanwhile. The unique email is the guarantee; the answer is the one above.
            raise account_exists from None
    organization = invitation.organization
    membership, created = Membership.objects.get_or_create(
        organization=organization, user=user, defaults={"roles": invitation.roles}
    )
    if not created:
        raise ValidationFailed({"token": "You are already a member of this organization."})
    # The projects' rows are locked (in id order) as project_delete locks them: a deletion at the same moment either
    # waits and deletes these grants with its project, or has committed and its project is not found here.
    projects = {
        project.public_id: project
        for project in Project.objects.select_for_update()
        .filter(organization=organization, public_id__in=[grant["project"] for grant in invitation.project_grants])
        .order_by("pk")
    }
    for grant in invitation.project_grants:
        project = projects.get(grant["project"])
        if project is not None:  # a project deleted since the invitation was sent is skipped
            ProjectGrant.objects.create(membership=membership, project=project, role=grant["role"])
    invitation.accepted_at = timezone.now()
    invitation.save(update_fields=["accepted_at"])
    audit_record(
        actor=access.Principal(user=user),
        organization=organization,
        action="invitation.accept",
        target=invitation,
        summary={"email": invitation.email, "roles": invitation.roles},
    )
    return membership


# --- Members ---------------------------------------------------------------------------------------------------


def _lock_memberships(organization: Organization) -> None:
    """Serialize changes to an organization's members, so two concurrent demotions cannot both pass the
    last-Owner check."""
    list(Membership.objects.select_for_update().filter(organization=organization).values_list("pk", flat=True))


def _refresh_locked_member(membership: Membership) -> None:
    """Read `membership` again once _lock_memberships holds the organization's members. A request that waited on
    that lock may find the member removed by the one it waited for (two removals at once, a removal during a role
    change): that member is missing, as for a request that came a moment later, never a 500."""
    try:
        membership.refresh_from_db()
    except Membership.DoesNotExist:
        raise NotFound("No such member.") from None


def _owner_count(organization: Organization) -> int:
    return sum(
        1
        for roles in Membership.objects.filter(organization=organization).values_list("roles", flat=True)
        if Role.OWNER in roles
    )


@transaction.atomic
def membership_update(
    *,
    membership: Membership,
    actor: access.Principal | None,
    roles: Collection[str] | None = None,
    project_grants: Sequence[GrantInput] | None = None,
) -> Membership:
    organization = membership.organization
    _lock_memberships(organization)
    _refresh_locked_member(membership)
    before = {
        "roles": list(membership.roles),
        "project_grants": [
            {"project": g.project.public_id, "role": g.role} for g in membership.grants.select_related("project")
        ],
    }
    new_roles = _clean_roles(roles) if roles is not None else list(membership.roles)
    grants = _resolve_grants(organization, project_grants, lock=True) if project_grants is not None else None
    added = set(new_roles) - set(membership.roles)
    removed = set(membership.roles) - set(new_roles)
    _check_grantable(actor, organization, list(added | removed), grants or [])
    if (
        Role.OWNER in removed
        and actor is not None
        and not access.has_scope(actor, "org:transfer", organization=organization)
    ):
        raise RoleTooHigh(fields={"roles": "Only an Owner can remove the Owner role."})
    if Role.OWNER in removed and _owner_count(organization) <= 1:
        raise Conflict(fields={"roles": "An organization must keep at least one Owner."})
    if not new_roles and not (grants if grants is not None else membership.grants.exists()):
        raise ValidationFailed({"roles": "A member needs at least one organization role or project grant."})
    membership.roles = new_roles
    membership.save(update_fields=["roles"])
    if grants is not None:
        membership.grants.all().delete()
        ProjectGrant.objects.bulk_create(ProjectGrant(membership=membership, project=p, role=r) for p, r in grants)
    after = {
        "roles": new_roles,
        "project_grants": [{"project": p.public_id, "role": r} for p, r in grants]
        if grants is not None
        else before["project_grants"],
    }
    audit_record(
        actor=actor,
        organization=organization,
        action="member.update",
        target=membership,
        summary={"email": membership.user.email, "before": before, "after": after},
    )
    return membership


@transaction.atomic
def membership_remove(*, membership: Membership, actor: access.Principal | None) -> None:
    organization = membership.organization
    _lock_memberships(organization)
    _refresh_locked_member(membership)
    if membership.is_owner:
        if actor is not None and not access.has_scope(actor, "org:transfer", organization=organization):
            raise RoleTooHigh("Only an Owner can remove an Owner.")
        if _owner_count(organization) <= 1:
            raise Conflict("An organization must keep at least one Owner: transfer ownership first.")
    now = timezone.now()
    revoked = list(
        ApiKey.objects.filter(organization=organization, created_by=membership.user, revoked_at=None).values_list(
            "prefix", flat=True
        )
    )
    ApiKey.objects.filter(organization=organization, created_by=membership.user, revoked_at=None).update(revoked_at=now)
    # The invitations they sent and nobody accepted yet go with them (invitation_accept would refuse them anyway):
    # the list of invitations then says so.
    sent = Invitation.objects.filter(
        organization=organization, invited_by=membership.user, accepted_at=None, revoked_at=None
    )
    withdrawn = sorted(sent.values_list("email", flat=True))
    sent.update(revoked_at=now)
    audit_record(
        actor=actor,
        organization=organization,
        action="member.remove",
        target=membership,
        summary={
            "email": membership.user.email,
            "roles": membership.roles,
            "revoked_api_keys": revoked,
            "revoked_invitations": withdrawn,
        },
    )
    membership.delete()


@transaction.atomic
def ownership_transfer(*, organization: Organization, actor: access.Principal | None, member_id: str) -> Membership:
    """Make another member, named by its public id, an Owner; the current Owner steps down to Administrator.

    Needs the org:transfer scope (an API key holds it only with the Owner role) and the acting member's Owner role
    as it stands under the lock, not as the request first read it. The new Owner is looked up under the same lock:
    a member removed before it was taken is not found (a refusal on `member`), one removed after waits for this."""
    if actor is None or not access.has_scope(actor, "org:transfer", organization=organization):
        raise RoleTooHigh("Only an Owner can transfer ownership.")
    _lock_memberships(organization)
    current = (
        Membership.objects.select_related("user")
        .filter(organization=organization, user=access.acting_user(actor))
        .first()
    )
    if current is None or not current.is_owner:
        raise RoleTooHigh("Only an Owner can transfer ownership.")
    to_membership = (
        None
        if holds_nul(member_id)
        else Membership.objects.select_related("user").filter(organization=organization, public_id=member_id).first()
    )
    if to_membership is None:
        raise ValidationFailed({"member": "No such member in this organization."})
    if current.pk == to_membership.pk:
        raise ValidationFailed({"member": "You already own this organization."})
    to_membership.roles = sorted(set(to_membership.roles) | {Role.OWNER.value})
    to_membership.save(update_fields=["roles"])
    current.roles = sorted((set(current.roles) - {Role.OWNER.value}) | {Role.ADMINISTRATOR.value})
    current.save(update_fields=["roles"])
    audit_record(
        actor=actor,
        organization=organization,
        action="organization.transfer",
        target=organization,
        summary={"from": current.user.email, "to": to_membership.user.email},
    )
    return to_membership


# --- API keys --------------------------------------------------------------------------------------------------

# `cpk_<8 hex: the prefix>_<the random part>`; anything else is refused before it reaches the database.
_SECRET_FORMAT = re.compile(rf"{API_KEY_SECRET_PREFIX}([0-9a-f]{{8}})_[A-Za-z0-9_-]{{20,128}}")


def _secret_for(prefix: str) -> str:
    return f"{API_KEY_SECRET_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"


def _new_secret() -> tuple[str, str]:
    prefix = secrets.token_hex(4)
    return prefix, _secret_for(prefix)


# A prefix is 8 random hex characters: two keys may draw the same one, and a key committed by another request between
# any check and this write would pass the check. So the unique constraint is the guarantee, and a prefix taken is
# drawn again. With 2**32 prefixes, this many collisions in a row mean the random source is broken, not unlucky.
_PREFIX_DRAWS = 5


def _save_with_new_secret(key: ApiKey) -> str:
    """Insert the new `key` under a prefix no other key holds, and return its secret."""
    for _draw in range(_PREFIX_DRAWS):
        prefix, secret = _new_secret()
        key.prefix, key.secret_hash = prefix, _hash(secret)
        try:
            with transaction.atomic():
                key.save()
        except IntegrityError:
            # Only a taken prefix is drawn again; any other violation is a real error.
            if not ApiKey.objects.filter(prefix=prefix).exists():
                raise
            continue
        return secret
    raise Unavailable("No unused key prefix could be drawn; nothing was created. Try again.", retry_after=1)


def api_key_check_manageable(*, actor: access.Principal | None, key: ApiKey) -> None:
    """Rotating, revoking or editing a key is for callers who could create that very key today: the apikey:write
    scope and the key's role within their own rights (on each of its projects, for a project-limited key). A key
    must never lend its holder the rights of the member who created it."""
    if actor is None:  # the system itself
        return
    if not access.has_scope(actor, "apikey:write", organization=key.organization) or not access.can_manage_api_key(
        actor, key
    ):
        raise RoleTooHigh("You cannot manage an API key with more rights than your own.")


def api_key_check_rotatable(*, actor: access.Principal | None, key: ApiKey) -> None:
    """Rotating a key hands out its new secret: for its creator only (see api_key_rotate), while they could create
    it today."""
    api_key_check_manageable(actor=actor, key=key)
    rotator = access.acting_user(actor)
    if actor is not None and (rotator is None or rotator.pk != key.created_by_id):
        raise PermissionDenied(
            f"Only {key.created_by.email}, who created this key, can rotate it: its secret acts for them. "
            "Revoke it instead, or create a key of your own."
        )


def api_key_check_grantable(
    *,
    actor: access.Principal | None,
    organization: Organization,
    role: str,
    project_ids: Collection[str] = (),
    lock: bool = False,
) -> list[Project]:
    """Whether `actor` may create a key with `role` on these projects (none: the whole organization): the role and
    projects must exist, and the role must be within the actor's own rights in the organization and, for a key
    limited to projects, what it grants in a project within the actor's rights on each of them. Returns the projects.
    Checked by api_key_create, and by a replay of a key's creation, which must not hand a new key's secret to a
    caller demoted since. With `lock`, the projects' rows are locked (in id order), as project_delete locks them, and
    one deleted meanwhile is not found."""
    if role not in Role.values:
        raise ValidationFailed({"role": f"Unknown role {role}."})
    found = Project.objects.filter(organization=organization, public_id__in=list(project_ids))
    projects = list(found.select_for_update().order_by("pk") if lock else found)
    if len(projects) != len(set(project_ids)):
        missing = sorted(set(project_ids) - {p.public_id for p in projects})
        raise ValidationFailed({"projects": f"No such project in this organization: {', '.join(missing)}."})
    if role in PROJECT_ROLES and not projects:
        raise ValidationFailed({"projects": "A project role needs at least one project."})
    if actor is not None:
        # The same rule as access.can_manage_api_key, spelled out here to name the project at fault.
        if not access.grantable(actor, organization=organization, roles=[role]):
            raise RoleTooHigh(fields={"role": "You cannot create a key with more rights than your own."})
        for project in projects:
            if not access.grantable(actor, organization=organization, roles=[role], project=project):
                raise RoleTooHigh(fields={"role": f"Your rights on {project.public_id} are below {role}."})
    return projects


def _lock_creator_membership(
    *, organization: Organization, actor: access.Principal | None, creator: User | None
) -> None:
    """Lock the key's creator's membership (a row membership_remove and membership_update lock with the others) and
    have the actor's rights checked against it as it now stands. A creator who is no longer a member is refused."""
    if creator is None:  # the system, for nobody in particular
        return
    membership = Membership.objects.select_for_update().filter(organization=organization, user=creator).first()
    if membership is None:
        raise PermissionDenied(f"{creator.email} is not a member of this organization: a key acts for its creator.")
    if actor is not None and access.acting_user(actor) == creator:
        actor.renew_membership(organization, membership)


@transaction.atomic
def api_key_create(
    *,
    organization: Organization,
    actor: access.Principal | None,
    name: str,
    role: str,
    project_ids: Collection[str] = (),
    expires_at: datetime.datetime | None = None,
    created_by: User | None = None,
) -> tuple[ApiKey, str]:
    """A key acting for its creator with `role`, at most the creator's own rights. Returns (key, secret).

    membership_remove and project_delete revoke the keys of a removed member or a deleted project that are committed
    when they run. So the creator's membership row, then the projects' rows, are locked before the rights are
    checked: a removal or deletion at the same moment either waits for this key and revokes it, or has committed
    and this creation is refused."""
    creator = created_by or access.acting_user(actor)
    _lock_creator_membership(organization=organization, actor=actor, creator=creator)
    projects = api_key_check_grantable(
        actor=actor, organization=organization, role=role, project_ids=project_ids, lock=True
    )
    if expires_at is not None and expires_at <= timezone.now():
        raise ValidationFailed({"expires_at": "The expiry must be in the future."})
    key = ApiKey(
        organization=organization,
        name=name,
        role=role,
        created_by=creator,
        expires_at=expires_at,
        limited_to_projects=bool(projects),
    )
    # The prefix and secret are drawn at the write (a prefix taken is drawn again there, never the caller's error).
    model_clean(key, exclude=["prefix", "secret_hash"])
    secret = _save_with_new_secret(key)
    key.projects.set(projects)
    audit_record(
        actor=actor,
        organization=organization,
        action="api_key.create",
        target=key,
        summary={
            "name": name,
            "role": role,
            "projects": sorted(p.public_id for p in projects),
            "expires_at": expires_at.isoformat() if expires_at else None,
        },
    )
    return key, secret


def _locked_key(key: ApiKey) -> ApiKey:
    return ApiKey.objects.select_for_update().select_related("organization", "created_by").get(pk=key.pk)


@transaction.atomic
def api_key_update(
    *, key: ApiKey, actor: access.Principal | None, name: str | None = None, deletion_protection: bool | None = None
) -> ApiKey:
    key = _locked_key(key)
    api_key_check_manageable(actor=actor, key=key)
    changes: dict[str, list[str] | list[bool]] = {}
    if name is not None and name != key.name:
        changes["name"] = [key.name, name]
        key.name = name
    if deletion_protection is not None and deletion_protection != key.deletion_protection:
        changes["deletion_protection"] = [key.deletion_protection, deletion_protection]
        key.deletion_protection = deletion_protection
    model_clean(key)
    key.save(update_fields=["name", "deletion_protection"])
    audit_record(
        actor=actor,
        organization=key.organization,
        action="api_key.update",
        target=key,
        summary={**changes, "key_created_by": key.created_by.email},
    )
    return key


@transaction.atomic
def api_key_revoke(*, key: ApiKey, actor: access.Principal | None) -> ApiKey:
    key = _locked_key(key)
    api_key_check_manageable(actor=actor, key=key)
    if key.revoked_at is not None:
        raise Conflict("The key is already revoked.")
    if key.deletion_protection:
        raise Conflict("The key has deletion protection: lift it first.")
    key.revoked_at = timezone.now()
    key.save(update_fields=["revoked_at"])
    audit_record(
        actor=actor,
        organization=key.organization,
        action="api_key.revoke",
        target=key,
        summary={"name": key.name, "key_created_by": key.created_by.email},
    )
    return key


@transaction.atomic
def api_key_rotate(*, key: ApiKey, actor: access.Principal | None, overlap_seconds: int = 3600) -> tuple[ApiKey, str]:
    """A new secret; the old one keeps working for `overlap_seconds` (at most 24 h) so clients can roll over.

    The new secret goes only to the member who created the key, and only while they could create it today (see
    api_key_check_manageable). A key acts for its creator: its secret in anyone else's hands would let them act as
    that member, and keep doing so after they themselves were removed (removal revokes the keys a member created).
    Others who may manage the key revoke it instead."""
    key = _locked_key(key)
    api_key_check_rotatable(actor=actor, key=key)
    if not key.is_active:
        raise Conflict("Only an active key can be rotated.")
    if not 0 <= overlap_seconds <= MAX_ROTATION_OVERLAP.total_seconds():
        raise ValidationFailed({"overlap_seconds": "The overlap must be between 0 and 86400 seconds."})
    # The prefix stays: it is how people recognise the key. The random part is whole (it may hold "_" itself).
    secret = _secret_for(key.prefix)
    key.previous_secret_hash = key.secret_hash if overlap_seconds else ""
    key.previous_expires_at = timezone.now() + datetime.timedelta(seconds=overlap_seconds) if overlap_seconds else None
    key.secret_hash = _hash(secret)
    key.save(update_fields=["previous_secret_hash", "previous_expires_at", "secret_hash"])
    audit_record(
        actor=actor,
        organization=key.organization,
        action="api_key.rotate",
        target=key,
        summary={"overlap_seconds": overlap_seconds, "key_created_by": key.created_by.email},
    )
    return key, secret


# How _KeyLookup reads one model's columns: (field, column expression, the converters its value passes through).
_ColumnPlan = tuple["Field[Any, Any]", Col, list[Callable[..., Any]]]
_Plan = tuple[str, list[tuple[type[Model], list[_ColumnPlan]]]]


class _KeyLookup:
    """The one statement behind every API-key request.

    It reads everything the request's access checks will ask: the key (whether it is limited to projects is one of
    its columns), its organization, the member it acts for and that member's membership now (or none), and returns
    it as an access.ApiKeyCredential. Built through the ORM the statement is the costliest part of a small request
    (joins compiled anew each time, about three times the cost of the query itself), so it is written once here. Each model's columns are its concrete fields, so the instances are complete whatever fields are added,
    and every value passes through its field's own database converters (JSON, for one).
    """

    _SQL = (
        "SELECT {columns} "
        "FROM {key} k "
        "JOIN {organization} o ON o.id = k.organization_id "
        "JOIN {user} u ON u.id = k.created_by_id "
        "LEFT JOIN {membership} m ON m.organization_id = k.organization_id AND m.user_id = k.created_by_id "
        "WHERE k.prefix = %s"
    )

    def __init__(self) -> None:
        self._plans: dict[str, _Plan] = {}  # connection alias -> (sql, [(model, [(field, column, converters)])])

    def _plan(self, connection: BaseDatabaseWrapper) -> _Plan:
        from django.contrib.auth import get_user_model

        q = connection.ops.quote_name
        parts: list[tuple[type[Model], str]] = [
            (ApiKey, "k"),
            (Organization, "o"),
            (get_user_model(), "u"),
            (Membership, "m"),
        ]
        layout: list[tuple[type[Model], list[_ColumnPlan]]] = []
        columns: list[str] = []
        for model, alias in parts:
            fields: list[_ColumnPlan] = []
            for f in model._meta.concrete_fields:
                # Django calls a field concrete exactly when it has a column (Field.set_attributes_from_name).
                assert f.column is not None
                columns.append(f"{alias}.{q(f.column)}")
                col = f.get_col(alias)
                fields.append((f, col, connection.ops.get_db_converters(col) + f.get_db_converters(connection)))
            layout.append((model, fields))
        sql = self._SQL.format(
            columns=", ".join(columns),
            key=q(ApiKey._meta.db_table),
            organization=q(Organization._meta.db_table),
            user=q(get_user_model()._meta.db_table),
            membership=q(Membership._meta.db_table),
        )
        return sql, layout

    def __call__(self, prefix: str) -> access.ApiKeyCredential | None:
        from django.db import connection

        plan = self._plans.get(connection.alias)
        if plan is None:
            plan = self._plans[connection.alias] = self._plan(connection)
        sql, layout = plan
        with connection.cursor() as cursor:
            cursor.execute(sql, [prefix])
            row = cursor.fetchone()
        if row is None:
            return None
        # One per model of the plan, in order: ApiKey, Organization, the user, Membership (None without one).
        instances: list[Any] = []
        position = 0
        for model, fields in layout:
            values = []
            for _field, col, converters in fields:
                value = row[position]
                position += 1
                for convert in converters:
                    value = convert(value, col, connection)
                values.append(value)
            # A LEFT JOIN that found no membership yields nulls, primary key included.
            instances.append(
                None
                if values[0] is None
                else model.from_db(connection.alias, [f.attname for f, _, _ in fields], values)
            )
        key, organization, user, membership = instances
        # Relation caches, exactly what select_related would fill.
        key.organization, key.created_by = organization, user
        if membership is not None:
            membership.organization, membership.user = organization, user
        return access.ApiKeyCredential(key=key, creator_membership=membership)


_key_for_prefix = _KeyLookup()


def api_key_authenticate(secret: str) -> access.ApiKeyCredential | None:
    """The credential for a presented secret, or None: an unknown, malformed, revoked or expired key, or one whose
    creator's account is deactivated. Marks last_used_at at most once a minute."""
    if not isinstance(secret, str):
        return None
    match = _SECRET_FORMAT.fullmatch(secret)
    if match is None:
        return None
    credential = _key_for_prefix(match.group(1))
    if credential is None:
        return None
    key = credential.key
    if not key.is_active or not key.created_by.is_active:
        return None
    presented = _hash(secret)
    now = timezone.now()
    current_ok = secrets.compare_digest(presented, key.secret_hash)
    previous_ok = (
        bool(key.previous_secret_hash)
        and key.previous_expires_at is not None
        and key.previous_expires_at > now
        and secrets.compare_digest(presented, key.previous_secret_hash)
    )
    if not (current_ok or previous_ok):
        return None
    if key.last_used_at is None or now - key.last_used_at > datetime.timedelta(seconds=60):
        ApiKey.objects.filter(pk=key.pk).update(last_used_at=now)
        key.last_used_at = now
    return credential
