import datetime

import pytest
from django.utils import timezone

from audit.models import AuditEvent
from organizations.models import ApiKey

pytestmark = pytest.mark.django_db


def _create(client, org_id, **body):
    return client.post(
        f"/api/v1/organizations/{org_id}/api-keys", {"name": "ci", "role": "auditor", **body}, format="json"
    )


def test_secret_is_shown_once_and_stored_hashed_when_key_is_created(owner_org, key_client):
    owner = key_client(owner_org.owner_secret)
    response = _create(owner, owner_org.id)
    assert response.status_code == 201, response.content
    body = response.json()
    secret = body["secret"]
    assert secret.startswith(f"cpk_{body['prefix']}_")
    key = ApiKey.objects.get(public_id=body["id"])
    assert secret not in (key.secret_hash, key.prefix) and len(key.secret_hash) == 64
    assert "secret" not in owner.get(f"/api/v1/organizations/{owner_org.id}/api-keys/{body['id']}").json()
    assert key_client(secret).get(f"/api/v1/organizations/{owner_org.id}/audit-events").status_code == 200
    assert AuditEvent.objects.filter(action="api_key.create", target_id=body["id"]).exists()


def test_last_used_at_is_recorded_when_key_is_used(owner_org, key_client):
    key_client(owner_org.owner_secret).get(f"/api/v1/organizations/{owner_org.id}")
    owner_org.owner_key.refresh_from_db()
    assert owner_org.owner_key.last_used_at is not None


def test_revoked_key_is_refused_when_used(owner_org, key_client):
    owner = key_client(owner_org.owner_secret)
    body = _create(owner, owner_org.id).json()
    assert owner.delete(f"/api/v1/organizations/{owner_org.id}/api-keys/{body['id']}").json()["status"] == "revoked"
    response = key_client(body["secret"]).get(f"/api/v1/organizations/{owner_org.id}")
    assert response.status_code == 401
    assert response["Content-Type"] == "application/problem+json"


def test_expired_key_is_refused_when_used(owner_org, key_client):
    body = _create(
        key_client(owner_org.owner_secret),
        owner_org.id,
        expires_at=(timezone.now() + datetime.timedelta(hours=1)).isoformat(),
    ).json()
    ApiKey.objects.filter(public_id=body["id"]).update(expires_at=timezone.now() - datetime.timedelta(seconds=1))
    assert key_client(body["secret"]).get(f"/api/v1/organizations/{owner_org.id}").status_code == 401


def test_expiry_in_the_past_is_refused_when_key_is_created(owner_org, key_client):
    response = _create(
        key_client(owner_org.owner_secret),
        owner_org.id,
        expires_at=(timezone.now() - datetime.timedelta(hours=1)).isoformat(),
    )
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "expires_at"


def test_old_secret_works_during_overlap_then_stops_when_key_is_rotated(owner_org, key_client):
    owner = key_client(owner_org.owner_secret)
    created = _create(owner, owner_org.id).json()
    rotated = owner.post(
        f"/api/v1/organizations/{owner_org.id}/api-keys/{created['id']}/rotate", {"overlap_seconds": 600}, format="json"
    )
    assert rotated.status_code == 200, rotated.content
    new_secret = rotated.json()["secret"]
    assert new_secret != created["secret"] and new_secret.startswith(f"cpk_{created['prefix']}_")
    url = f"/api/v1/organizations/{owner_org.id}"
    assert key_client(created["secret"]).get(url).status_code == 200
    assert key_client(new_secret).get(url).status_code == 200
    ApiKey.objects.filter(public_id=created["id"]).update(
        previous_expires_at=timezone.now() - datetime.timedelta(seconds=1)
    )
    assert key_client(created["secret"]).get(url).status_code == 401
    assert key_client(new_secret).get(url).status_code == 200


def test_overlap_over_24_hours_is_refused_when_rotating(owner_org, key_client):
    owner = key_client(owner_org.owner_secret)
    created = _create(owner, owner_org.id).json()
    response = owner.post(
        f"/api/v1/organizations/{owner_org.id}/api-keys/{created['id']}/rotate",
        {"overlap_seconds": 86401},
        format="json",
    )
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "overlap_seconds"
    assert key_client(created["secret"]).get(f"/api/v1/organizations/{owner_org.id}").status_code == 200


def test_role_above_callers_own_is_refused_when_creating_key(owner_org, key_client):
    user, _ = owner_org.add_member(roles=["administrator"])
    _key, admin_secret = owner_org.key_for(user, role="administrator")
    response = _create(key_client(admin_secret), owner_org.id, role="owner")
    assert response.status_code == 403
    assert response.json()["errors"][0]["field"] == "role"
    assert not ApiKey.objects.filter(role="owner", created_by=user).exists()


def test_project_key_sees_only_its_project_when_limited(owner_org, key_client):
    from projects import services

    other = services.project_create(organization=owner_org.organization, actor=None, name="Other")
    owner = key_client(owner_org.owner_secret)
    body = _create(owner, owner_org.id, role="project_user", projects=[owner_org.default_project.public_id]).json()
    limited = key_client(body["secret"])
    listed = limited.get(f"/api/v1/organizations/{owner_org.id}/projects").json()["results"]
    assert [p["id"] for p in listed] == [owner_org.default_project.public_id]
    assert limited.get(f"/api/v1/organizations/{owner_org.id}/projects/{other.public_id}").status_code == 404
    assert limited.get(f"/api/v1/organizations/{owner_org.id}/members").status_code == 403


def test_project_role_without_projects_is_refused_when_creating_key(owner_org, key_client):
    response = _create(key_client(owner_org.owner_secret), owner_org.id, role="project_user")
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "projects"


def test_key_loses_rights_when_its_creator_is_demoted(owner_org, key_client):
    user, membership = owner_org.add_member(roles=["administrator"])
    _key, secret = owner_org.key_for(user, role="administrator")
    client = key_client(secret)
    assert client.get(f"/api/v1/organizations/{owner_org.id}/members").status_code == 200
    membership.roles = ["auditor"]
    membership.save()
    assert (
        client.post(f"/api/v1/organizations/{owner_org.id}/projects", {"name": "x"}, format="json").status_code == 403
    )


def test_deletion_protected_key_cannot_be_revoked_until_lifted(owner_org, key_client):
    owner = key_client(owner_org.owner_secret)
    created = _create(owner, owner_org.id).json()
    url = f"/api/v1/organizations/{owner_org.id}/api-keys/{created['id']}"
    assert owner.patch(url, {"deletion_protection": True}, format="json").status_code == 200
    assert owner.delete(url).status_code == 409
    assert owner.patch(url, {"deletion_protection": False}, format="json").status_code == 200
    assert owner.delete(url).status_code == 200
    actions = list(AuditEvent.objects.filter(target_id=created["id"]).values_list("action", flat=True))
    assert actions.count("api_key.update") == 2 and "api_key.revoke" in actions


def test_authentication_reads_key_organization_creator_and_membership_in_one_query(
    owner_org, django_assert_num_queries
):
    from organizations.access import ApiKeyCredential
    from organizations.services import api_key_authenticate

    user, membership = owner_org.add_member(roles=["administrator"])
    owner_org.organization.rate_limits = {"principal": [10, 1]}
    owner_org.organization.save()
    key, secret = owner_org.key_for(user, role="administrator", projects=[owner_org.default_project])
    ApiKey.objects.filter(pk=key.pk).update(last_used_at=timezone.now())  # no last-used write in this request
    with django_assert_num_queries(1):
        found = api_key_authenticate(secret)
        assert isinstance(found, ApiKeyCredential)
        # Values come back as their fields' Python types.
        assert found.key.pk == key.pk and found.prefix == key.prefix and found.key.created_at == key.created_at
        assert found.key.organization.rate_limits == {"principal": [10, 1]}
        assert found.key.created_by == user and found.key.created_by.email == user.email
        assert found.creator_membership.pk == membership.pk and found.creator_membership.roles == ["administrator"]
        assert found.limited_to_projects is True  # a column of the key, not read from its project list
        # A typed row: nothing is hung on the model instances themselves.
        assert not hasattr(found.key, "creator_membership")
    membership.delete()
    found = api_key_authenticate(secret)
    assert found.creator_membership is None
    assert api_key_authenticate(secret.replace(key.prefix, "00000000")) is None


def test_key_of_a_removed_member_sees_nothing(owner_org, key_client):
    user, membership = owner_org.add_member(roles=["administrator"])
    _key, secret = owner_org.key_for(user, role="administrator")
    client = key_client(secret)
    assert client.get(f"/api/v1/organizations/{owner_org.id}/projects").status_code == 200
    membership.delete()
    assert client.get(f"/api/v1/organizations/{owner_org.id}/projects").status_code == 404


def _prefixes_drawn_first(*prefixes):
    """A stand-in for the services' secret source that draws `prefixes` first, then draws at random again."""
    from organizations import services

    queue = list(prefixes)
    real = services._new_secret

    def draw():
        if queue:
            prefix = queue.pop(0)
            return prefix, services._secret_for(prefix)
        return real()

    return draw


def test_key_is_created_with_a_new_prefix_when_the_first_one_drawn_is_taken(owner_org, key_client):
    from unittest import mock

    from organizations import services

    taken = owner_org.owner_key.prefix
    with mock.patch.object(services, "_new_secret", _prefixes_drawn_first(taken)):
        response = _create(key_client(owner_org.owner_secret), owner_org.id)
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["prefix"] != taken and body["secret"].startswith(f"cpk_{body['prefix']}_")
    assert key_client(body["secret"]).get(f"/api/v1/organizations/{owner_org.id}").status_code == 200
    assert ApiKey.objects.get(prefix=taken) == owner_org.owner_key  # the existing key keeps its prefix
    assert AuditEvent.objects.filter(action="api_key.create", target_id=body["id"]).count() == 1


@pytest.mark.django_db(transaction=True)
def test_key_is_created_with_a_new_prefix_when_another_key_takes_its_prefix_at_the_same_moment(org_factory, key_client):
    """Another creation commits a key with the same prefix after this one checked the key and before it wrote it: the
    write meets the unique constraint, and the creation draws again instead of failing."""
    from unittest import mock

    from organizations import services
    from tests.races import run_elsewhere

    owner_org, elsewhere = org_factory(), org_factory()
    check = ApiKey.full_clean
    state = {"done": False}

    def check_then_interlope(self, *args, **kwargs):
        check(self, *args, **kwargs)
        if not state["done"]:
            state["done"] = True
            run_elsewhere(
                lambda: services.api_key_create(
                    organization=elsewhere.organization,
                    actor=None,
                    name="at the same moment",
                    role="auditor",
                    created_by=elsewhere.owner,
                )
            )

    with (
        mock.patch.object(services, "_new_secret", _prefixes_drawn_first("deadbeef", "deadbeef")),
        mock.patch.object(ApiKey, "full_clean", check_then_interlope),
    ):
        response = _create(key_client(owner_org.owner_secret), owner_org.id)
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["prefix"] != "deadbeef"
    assert ApiKey.objects.get(prefix="deadbeef").organization == elsewhere.organization
    assert key_client(body["secret"]).get(f"/api/v1/organizations/{owner_org.id}").status_code == 200
    assert AuditEvent.objects.filter(action="api_key.create", target_id=body["id"]).count() == 1


def test_key_creation_answers_a_problem_and_creates_nothing_when_every_prefix_drawn_is_taken(owner_org, key_client):
    from unittest import mock

    from organizations import services

    taken = owner_org.owner_key.prefix
    with mock.patch.object(services, "_new_secret", _prefixes_drawn_first(*[taken] * services._PREFIX_DRAWS)):
        response = _create(key_client(owner_org.owner_secret), owner_org.id)
    assert response.status_code == 503, response.content
    assert response["Content-Type"] == "application/problem+json"
    assert ApiKey.objects.filter(organization=owner_org.organization).count() == 1
    assert not AuditEvent.objects.filter(action="api_key.create", summary__name="ci").exists()
