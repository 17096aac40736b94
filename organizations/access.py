"""Who may do what, decided in one place.

A Principal is the caller: a user (console session) or an API key (acting for the member who created it, never with
more than that member holds now). Every check reduces to "does the principal hold scope S in this organization or
project". Objects of organizations the principal is not in are invisible, so callers answer 404, never 403. Nothing
here outlives its request: memberships are read anew by every request, so a removal or a demotion counts at once.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from django.db.models import QuerySet

from controlplane.errors import PermissionDenied
from controlplane.ids import holds_nul
from organizations.models import ApiKey, Membership, Organization
from organizations.roles import MEMBER_BASE_SCOPES, PROJECT_SCOPES, ROLE_SCOPES, scopes_for_roles

if TYPE_CHECKING:
    from accounts.models import User


@dataclasses.dataclass(frozen=True, slots=True)
class ApiKeyCredential:
    """What authenticating an API key established, read in one statement (organizations.services.
    api_key_authenticate): the key with its organization and creator and the creator's membership now (None once
    removed). DRF's `request.auth` for an API-key request."""

    key: ApiKey
    creator_membership: Membership | None

    @property
    def limited_to_projects(self) -> bool:
        return self.key.limited_to_projects

    @property
    def idempotency_scope(self) -> str:
        """Who sent a request, for Idempotency-Key records: the key itself, whatever spelling of the header or which
        of its secrets (the current one, or the previous one during a rotation's overlap) was presented."""
        return f"api-key:{self.key.pk}"

    @property
    def prefix(self) -> str:
        """The key's visible prefix; the rate limiter names the caller's bucket with it."""
        return self.key.prefix


class TwoFactorRequired(PermissionDenied):
    code = "two-factor-required"
    default_message = (
        "This organization requires two-factor authentication: set it up in the console "
        "(/console/account/two-factor) and sign in again."
    )


def acting_user(actor: Principal | None) -> User | None:
    """The user a principal acts for: its session's user, or the member who created its API key; None for the
    system (actor None)."""
    key = getattr(actor, "api_key", None)
    return getattr(actor, "user", None) or (key.created_by if key is not None else None)


def is_staff(actor) -> bool:
    """Whether the caller acts as the operator: the system itself (None: a manage.py command run by whoever runs
    the control plane) or a staff user's own session (the admin backoffice). Never an API key, whoever made it."""
    if actor is None:
        return True
    if getattr(actor, "api_key", None) is not None:
        return False
    user = getattr(actor, "user", None)
    return bool(user is not None and user.is_active and user.is_staff)


@dataclasses.dataclass(eq=False)
class Principal:
    user: object | None = None
    api_key: ApiKey | None = None
    # Whether this console session was verified by a second factor (django-otp). Only a session built from a request
    # can be; a Principal made in code (the admin, the system) is not, which only matters in organizations that
    # require two-factor authentication.
    two_factor_verified: bool = False
    # Per-request memo: membership lookups are made once however many checks a request runs.
    _memberships: dict = dataclasses.field(default_factory=dict, repr=False)
    _grants: dict = dataclasses.field(default_factory=dict, repr=False)
    _key_projects: set | None = dataclasses.field(default=None, repr=False)

    @classmethod
    def from_request(cls, request) -> Principal:
        cached = getattr(request, "_principal", None)
        if cached is not None:
            return cached
        auth = getattr(request, "auth", None)
        user = getattr(request, "user", None)
        if user is not None and not user.is_authenticated:
            user = None
        if isinstance(auth, ApiKeyCredential):
            principal = cls(user=user, api_key=auth.key)
            # Seed the memo with what authentication read with the key.
            principal._memberships[auth.key.organization_id] = auth.creator_membership
        else:
            is_verified = getattr(user, "is_verified", None)  # installed by django_otp's middleware
            principal = cls(user=user, two_factor_verified=bool(is_verified and is_verified()))
        request._principal = principal
        return principal

    @property
    def is_authenticated(self) -> bool:
        return self.user is not None or self.api_key is not None

    @property
    def label(self) -> str:
        if self.api_key is not None:
            return f"api key {self.api_key.prefix}"
        return str(self.user) if self.user is not None else "system"

    def membership(self, organization: Organization) -> Membership | None:
        user = acting_user(self)
        if user is None:
            return None
        if organization.pk not in self._memberships:
            self._memberships[organization.pk] = Membership.objects.filter(organization=organization, user=user).first()
        return self._memberships[organization.pk]

    def renew_membership(self, organization: Organization, membership: Membership | None) -> None:
        """Make the checks that follow use `membership` as just read (under its lock), not the request's memo."""
        self._memberships[organization.pk] = membership
        if membership is not None:
            self._grants.pop(membership.pk, None)

    @property
    def key_limited(self) -> bool:
        """Whether the principal's API key is limited to projects (see key_project_ids)."""
        return self.api_key is not None and self.api_key.limited_to_projects

    def key_project_ids(self) -> set[int]:
        """The projects a limited API key may act in. Empty for a limited key means none at all (its projects were
        deleted), never the whole organization: that is `key_limited` being False."""
        if self._key_projects is None:
            self._key_projects = set(self.api_key.projects.values_list("pk", flat=True)) if self.key_limited else set()
        return self._key_projects

    def _member_grants(self, membership: Membership) -> dict[int, str]:
        if membership.pk not in self._grants:
            self._grants[membership.pk] = dict(membership.grants.values_list("project_id", "role"))
        return self._grants[membership.pk]


def two_factor_satisfied(principal: Principal, organization: Organization) -> bool:
    """False when the organization requires two-factor authentication and this is a console session that was not
    verified by a second factor. API keys are never held to it."""
    return (
        not organization.require_two_factor
        or principal.api_key is not None
        or principal.user is None
        or principal.two_factor_verified
    )


def member_organization(principal: Principal, org_public_id: str) -> Organization | None:
    """The organization with this public id if the principal's user is a member of it, else None: one query that
    also remembers the membership for the scope checks that follow. Raises TwoFactorRequired for a member whose
    session does not meet the organization's two-factor requirement."""
    if holds_nul(org_public_id):
        return None
    key = principal.api_key
    if (
        key is not None
        and key.organization.public_id == org_public_id
        and key.organization_id in principal._memberships
    ):
        membership = principal._memberships[key.organization_id]
        return None if membership is None or membership.organization.closed_at else membership.organization
    user = acting_user(principal)
    if user is None:
        return None
    # A closed (deleted) organization has no members left; should one be added back (by staff), it stays closed.
    membership = (
        Membership.objects.select_related("organization")
        .filter(organization__public_id=org_public_id, organization__closed_at__isnull=True, user=user)
        .first()
    )
    if membership is None:
        return None
    principal._memberships[membership.organization_id] = membership
    if not two_factor_satisfied(principal, membership.organization):
        raise TwoFactorRequired()
    return membership.organization


def _member_org_scopes(membership: Membership | None) -> frozenset[str]:
    if membership is None:
        return frozenset()
    return MEMBER_BASE_SCOPES | scopes_for_roles(membership.roles)


def _member_project_scopes(principal: Principal, membership: Membership | None, project) -> frozenset[str]:
    if membership is None:
        return frozenset()
    scopes = scopes_for_roles(membership.roles) & PROJECT_SCOPES
    role = principal._member_grants(membership).get(project.pk)
    if role:
        scopes |= ROLE_SCOPES[role]
    return scopes


def organization_scopes(principal: Principal, organization: Organization) -> frozenset[str]:
    """Scopes the principal holds at organization level (empty: the organization is invisible to it)."""
    if not two_factor_satisfied(principal, organization):
        return frozenset()
    membership = principal.membership(organization)
    member_scopes = _member_org_scopes(membership)
    key = principal.api_key
    if key is None:
        return member_scopes
    if key.organization_id != organization.pk or not key.is_active:
        return frozenset()
    if principal.key_limited:
        # A project-limited key sees its organization, nothing more, outside its projects; with no project left it
        # sees nothing.
        return MEMBER_BASE_SCOPES & member_scopes if principal.key_project_ids() else frozenset()
    return (MEMBER_BASE_SCOPES | ROLE_SCOPES[key.role]) & member_scopes


def project_scopes(principal: Principal, project) -> frozenset[str]:
    organization = project.organization
    if not two_factor_satisfied(principal, organization):
        return frozenset()
    membership = principal.membership(organization)
    member_scopes = _member_project_scopes(principal, membership, project)
    key = principal.api_key
    if key is None:
        return member_scopes
    if key.organization_id != organization.pk or not key.is_active:
        return frozenset()
    if principal.key_limited and project.pk not in principal.key_project_ids():
        return frozenset()
    return (ROLE_SCOPES[key.role] & PROJECT_SCOPES) & member_scopes


def has_scope(principal: Principal, scope: str, *, organization: Organization, project=None) -> bool:
    if project is not None:
        return scope in project_scopes(principal, project)
    return scope in organization_scopes(principal, organization)


def can_see_organization(principal: Principal, organization: Organization) -> bool:
    return bool(organization_scopes(principal, organization))


def visible_organizations(principal: Principal) -> QuerySet[Organization]:
    if principal.api_key is not None:
        key = principal.api_key
        if not key.is_active:
            return Organization.objects.none()
        return Organization.objects.filter(
            pk=key.organization_id, memberships__user=key.created_by, closed_at__isnull=True
        )
    if principal.user is None:
        return Organization.objects.none()
    return Organization.objects.filter(memberships__user=principal.user, closed_at__isnull=True)


def visible_projects(principal: Principal, organization: Organization, queryset: QuerySet) -> QuerySet:
    """Narrows a queryset of the organization's projects to those the principal may read."""
    if not two_factor_satisfied(principal, organization):
        return queryset.none()
    membership = principal.membership(organization)
    if membership is None:
        return queryset.none()
    key = principal.api_key
    if key is not None:
        if key.organization_id != organization.pk or not key.is_active:
            return queryset.none()
        if principal.key_limited:
            queryset = queryset.filter(pk__in=principal.key_project_ids())
    if "project:read" in scopes_for_roles(membership.roles):
        return queryset
    return queryset.filter(grants__membership=membership).distinct()


def grantable(principal: Principal, *, organization: Organization, roles, project=None) -> bool:
    """A principal may hand out (to a member or an API key) only roles whose scopes it holds itself. On a project
    that is what the roles grant in a project: a key limited to projects holds only the project scopes of its role
    (see project_scopes), so an organization role's other scopes (billing, members) are nothing it could hand out
    there."""
    wanted = scopes_for_roles(roles)
    if project is not None:
        return (wanted & PROJECT_SCOPES) <= project_scopes(principal, project)
    held = organization_scopes(principal, organization)
    return wanted <= held


def can_manage_api_key(principal: Principal, key: ApiKey) -> bool:
    """Whether the principal could create this very key today: its role within the principal's own rights, and on
    each of its projects for a project-limited key. Reading a key's details, rotating, revoking and editing it all
    need this, so no key lends its holder more than the holder could have given itself."""
    projects = list(key.projects.all())
    if key.limited_to_projects and not projects:
        # A limited key left with no project reaches nothing: whoever may manage keys at all may revoke it.
        return True
    # Its role within the principal's own (an Administrator never handles an Owner key, limited or not), and on each
    # project of a limited key what that role grants there.
    return grantable(principal, organization=key.organization, roles=[key.role]) and all(
        grantable(principal, organization=key.organization, roles=[key.role], project=project) for project in projects
    )
