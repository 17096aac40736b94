import time

import pytest
from django.utils import timezone

from audit.models import AuditEvent
from organizations.models import ApiKey
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


def _project_with_billing_history(organization, name):
    """A project that once held a deployment, deleted since: project_delete soft-deletes it (invoice history)."""
    from deployments import services as deployment_services
    from deployments.models import Deployment
    from projects import services

    project = services.project_create(organization=organization, actor=None, name=name)
    deployment, _ = deployment_services.deployment_create(
        project=project, actor=None, name="old", plan="dedicated", tier="1k", region="local"
    )
    Deployment.objects.filter(pk=deployment.pk).update(
        desired_state="deleted", status="deleted", deleted_at=timezone.now()
    )
    return project


def _create_key_while_deleting(owner_org, project):
    """api_key_create for `project`, with project_delete arriving between the key's checks and its write; returns the
    key and the deletion's audit event once both are done."""
    from unittest import mock

    from organizations import services as org_services
    from projects import services
    from tests.races import once, run_elsewhere_until_blocked

    deletion = {}

    def delete_project():
        deletion["finish"] = run_elsewhere_until_blocked(
            lambda: services.project_delete(project=Project.objects.get(pk=project.pk), actor=None)
        )

    with mock.patch.object(org_services, "_new_secret", once(org_services._new_secret, delete_project)):
        key, _secret = org_services.api_key_create(
            organization=owner_org.organization,
            actor=None,
            name="lab key",
            role="project_user",
            project_ids=[project.public_id],
            created_by=owner_org.owner,
        )
    deletion["finish"]()
    return ApiKey.objects.get(pk=key.pk), AuditEvent.objects.get(action="project.delete", target_id=project.public_id)


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("deployments_catalog")
def test_key_being_created_is_revoked_when_its_only_project_is_soft_deleted_meanwhile(owner_org):
    """api_key_create locks the projects it links, as project_delete does: the deletion waits for the key, then
    detaches and revokes it, rather than leaving an active key on a hidden project."""
    project = _project_with_billing_history(owner_org.organization, "lab")
    key, deletion = _create_key_while_deleting(owner_org, project)
    assert Project.all_objects.get(pk=project.pk).deleted_at is not None
    assert key.revoked_at is not None and not key.projects.exists()
    assert deletion.summary["revoked_api_keys"] == [key.prefix]


@pytest.mark.django_db(transaction=True)
def test_key_being_created_is_revoked_not_a_500_when_its_only_project_is_hard_deleted_meanwhile(owner_org):
    """The same race on a project that never held a deployment: linking the key no longer meets a foreign key to a
    deleted row (an IntegrityError, a 500); the deletion waits, then revokes the key."""
    from projects import services

    project = services.project_create(organization=owner_org.organization, actor=None, name="lab")
    key, deletion = _create_key_while_deleting(owner_org, project)
    assert not Project.all_objects.filter(pk=project.pk).exists()
    assert key.revoked_at is not None and not key.projects.exists()
    assert deletion.summary["revoked_api_keys"] == [key.prefix]


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("deployments_catalog")
def test_key_creation_is_refused_on_projects_when_its_project_was_deleted_before_it_was_locked(owner_org):
    """The deletion committed after the request's checks began but before the service locked the project: the
    project is not found under the lock, and the key is refused as for an unknown project."""
    from unittest import mock

    from controlplane.errors import ValidationFailed
    from organizations import services as org_services
    from projects import services
    from tests.races import once, run_elsewhere

    project = _project_with_billing_history(owner_org.organization, "lab")

    def delete_project():
        run_elsewhere(lambda: services.project_delete(project=Project.objects.get(pk=project.pk), actor=None))

    lock = org_services._lock_creator_membership
    with mock.patch.object(org_services, "_lock_creator_membership", once(lock, delete_project)):
        with pytest.raises(ValidationFailed) as refused:
            org_services.api_key_create(
                organization=owner_org.organization,
                actor=None,
                name="lab key",
                role="project_user",
                project_ids=[project.public_id],
                created_by=owner_org.owner,
            )
    assert [error.field for error in refused.value.errors] == ["projects"]
    assert not ApiKey.objects.filter(name="lab key").exists()


def test_rename_answers_not_found_when_the_project_was_deleted_after_the_view_loaded_it(owner_org):
    """A rename and a deletion at once: the rename's view loaded the project, the deletion committed, then the rename
    saved with update_fields, which matched no row (Django's DatabaseError, a 500)."""
    from controlplane.errors import NotFound
    from projects import services

    project = services.project_create(organization=owner_org.organization, actor=None, name="lab")
    loaded = Project.objects.get(pk=project.pk)  # the rename's get_object()
    services.project_delete(project=Project.objects.get(pk=project.pk), actor=None)
    with pytest.raises(NotFound):
        services.project_update(project=loaded, actor=None, name="Renamed")
    assert not AuditEvent.objects.filter(action="project.update", target_id=project.public_id).exists()


@pytest.mark.usefixtures("deployments_catalog")
def test_rename_answers_not_found_when_the_project_was_hidden_after_the_view_loaded_it(owner_org):
    """The same race on a project kept hidden for its billing history: the rename found the hidden row, renamed it
    and audited a change to a project nobody can see any more."""
    from controlplane.errors import NotFound
    from projects import services

    project = _project_with_billing_history(owner_org.organization, "lab")
    loaded = Project.objects.get(pk=project.pk)
    services.project_delete(project=Project.objects.get(pk=project.pk), actor=None)
    with pytest.raises(NotFound):
        services.project_update(project=loaded, actor=None, name="Renamed", description="changed")
    hidden = Project.all_objects.get(pk=project.pk)
    assert (hidden.name, hidden.description) == ("lab", "")
    assert not AuditEvent.objects.filter(action="project.update", target_id=project.public_id).exists()
