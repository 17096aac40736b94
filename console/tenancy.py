"""Which organization, project and deployment a console page is about, resolved once per request from the URL.

Every decision comes from organizations.access, the module the API uses: something the caller may not see is a 404,
something it sees but may not change is a 403. This module never compares role names and never reads a tenant from a
form body.
"""

from __future__ import annotations

import dataclasses

from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.urls import NoReverseMatch, reverse

from controlplane.ids import holds_nul
from deployments import selectors as deployment_selectors
from deployments.models import Deployment
from organizations import access
from organizations.models import Organization
from projects.models import Project

# The request attribute where a page's scope checks are kept (a set), when console.once asks for them.
REQUIRED_ATTRIBUTE = "console_required"


@dataclasses.dataclass
class NavEntry:
    key: str
    label: str
    url: str


@dataclasses.dataclass(frozen=True)
class OrganizationChoice:
    """An organization as the caller's lists show it (the home page, the switcher). `name` is None while the
    organization requires two-factor authentication and this session was not verified by a second factor: its name
    is its data, which such a session may not read; the entry still leads there, and so to verifying."""

    pk: int
    public_id: str
    name: str | None

    @property
    def needs_two_factor(self) -> bool:
        return self.name is None


def organization_choices(principal: access.Principal) -> list[OrganizationChoice]:
    """The organizations the caller belongs to: those it may read by name, then the others by id (so not even their
    place in the alphabet shows)."""
    choices = [
        OrganizationChoice(
            organization.pk,
            organization.public_id,
            organization.name if access.two_factor_satisfied(principal, organization) else None,
        )
        for organization in access.visible_organizations(principal).order_by("name", "id")
    ]
    named = [choice for choice in choices if not choice.needs_two_factor]
    return named + sorted((choice for choice in choices if choice.needs_two_factor), key=lambda c: c.public_id)


@dataclasses.dataclass
class Console:
    """The caller's view of one organization (and maybe one project of it) for one request."""

    request: object
    principal: access.Principal
    organization: Organization
    org_scopes: frozenset[str]
    project: Project | None = None
    project_scopes: frozenset[str] = frozenset()
    deployment: Deployment | None = None
    section: str = ""
    breadcrumbs: list[tuple[str, str | None]] = dataclasses.field(default_factory=list)
    # A section's own tabs (key, label, url, current), e.g. Billing's.
    tabs: list[tuple[str, str, str, bool]] = dataclasses.field(default_factory=list)
    _projects: list[Project] | None = None
    _organizations: list[OrganizationChoice] | None = None

    # -- what the caller may do -----------------------------------------------------------------------------

    def can(self, scope: str) -> bool:
        """Organization-level scope."""
        return scope in self.org_scopes

    def can_in_project(self, scope: str, project: Project | None = None) -> bool:
        project = project or self.project
        if project is None:
            return False
        if project is self.project:
            return scope in self.project_scopes
        return access.has_scope(self.principal, scope, organization=self.organization, project=project)

    def require(self, scope: str) -> None:
        self._note(scope, None)
        if not self.can(scope):
            raise PermissionDenied(f"This needs the {scope} scope, which your role does not grant.")

    def require_in_project(self, scope: str, project: Project | None = None) -> None:
        self._note(scope, project or self.project)
        if not self.can_in_project(scope, project):
            raise PermissionDenied(f"This needs the {scope} scope on this project, which your role does not grant.")

    def _note(self, scope: str, project: Project | None) -> None:
        """Keep what the page required for console.once, which checks it again before it replays the page."""
        required = getattr(self.request, REQUIRED_ATTRIBUTE, None)
        if required is not None:
            required.add((scope, project.pk if project is not None else None))

    def still_allows(self, required: list) -> bool:
        """Whether the caller still holds every (scope, project pk or None) in `required`, as Console._note kept."""
        for scope, project_pk in required:
            if project_pk is None:
                if not self.can(scope):
                    return False
                continue
            project = Project.objects.filter(organization=self.organization, pk=project_pk).first()
            if project is None or not self.can_in_project(scope, project):
                return False
        return True

    # -- what the layout shows ------------------------------------------------------------------------------

    @property
    def membership(self):
        return self.principal.membership(self.organization)

    @property
    def organizations(self) -> list[OrganizationChoice]:
        if self._organizations is None:
            self._organizations = organization_choices(self.principal)
        return self._organizations

    @property
    def projects(self) -> list[Project]:
        if self._projects is None:
            queryset = Project.objects.filter(organization=self.organization)
            visible = access.visible_projects(self.principal, self.organization, queryset)
            self._projects = list(visible.order_by("-is_default", "name", "id"))
            for project in self._projects:
                project.organization = self.organization
        return self._projects

    @property
    def home_project(self) -> Project | None:
        return self.project or (self.projects[0] if self.projects else None)

    @property
    def nav(self) -> list[NavEntry]:
        org = self.organization.public_id
        entries = [NavEntry("projects", "Projects", reverse("console:organization", args=[org]))]
        home = self.home_project
        if home is not None:
            entries.append(
                NavEntry("deployments", "Deployments", reverse("console:project", args=[org, home.public_id]))
            )
        if self.can("alert:read") or (self.project is not None and "alert:read" in self.project_scopes):
            entries.append(NavEntry("alerts", "Alerts", reverse("console:alerts", args=[org])))
        if self.can("member:read"):
            entries.append(NavEntry("members", "Members", reverse("console:members", args=[org])))
        if self.can("apikey:read"):
            entries.append(NavEntry("api-keys", "API keys", reverse("console:api-keys", args=[org])))
        if self.can("audit:read"):
            entries.append(NavEntry("audit", "Audit log", reverse("console:audit", args=[org])))
        if self.can("billing:read"):
            entries.append(NavEntry("billing", "Billing", reverse("console:billing", args=[org])))
        if self.can("org:write") or self.can("org:transfer"):
            entries.append(NavEntry("settings", "Settings", reverse("console:settings", args=[org])))
        return entries

    @property
    def overdue(self):
        """Open invoices past due and the day billing stops the deployments: a banner on every page of the
        organization (the amounts stay on the Billing pages)."""
        if not hasattr(self, "_overdue"):
            from billing.selectors import overdue_notice

            self._overdue = overdue_notice(organization_id=self.organization.pk)
        return self._overdue

    def crumb(self, label: str, url: str | None = None) -> Console:
        self.breadcrumbs.append((label, url))
        return self


def security_settings_url() -> str:
    """The signed-in user's security settings (two-factor authentication), owned by the account pages."""
    for name in ("console:account-security", "console:two-factor"):
        try:
            return reverse(name)
        except NoReverseMatch:
            continue
    return "/console/account/two-factor"


def for_organization(request, org_id: str, *, section: str = "") -> Console:
    # Every id and name in the page's URL, not only the organization's: the page looks the others up next.
    match = request.resolver_match
    if holds_nul(org_id, *(match.kwargs.values() if match is not None else ())):
        raise Http404("No such page.")
    principal = access.Principal.from_request(request)
    organization = access.member_organization(principal, org_id) if isinstance(org_id, str) else None
    if organization is None or not access.can_see_organization(principal, organization):
        raise Http404("No such organization.")
    console = Console(
        request=request,
        principal=principal,
        organization=organization,
        org_scopes=access.organization_scopes(principal, organization),
        section=section,
    )
    console.crumb(organization.name, reverse("console:organization", args=[organization.public_id]))
    return console


def for_project(request, org_id: str, project_id: str, *, section: str = "deployments") -> Console:
    console = for_organization(request, org_id, section=section)
    project = Project.objects.filter(organization=console.organization, public_id=project_id).first()
    if project is None:
        raise Http404("No such project.")
    project.organization = console.organization
    scopes = access.project_scopes(console.principal, project)
    if "project:read" not in scopes:
        raise Http404("No such project.")
    console.project, console.project_scopes = project, scopes
    console.crumb(project.name, reverse("console:project", args=[console.organization.public_id, project.public_id]))
    return console


def for_deployment(request, org_id: str, project_id: str, dep_id: str, *, section: str = "deployments") -> Console:
    console = for_project(request, org_id, project_id, section=section)
    console.require_in_project("deployment:read")
    deployment = (
        deployment_selectors.deployment_detail_queryset().filter(project=console.project, public_id=dep_id).first()
    )
    if deployment is None:
        raise Http404("No such deployment.")
    deployment.project = console.project
    console.deployment = deployment
    console.crumb(deployment.name, deployment_url(deployment))
    return console


def deployment_url(deployment: Deployment, page: str = "deployment") -> str:
    project = deployment.project
    return reverse(f"console:{page}", args=[project.organization.public_id, project.public_id, deployment.public_id])
