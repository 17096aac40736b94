import time

import pytest

from audit.models import AuditEvent
from projects.models import Project

pytestmark = pytest.mark.django_db


def test_project_lifecycle_is_audited(owner_org, key_client):
    client = key_client(owner_org.owner_secret)
    base = f"/api/v1/organizations/{owner_org.id}/projects"
    created = client.post(base, {"name": "Telemetry", "description": "Line 3"}, format="json")
    assert created.status_code == 201, created.content
    pid = created.json()["id"]
    assert pid.startswith("prj_")
    assert client.patch(f"{base}/{pid}", {"name": "Telemetry EU"}, format="json").json()["name"] == "Telemetry EU"
    assert client.get(f"{base}/{pid}").json()["description"] == "Line 3"
    assert client.delete(f"{base}/{pid}").status_code == 204
    assert not Project.objects.filter(public_id=pid).exists()
    assert list(AuditEvent.objects.filter(target_id=pid).order_by("id").values_list("action", flat=True)) == [
        "project.create",
        "project.update",
        "project.delete",
    ]
    event = AuditEvent.objects.get(target_id=pid, action="project.update")
    assert event.summary == {"name": ["Telemetry", "Telemetry EU"]}
    assert event.via == "api" and event.api_key_prefix == owner_org.owner_key.prefix and event.request_id


def test_duplicate_name_is_refused_case_insensitively(owner_org, key_client):
    client = key_client(owner_org.owner_secret)
    response = client.post(f"/api/v1/organizations/{owner_org.id}/projects", {"name": "default PROJECT"}, format="json")
    assert response.status_code == 409
    assert response.json()["errors"][0]["field"] == "name"


def test_default_project_cannot_be_deleted(owner_org, key_client):
    response = key_client(owner_org.owner_secret).delete(
        f"/api/v1/organizations/{owner_org.id}/projects/{owner_org.default_project.public_id}"
    )
    assert response.status_code == 409
    assert Project.objects.filter(pk=owner_org.default_project.pk).exists()


def test_projects_can_be_filtered_by_name(owner_org, key_client):
    client = key_client(owner_org.owner_secret)
    for name in ("Alpha", "Beta", "Alphabet"):
        client.post(f"/api/v1/organizations/{owner_org.id}/projects", {"name": name}, format="json")
    names = [
        p["name"] for p in client.get(f"/api/v1/organizations/{owner_org.id}/projects?name=alpha").json()["results"]
    ]
    assert sorted(names) == ["Alpha", "Alphabet"]


def test_project_member_sees_only_granted_projects(owner_org, key_client, api):
    from projects import services

    hidden = services.project_create(organization=owner_org.organization, actor=None, name="Hidden")
    user, _ = owner_org.add_member(project_grants=[(owner_org.default_project, "project_user")])
    api.force_login(user)
    names = [p["name"] for p in api.get(f"/api/v1/organizations/{owner_org.id}/projects").json()["results"]]
    assert names == ["Default project"]
    assert api.get(f"/api/v1/organizations/{owner_org.id}/projects/{hidden.public_id}").status_code == 404


def test_cursor_pagination_walks_every_project_once(owner_org, key_client):
    client = key_client(owner_org.owner_secret)
    for n in range(7):
        client.post(f"/api/v1/organizations/{owner_org.id}/projects", {"name": f"P{n}"}, format="json")
    seen, url = [], f"/api/v1/organizations/{owner_org.id}/projects?page_size=3"
    while url:
        page = client.get(url).json()
        seen += [p["id"] for p in page["results"]]
        url = page["next"]
    assert len(seen) == len(set(seen)) == 8


def test_project_with_only_deleted_deployments_is_hidden_and_its_name_freed_when_deleted(owner_org, key_client):
    from deployments import services as deployment_services
    from deployments.models import Deployment
    from projects import services

    project = services.project_create(organization=owner_org.organization, actor=None, name="Short-lived")
    deployment, _ = deployment_services.deployment_create(
        project=project, actor=None, name="gone", plan="dedicated", tier="1k", region="local"
    )
    Deployment.objects.filter(pk=deployment.pk).update(status="deleted")
    client = key_client(owner_org.owner_secret)
    base = f"/api/v1/organizations/{owner_org.id}/projects"
    assert client.delete(f"{base}/{project.public_id}").status_code == 204
    assert client.get(f"{base}/{project.public_id}").status_code == 404
    assert project.public_id not in [p["id"] for p in client.get(base).json()["results"]]
    assert Project.all_objects.get(pk=project.pk).deleted_at is not None  # kept: its deployment is billing history
    Deployment.objects.get(pk=deployment.pk).project  # the history still resolves its project
    assert client.post(base, {"name": "Short-lived"}, format="json").status_code == 201


def test_project_with_live_deployments_cannot_be_deleted(owner_org, key_client):
    from deployments import services as deployment_services
    from projects import services

    project = services.project_create(organization=owner_org.organization, actor=None, name="Busy")
    deployment_services.deployment_create(
        project=project, actor=None, name="live", plan="dedicated", tier="1k", region="local"
    )
    response = key_client(owner_org.owner_secret).delete(
        f"/api/v1/organizations/{owner_org.id}/projects/{project.public_id}"
    )
    assert response.status_code == 409


def test_key_limited_to_a_deleted_project_is_revoked_not_widened(owner_org, key_client):
    from projects import services

    only = services.project_create(organization=owner_org.organization, actor=None, name="Only")
    other = services.project_create(organization=owner_org.organization, actor=None, name="Other")
    narrow, narrow_secret = owner_org.key_for(owner_org.owner, role="project_administrator", projects=[only])
    wide, wide_secret = owner_org.key_for(owner_org.owner, role="project_administrator", projects=[only, other])
    owner = key_client(owner_org.owner_secret)
    assert owner.delete(f"/api/v1/organizations/{owner_org.id}/projects/{only.public_id}").status_code == 204
    narrow.refresh_from_db()
    assert narrow.revoked_at is not None
    assert key_client(narrow_secret).get(f"/api/v1/organizations/{owner_org.id}/projects").status_code == 401
    listed = key_client(wide_secret).get(f"/api/v1/organizations/{owner_org.id}/projects").json()["results"]
    assert [p["id"] for p in listed] == [other.public_id]


@pytest.mark.django_db(transaction=True)
def test_project_limited_key_is_revoked_not_widened_when_its_projects_are_deleted_at_once(key_client):
    """Two concurrent deletions of a key's two projects: each, reading without a lock, would see the other project
    still linked, neither would revoke, both would unlink, and the key would be left with no project. The key's rows
    are locked and the revocation decided after unlinking: the second deletion revokes it."""
    import threading

    from django.db import connection, transaction

    from organizations.models import ApiKey
    from projects import services
    from tests.factories import make_organization

    org = make_organization()
    a = services.project_create(organization=org.organization, actor=None, name="A")
    b = services.project_create(organization=org.organization, actor=None, name="B")
    key, secret = org.key_for(org.owner, role="project_administrator", projects=[a, b])
    client = key_client(secret)
    other = f"/api/v1/organizations/{org.id}/projects/{org.default_project.public_id}/deployments"
    assert client.get(other).status_code == 404  # limited to A and B: the Default project is invisible

    a_deleted, b_started = threading.Event(), threading.Event()
    errors = []

    def delete_a():
        try:
            with transaction.atomic():
                services.project_delete(project=a, actor=None)
                a_deleted.set()
                b_started.wait(timeout=10)
                time.sleep(0.5)  # B's deletion now waits for this transaction's lock on the key
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            a_deleted.set()
            connection.close()

    def delete_b():
        try:
            a_deleted.wait(timeout=10)
            b_started.set()
            services.project_delete(project=b, actor=None)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=delete_a), threading.Thread(target=delete_b)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors, errors

    assert client.get(other).status_code == 401, "the key reaches a project it was never limited to"
    key = ApiKey.objects.get(pk=key.pk)
    assert key.revoked_at is not None and not key.projects.exists()
    assert AuditEvent.objects.get(action="project.delete", target_id=b.public_id).summary["revoked_api_keys"] == [
        key.prefix
    ]


def test_project_limited_key_reaches_nothing_when_its_projects_vanish_outside_the_service(owner_org, key_client):
    """A project removed another way (staff in the admin): the key is limited by a property of its own, not by a
    non-empty project list, so with none left it reaches nothing rather than the whole organization."""
    from projects import services

    only = services.project_create(organization=owner_org.organization, actor=None, name="Only")
    key, secret = owner_org.key_for(owner_org.owner, role="administrator", projects=[only])
    Project.objects.filter(pk=only.pk).delete()  # the cascade unlinks the key, revoking nothing
    client = key_client(secret)
    base = f"/api/v1/organizations/{owner_org.id}"
    for path in ("", "/projects", f"/projects/{owner_org.default_project.public_id}/deployments", "/members"):
        assert client.get(f"{base}{path}").status_code == 404, path
    assert client.post(f"{base}/projects", {"name": "Mine"}, format="json").status_code == 404
    assert not Project.objects.filter(name="Mine").exists()
    listed = key_client(owner_org.owner_secret).get(f"{base}/api-keys/{key.public_id}").json()
    assert listed["limited_to_projects"] is True and listed["projects"] == []
