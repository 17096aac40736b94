"""Enumerates every operation under /api/v1 from the URL map, and makes sample objects for its path parameters.

Used by the tenancy and role-matrix tests so that a new endpoint is covered the moment it is routed. A new path
parameter needs a sample maker in SAMPLE_MAKERS; until it has one those tests fail and say so.
"""
from __future__ import annotations

import dataclasses
import datetime
import re

from django.urls import URLPattern, URLResolver, get_resolver
from django.utils import timezone

METHODS = ("get", "post", "put", "patch", "delete")
# Django path converters (<str:org>) and the routers' regex groups ((?P<key>[a-z0-9_]+)).
_PARAM = re.compile(r"\(\?P<(\w+)>[^)]*\)|<(?:\w+:)?(\w+)>")


@dataclasses.dataclass(frozen=True)
class Operation:
    route: str  # e.g. "api/v1/organizations/<str:org>/projects/<str:project>"
    method: str
    callback: object

    @property
    def kwargs(self) -> list[str]:
        return [a or b for a, b in _PARAM.findall(self.route)]

    @property
    def view_class(self):
        return getattr(self.callback, "cls", None) or getattr(self.callback, "view_class", None)

    @property
    def action(self) -> str | None:
        actions = getattr(self.callback, "actions", None)
        return actions.get(self.method) if actions else None

    @property
    def required_scope(self) -> str | None:
        cls = self.view_class
        scopes = getattr(cls, "required_scopes", None)
        if scopes is None:
            return None
        return scopes.get(self.action or self.method)

    @property
    def scope_level(self) -> str:
        return getattr(self.view_class, "scope_level", "organization")

    def url(self, values: dict[str, str]) -> str:
        path = _PARAM.sub(lambda m: values[m.group(1) or m.group(2)], self.route)
        return "/" + path

    def __str__(self):
        return f"{self.method.upper()} /" + _PARAM.sub(lambda m: "{" + (m.group(1) or m.group(2)) + "}", self.route)


def _walk(patterns, prefix=""):
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            yield from _walk(pattern.url_patterns, prefix + str(pattern.pattern))
        elif isinstance(pattern, URLPattern):
            yield prefix + str(pattern.pattern), pattern.callback


def api_operations() -> list[Operation]:
    operations = []
    for route, callback in _walk(get_resolver().url_patterns):
        if not route.startswith("api/v1/"):
            continue
        route = route.replace("^", "").replace("$", "")
        actions = getattr(callback, "actions", None)
        if actions:
            methods = [m for m in actions if m in METHODS]
        else:
            cls = getattr(callback, "cls", None) or getattr(callback, "view_class", None)
            methods = [m for m in METHODS if cls is not None and hasattr(cls, m)]
        operations.extend(Operation(route, method, callback) for method in methods)
    return operations


def tenant_operations() -> list[Operation]:
    return [op for op in api_operations() if "org" in op.kwargs]


# --- Sample objects -------------------------------------------------------------------------------------------


def _member(org):
    _user, membership = org.add_member(roles=["auditor"])
    return membership.public_id


def _invitation(org):
    from organizations import services

    invitation, _ = services.invitation_create(organization=org.organization, actor=None,
                                               email=f"invitee-{timezone.now().timestamp()}@example.com",
                                               roles=["auditor"])
    return invitation.public_id


def _key(org):
    key, _ = org.key_for(org.owner, role="auditor")
    return key.public_id


def _event(org):
    from audit.models import AuditEvent

    return AuditEvent.objects.filter(organization=org.organization).latest("created_at").public_id


def _project(org):
    from projects import services

    project = services.project_create(organization=org.organization, actor=None,
                                      name=f"Sample {timezone.now().timestamp()}")
    return project.public_id


SAMPLE_MAKERS = {
    "org": lambda org: org.id,
    "project": lambda org: org.default_project.public_id,
    "member": _member,
    "invitation": _invitation,
    "key": _key,
    "event": _event,
}

# Fresh, disposable targets for destructive calls (so that DELETE really has something to remove).
DISPOSABLE_MAKERS = {
    "project": _project,
}


def sample_values(org, kwargs, *, disposable: bool = False) -> dict[str, str]:
    values = {}
    for name in kwargs:
        maker = (DISPOSABLE_MAKERS.get(name) if disposable else None) or SAMPLE_MAKERS.get(name)
        if maker is None:
            raise AssertionError(
                f"No sample maker for path parameter <{name}>: add one to SAMPLE_MAKERS in tests/api_walk.py so the "
                "tenancy and role tests cover the new endpoint."
            )
        values[name] = maker(org)
    return values


def later(days: int = 30) -> str:
    return (timezone.now() + datetime.timedelta(days=days)).isoformat()
