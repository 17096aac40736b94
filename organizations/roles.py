"""Roles and scopes: the one table that says what each role may do (the six roles EMQX Cloud has).

Every API operation names the scope it needs; nothing else in the code base compares role names.
Organization roles apply to every project; project roles apply to the projects they are granted on.
"""

from django.db import models


class Role(models.TextChoices):
    OWNER = "owner", "Owner"
    ADMINISTRATOR = "administrator", "Administrator"
    PROJECT_ADMINISTRATOR = "project_administrator", "Project Administrator"
    PROJECT_USER = "project_user", "Project User"
    ACCOUNTANT = "accountant", "Accountant"
    AUDITOR = "auditor", "Auditor"


ORGANIZATION_ROLES = frozenset({Role.OWNER, Role.ADMINISTRATOR, Role.ACCOUNTANT, Role.AUDITOR})
PROJECT_ROLES = frozenset({Role.PROJECT_ADMINISTRATOR, Role.PROJECT_USER})
# Choice lists for serializers and the OpenAPI enums (named in SPECTACULAR_SETTINGS["ENUM_NAME_OVERRIDES"]).
ORGANIZATION_ROLE_CHOICES = [(r.value, r.label) for r in Role if r in ORGANIZATION_ROLES]
PROJECT_ROLE_CHOICES = [(r.value, r.label) for r in Role if r in PROJECT_ROLES]

# Scopes that only make sense inside a project; a project role grants these (and only these) on its projects.
PROJECT_SCOPES = frozenset(
    {
        "project:read",
        "deployment:read",
        "deployment:write",  # create, move, start/stop/restart, change tier, delete
        "deployment:configure",  # rename; TLS, VPC, MQTT users, ACL, rate limits, alert rules
        "deployment:annual",  # switch a deployment to an annual plan
        "alert:read",
        "device:read",  # Premium: devices, groups, shadows and their history
        "device:write",  # Premium: register, change, disable, import and delete devices; change shadows
    }
)

ORGANIZATION_SCOPES = frozenset(
    {
        "org:read",
        "org:write",
        "org:delete",
        "org:transfer",
        "org:security",  # sign-in policy: require two-factor authentication of members
        "member:read",
        "member:write",
        "project:write",  # create, rename, delete projects
        "apikey:read",
        "apikey:write",
        "audit:read",
        "billing:read",
        "billing:write",
        "channel:read",
        "channel:write",
    }
)

ALL_SCOPES = PROJECT_SCOPES | ORGANIZATION_SCOPES
READ_SCOPES = frozenset(scope for scope in ALL_SCOPES if scope.endswith(":read"))

ROLE_SCOPES: dict[str, frozenset[str]] = {
    Role.OWNER: ALL_SCOPES,
    Role.ADMINISTRATOR: ALL_SCOPES - {"org:delete", "org:transfer", "org:security"},
    Role.PROJECT_ADMINISTRATOR: frozenset(
        {
            "project:read",
            "deployment:read",
            "deployment:write",
            "deployment:configure",
            "deployment:annual",
            "alert:read",
            "device:read",
            "device:write",
        }
    ),
    Role.PROJECT_USER: frozenset(
        {"project:read", "deployment:read", "deployment:configure", "alert:read", "device:read", "device:write"}
    ),
    Role.ACCOUNTANT: frozenset(
        {"org:read", "project:read", "deployment:read", "billing:read", "billing:write", "deployment:annual"}
    ),
    Role.AUDITOR: READ_SCOPES,
}

# Any member can read the organization it belongs to.
MEMBER_BASE_SCOPES = frozenset({"org:read"})


def scopes_for_roles(roles) -> frozenset[str]:
    result: set[str] = set()
    for role in roles:
        result |= ROLE_SCOPES[role]
    return frozenset(result)
