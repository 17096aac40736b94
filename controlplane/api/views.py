"""The base of every tenant API view: resolves the organization (and project) from the URL, once, and checks scopes.

Subclasses declare `queryset`, `tenant_field` and `required_scopes` (action -> scope), and `action_checks` (action
-> the name of a method that refuses a caller who may not do this to this object, or with this input, now); they may
not override `get_queryset` or `get_object` (a TypeError at import time says so): narrowing goes through
`narrow_queryset`, which can only ever filter further. Another organization's object is a 404, exactly like a missing
one. Every check runs in `initial()`, which an idempotent replay runs too before it answers from its record.
"""

from typing import TYPE_CHECKING, Any

from django.core.exceptions import ImproperlyConfigured
from django.db.models import Manager, Model, QuerySet
from rest_framework import exceptions, viewsets
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from controlplane.ids import holds_nul
from organizations import access
from projects.models import Project

# The mixin only ever sits in front of an APIView; typed as one so super() resolves.
if TYPE_CHECKING:
    _ViewBase = APIView
else:
    _ViewBase = object


class RateLimitHeadersMixin(_ViewBase):
    """Copies the rate-limit decision the throttle made into every response, errors included."""

    def finalize_response(self, request: Request, response: Response, *args: Any, **kwargs: Any) -> Response:
        response = super().finalize_response(request, response, *args, **kwargs)
        decision = getattr(request, "_rate_limit", None)
        if decision is not None:
            for name, value in decision.headers().items():
                response[name] = value
        return response


class PublicAPIView(RateLimitHeadersMixin, APIView):
    """Unauthenticated, tenant-less views (the catalog)."""

    authentication_classes: list[Any] = []
    permission_classes: list[Any] = []


class ScopedViewSet(RateLimitHeadersMixin, viewsets.GenericViewSet[Any]):
    lookup_field = "public_id"
    lookup_value_regex = r"[a-z]{2,5}_[a-z0-9]{1,40}"
    tenant_field = "organization"  # or "project", or a lookup path such as "deployment__project"
    required_scopes: dict[str, str] = {}
    # action -> name of a method (no arguments) that raises when the caller may not perform the action on the object
    # in the URL, or with the request's input, as things stand now (a rule beyond the scope, such as "only who could
    # create this API key may rotate it"). Input it cannot read is left to the action to refuse.
    action_checks: dict[str, str] = {}
    # "organization": scopes are checked at organization level; "project": on the project in the URL.
    scope_level = "organization"

    _TENANCY_METHODS = ("get_queryset", "get_object", "initial")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in cls._TENANCY_METHODS:
            if name in cls.__dict__:
                raise TypeError(
                    f"{cls.__name__} overrides {name}(): tenancy is resolved only in ScopedViewSet. "
                    "Use narrow_queryset() to filter further."
                )

    # -- tenancy ---------------------------------------------------------------------------------------------

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        self.format_kwarg = self.get_format_suffix(**kwargs)
        neg = self.perform_content_negotiation(request)
        request.accepted_renderer, request.accepted_media_type = neg
        version, scheme = self.determine_version(request, *args, **kwargs)
        request.version, request.versioning_scheme = version, scheme
        self.perform_authentication(request)
        if request.user is None or not request.user.is_authenticated:
            self.check_throttles(request)  # strangers spend their own address's bucket, never the organization's
            raise exceptions.NotAuthenticated()
        self.principal = access.Principal.from_request(request)
        try:
            self.resolve_tenant()
        finally:
            # Probing for tenants is throttled too (per principal), but only a member of the organization in the
            # URL spends its bucket: the throttle charges `org:<id>` once self.organization is resolved.
            self.check_throttles(request)
        self.check_permissions(request)
        self.check_scope()
        check = self.action_checks.get(self.action)
        if check is not None:
            getattr(self, check)()

    def resolve_tenant(self) -> None:
        if holds_nul(*self.kwargs.values()):  # no id or name holds one; PostgreSQL would refuse the lookup
            raise exceptions.NotFound()
        org_id = self.kwargs.get("org")
        organization = access.member_organization(self.principal, org_id) if isinstance(org_id, str) else None
        if organization is None or not access.can_see_organization(self.principal, organization):
            raise exceptions.NotFound("No such organization.")
        self.organization = organization
        self.project = None
        project_id = self.kwargs.get("project")
        if project_id is not None:
            project = Project.objects.filter(organization=organization, public_id=project_id).first()
            if project is not None:
                project.organization = organization  # the row just matched on it: the scope check reads it, unqueried
            if project is None or not access.has_scope(
                self.principal, "project:read", organization=organization, project=project
            ):
                raise exceptions.NotFound("No such project.")
            self.project = project

    def required_scope(self) -> str:
        action = getattr(self, "action", None)
        # A method this view does not route (DRF names OPTIONS "metadata", which we do not serve): 405.
        if action is None or self.request.method == "OPTIONS":
            raise exceptions.MethodNotAllowed(str(self.request.method))
        try:
            return self.required_scopes[action]
        except KeyError:  # fail closed: an operation nobody declared a scope for is a bug, not an open door
            raise ImproperlyConfigured(f"{type(self).__name__} declares no scope for action {action!r}") from None

    def check_scope(self) -> None:
        scope = self.required_scope()
        project = self.project if self.scope_level == "project" else None
        if not access.has_scope(self.principal, scope, organization=self.organization, project=project):
            raise exceptions.PermissionDenied(f"This needs the {scope} scope, which your role does not grant.")

    def tenant(self) -> Model:
        if self.tenant_field.split("__")[-1] != "project":
            return self.organization
        if self.project is None:
            raise ImproperlyConfigured(f"{type(self).__name__} is scoped to a project but its URL names none")
        return self.project

    def narrow_queryset(self, queryset: QuerySet[Any]) -> QuerySet[Any]:
        return queryset

    def get_queryset(self) -> QuerySet[Any]:
        declared: QuerySet[Any] | Manager[Any] | None = type(self).queryset
        if declared is None:
            raise ImproperlyConfigured(f"{type(self).__name__} declares no queryset")
        queryset = declared.all().filter(**{self.tenant_field: self.tenant().pk})
        return self.narrow_queryset(queryset)

    def get_object(self) -> Any:
        lookup = self.kwargs[self.lookup_url_kwarg or self.lookup_field]
        obj = self.get_queryset().filter(**{self.lookup_field: lookup}).first()
        if obj is None:
            raise exceptions.NotFound()
        self.check_object_permissions(self.request, obj)
        return obj

    def audit_actor(self) -> access.Principal:
        return self.principal
