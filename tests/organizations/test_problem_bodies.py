"""Services in accounts, organizations, projects, audit and idempotency raise controlplane.errors, never DRF's
exceptions, and the API still answers them with exactly the problem bodies it always has."""

import ast
import pathlib

import pytest

pytestmark = pytest.mark.django_db

ROOT = pathlib.Path(__file__).resolve().parents[2]
SERVICE_MODULES = [
    "accounts/services.py",
    "accounts/signin.py",
    "accounts/two_factor.py",
    "organizations/services.py",
    "organizations/access.py",
    "projects/services.py",
    "audit/services.py",
    "idempotency/tasks.py",
]


def _body(response):
    body = response.json()
    body.pop("request_id", None)
    return body


def test_services_import_neither_drf_nor_the_api_layer():
    for relative in SERVICE_MODULES:
        path = ROOT / relative
        if not path.exists():
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            for name in names:
                assert not name.startswith(("rest_framework", "controlplane.api")), (relative, name)


def test_conflict_on_a_field_reads_as_before_when_inviting_a_member(owner_org, key_client):
    member, _ = owner_org.add_member(roles=["auditor"])
    response = key_client(owner_org.owner_secret).post(
        f"/api/v1/organizations/{owner_org.id}/invitations",
        {"email": member.email, "roles": ["auditor"]},
        format="json",
    )
    message = f"{member.email} is already a member of this organization."
    assert response.status_code == 409
    assert response["Content-Type"] == "application/problem+json"
    assert _body(response) == {
        "type": "https://docs.mqtt-cloud.example/problems/conflict",
        "title": "Conflict",
        "status": 409,
        "detail": message,
        "errors": [{"field": "email", "message": message, "code": "conflict"}],
    }


def test_conflict_without_a_field_reads_as_before_when_removing_the_last_owner(owner_org, key_client):
    from organizations.models import Membership

    membership = Membership.objects.get(organization=owner_org.organization, user=owner_org.owner)
    response = key_client(owner_org.owner_secret).delete(
        f"/api/v1/organizations/{owner_org.id}/members/{membership.public_id}"
    )
    assert _body(response) == {
        "type": "https://docs.mqtt-cloud.example/problems/conflict",
        "title": "Conflict",
        "status": 409,
        "detail": "An organization must keep at least one Owner: transfer ownership first.",
        "errors": [],
    }


def test_role_too_high_reads_as_before_when_granting_above_ones_rights(owner_org, key_client):
    admin, _ = owner_org.add_member(roles=["administrator"])
    _key, secret = owner_org.key_for(admin, role="administrator")
    response = key_client(secret).post(
        f"/api/v1/organizations/{owner_org.id}/api-keys", {"name": "x", "role": "owner"}, format="json"
    )
    message = "You cannot create a key with more rights than your own."
    assert _body(response) == {
        "type": "https://docs.mqtt-cloud.example/problems/role-too-high",
        "title": "Permission denied",
        "status": 403,
        "detail": message,
        "errors": [{"field": "role", "message": message, "code": "role-too-high"}],
    }


def test_validation_reads_as_before_when_a_project_grant_is_unknown(owner_org, key_client):
    _user, target = owner_org.add_member(roles=["auditor"])
    response = key_client(owner_org.owner_secret).patch(
        f"/api/v1/organizations/{owner_org.id}/members/{target.public_id}",
        {"project_grants": [{"project": "prj_missing", "role": "project_user"}]},
        format="json",
    )
    message = "No project prj_missing in this organization."
    assert _body(response) == {
        "type": "https://docs.mqtt-cloud.example/problems/validation-error",
        "title": "Invalid request",
        "status": 400,
        "detail": f"project_grants: {message}",
        "errors": [{"field": "project_grants", "message": message, "code": "invalid"}],
    }


def test_project_name_conflict_reads_as_before_when_taken(owner_org, key_client):
    url = f"/api/v1/organizations/{owner_org.id}/projects"
    client = key_client(owner_org.owner_secret)
    client.post(url, {"name": "Twice"}, format="json")
    response = client.post(url, {"name": "twice"}, format="json")
    message = "A project named 'twice' already exists in this organization."
    assert _body(response) == {
        "type": "https://docs.mqtt-cloud.example/problems/conflict",
        "title": "Conflict",
        "status": 409,
        "detail": message,
        "errors": [{"field": "name", "message": message, "code": "conflict"}],
    }


def test_weak_password_reads_as_before_when_accepting_an_invitation(owner_org, api):
    from organizations import services

    _invitation, token = services.invitation_create(
        organization=owner_org.organization, actor=None, email="new@example.com", roles=["auditor"]
    )
    response = api.post("/api/v1/invitations/accept", {"token": token, "password": "123"}, format="json")
    body = _body(response)
    assert response.status_code == 400 and body["type"].endswith("/validation-error")
    assert body["errors"] and all(e["field"] is None and e["code"] == "invalid" for e in body["errors"])
    assert body["detail"] == "; ".join(e["message"] for e in body["errors"])
