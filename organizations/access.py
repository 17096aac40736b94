"""Who may do what, decided in one place.

A Principal is the caller: a user (console session) or an API key (acting for the member who created it, never with
more than that member holds now). Every check reduces to "does the principal hold scope S in this organization or
project". Objects of organizations the principal is not in are invisible, so callers answer 404, never 403.
"""

from __future__ import annotations

import dataclasses

from django.db.models import QuerySet

from organizations.models import ApiKey, Membership, Organization
from organizations.roles import MEMBER_BASE_SCOPES, PROJECT_SCOPES, ROLE_SCOPES, scopes_for_roles


def acting_user(actor):
    """The user a principal acts for: its session's user, or the member who created its API key; None for the
    system (actor None)."""
    key = getattr(actor, "api_key", None)
    return getattr(actor, "user", None) or (key.created_by if key is not None else None)


@dataclasses.dataclass(eq=False)
class Principal:
    user: object | None = None
    api_key: ApiKey | None = None
    # Per-request memo: membership lookups are made once however many checks a request runs.
    _memberships: dict = dataclasses.field(default_factory=dict, repr=False)
    _grants: dict = dataclasses.field(default_factory=dict, repr=False)

    @classmethod
    def from_request(cls, request) -> Principal:
        cached = getattr(request, "_principal", None)
        if cached is not None:
            return cached
        auth = getattr(request, "auth", None)
        user = getattr(request, "user", None)
        principal = cls(
            user=user if user is not None and user.is_authenticated else None,
            api_key=auth if isinstance(auth, ApiKey) else None,
        )
        if principal.api_key is not None:
            principal._remember_key_facts()
        request._principal = principal
        return principal

    def _remember_key_facts(self) -> None:
        """Seed the memo with what authentication already read with the key (organizations.services.
        api_key_authenticate): the creator's membership now, and whether the key is limited to projects."""
        key = self.api_key
        if not hasattr(key, "creator_membership"):
            return
        membership = key.creator_membership
        self._memberships[key.organization_id] = membership
        if not key.limited_to_projects:
            key._project_ids = set()

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

    def _member_grants(self, membership: Membership) -> dict[int, str]:
        if membership.pk not in self._grants:
            self._grants[membership.pk] = dict(membership.grants.values_list("project_id", "role"))
        return self._grants[membership.pk]


def member_organization(principal: Principal, org_public_id: str) -> Organization | None:
    """The organization with this public id if the principal's user is a member of it, else None: one query that
    also remembers the membership for the scope checks that follow."""
    key = principal.api_key
    if (
        key is not None
        and key.organization.public_id == org_public_id
        and key.organization_id in principal._memberships
    ):
        membership = principal._memberships[key.organization_id]
        return None if membership is None else membership.organization
    user = acting_user(principal)
    if user is None:
        return None
    membership = (
        Membership.objects.select_related("organization")
        .filter(organization__public_id=org_public_id, user=user)
        .first()
    )
    if membership is None:
        return None
    principal._memberships[membership.organization_id] = membership
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


def _key_project_ids(key: ApiKey) -> set[int]:
    if not hasattr(key, "_project_ids"):
        key._project_ids = set(key.projects.values_list("pk", flat=True))
    return key._project_ids


def organization_scopes(principal: Principal, organization: Organization) -> frozenset[str]:
    """Scopes the principal holds at organization level (empty: the organization is invisible to it)."""
    membership = principal.membership(organization)
    member_scopes = _member_org_scopes(membership)
    key = principal.api_key
    if key is None:
        return member_scopes
    if key.organization_id != organization.pk or not key.is_active:
        return frozenset()
    if _key_project_ids(key):
        # A project-limited key sees its organization, nothing more, outside its projects.
        return MEMBER_BASE_SCOPES & member_scopes
    return (MEMBER_BASE_SCOPES | ROLE_SCOPES[key.role]) & member_scopes


def project_scopes(principal: Principal, project) -> frozenset[str]:
    organization = project.organization
    membership = principal.membership(organization)
    member_scopes = _member_project_scopes(principal, membership, project)
    key = principal.api_key
    if key is None:
        return member_scopes
    if key.organization_id != organization.pk or not key.is_active:
        return frozenset()
    project_ids = _key_project_ids(key)
    if project_ids and project.pk not in project_ids:
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
        return Organization.objects.filter(pk=key.organization_id, memberships__user=key.created_by)
    if principal.user is None:
        return Organization.objects.none()
    return Organization.objects.filter(memberships__user=principal.user)


def visible_projects(principal: Principal, organization: Organization, queryset: QuerySet) -> QuerySet:
    """Narrows a queryset of the organization's projects to those the principal may read."""
    membership = principal.membership(organization)
    if membership is None:
        return queryset.none()
    key = principal.api_key
    if key is not None:
        if key.organization_id != organization.pk or not key.is_active:
            return queryset.none()
        if _key_project_ids(key):
            queryset = queryset.filter(pk__in=_key_project_ids(key))
    if "project:read" in scopes_for_roles(membership.roles):
        return queryset
    return queryset.filter(grants__membership=membership).distinct()


def grantable(principal: Principal, *, organization: Organization, roles, project=None) -> bool:
    """A principal may hand out (to a member or an API key) only roles whose scopes it holds itself."""
    wanted = scopes_for_roles(roles)
    if project is not None:
        return wanted <= project_scopes(principal, project)
    held = organization_scopes(principal, organization)
    return wanted <= held
