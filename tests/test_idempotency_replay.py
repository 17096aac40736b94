"""Idempotent replays re-authenticate: the stored response goes only to a caller whose credential still
authenticates and who may still make the call; stored responses are encrypted at rest and gone after 24 h."""

import datetime

import pytest
from django.utils import timezone

from idempotency.models import IdempotencyRecord
from organizations.models import ApiKey, Membership

pytestmark = pytest.mark.django_db


def _create_key(client, org, idem="create-ci-key"):
    return client.post(
        f"/api/v1/organizations/{org.id}/api-keys",
        {"name": "ci", "role": "auditor"},
        format="json",
        HTTP_IDEMPOTENCY_KEY=idem,
    )


def test_revoked_key_gets_401_not_the_stored_secret_when_replaying(owner_org, key_client):
    user, _ = owner_org.add_member(roles=["administrator"])
    key, secret = owner_org.key_for(user, role="administrator")
    client = key_client(secret)
    first = _create_key(client, owner_org)
    assert first.status_code == 201
    created_secret = first.json()["secret"]
    assert _create_key(client, owner_org)["Idempotent-Replayed"] == "true"  # a replay while allowed

    ApiKey.objects.filter(pk=key.pk).update(revoked_at=timezone.now())
    replay = _create_key(client, owner_org)
    assert replay.status_code == 401 and replay["Content-Type"] == "application/problem+json"
    assert created_secret.encode() not in replay.content and "Idempotent-Replayed" not in replay
    assert ApiKey.objects.filter(name="ci").count() == 1


def test_demoted_member_gets_403_not_the_stored_response_when_replaying(owner_org, api):
    user, membership = owner_org.add_member(roles=["administrator"])
    api.force_login(user)
    assert _create_key(api, owner_org).status_code == 201
    membership.roles = ["auditor"]
    membership.save()
    replay = _create_key(api, owner_org)
    assert replay.status_code == 403 and b"cpk_" not in replay.content


def test_removed_member_gets_404_not_the_stored_response_when_replaying(owner_org, api):
    user, membership = owner_org.add_member(roles=["administrator"])
    api.force_login(user)
    assert _create_key(api, owner_org).status_code == 201
    membership.delete()
    replay = _create_key(api, owner_org)
    assert replay.status_code == 404 and b"cpk_" not in replay.content


def test_deactivated_creator_gets_401_not_the_stored_response_when_replaying(owner_org, key_client):
    user, _ = owner_org.add_member(roles=["administrator"])
    _key, secret = owner_org.key_for(user, role="administrator")
    assert _create_key(key_client(secret), owner_org).status_code == 201
    type(user).objects.filter(pk=user.pk).update(is_active=False)
    assert _create_key(key_client(secret), owner_org).status_code == 401


def test_stored_response_is_encrypted_at_rest_when_it_holds_a_secret(owner_org, key_client):
    response = _create_key(key_client(owner_org.owner_secret), owner_org)
    secret = response.json()["secret"]
    record = IdempotencyRecord.objects.get(key="create-ci-key")
    stored = bytes(record.body)
    assert secret.encode() not in stored and b'"name"' not in stored
    from controlplane import crypto

    assert crypto.decrypt_bytes(stored) == response.content


def test_records_are_purged_after_24_hours_and_a_late_retry_runs_anew(owner_org, key_client, settings):
    from idempotency.tasks import prune_records

    client = key_client(owner_org.owner_secret)
    url = f"/api/v1/organizations/{owner_org.id}/projects"
    client.post(url, {"name": "Old"}, format="json", HTTP_IDEMPOTENCY_KEY="old")
    client.post(url, {"name": "Recent"}, format="json", HTTP_IDEMPOTENCY_KEY="recent")
    now = timezone.now()
    IdempotencyRecord.objects.filter(key="old").update(created_at=now - datetime.timedelta(hours=24, seconds=1))
    IdempotencyRecord.objects.filter(key="recent").update(created_at=now - datetime.timedelta(hours=23))
    assert prune_records() == 1
    assert list(IdempotencyRecord.objects.values_list("key", flat=True)) == ["recent"]
    assert settings.CELERY_BEAT_SCHEDULE["idempotency.prune_records"]["task"] == "idempotency.prune_records"
    # Past the 24 h the key means nothing any more: the same request runs again.
    IdempotencyRecord.objects.filter(key="recent").update(created_at=now - datetime.timedelta(hours=24, seconds=1))
    again = client.post(url, {"name": "Recent"}, format="json", HTTP_IDEMPOTENCY_KEY="recent")
    assert again.status_code == 409 and "Idempotent-Replayed" not in again  # the project exists: a real second run


def test_replayed_rotation_is_refused_when_the_caller_was_demoted_below_the_key(owner_org, api):
    """Beyond the scope, rotating a key needs the rights to create it: an Owner demoted to Administrator must get the
    refusal a fresh call gets, never their Owner key's new secret again from the store."""
    second_owner, membership = owner_org.add_member(roles=["owner"])
    own_key, _secret = owner_org.key_for(second_owner, role="owner")
    api.force_login(second_owner)
    url = f"/api/v1/organizations/{owner_org.id}/api-keys/{own_key.public_id}/rotate"
    first = api.post(url, {"overlap_seconds": 0}, format="json", HTTP_IDEMPOTENCY_KEY="rotate-1")
    assert first.status_code == 200
    secret = first.json()["secret"]
    assert (
        api.post(url, {"overlap_seconds": 0}, format="json", HTTP_IDEMPOTENCY_KEY="rotate-1")["Idempotent-Replayed"]
        == "true"
    )  # a replay while allowed

    Membership.objects.filter(pk=membership.pk).update(roles=["administrator"])
    fresh = api.post(url, {"overlap_seconds": 0}, format="json")
    replay = api.post(url, {"overlap_seconds": 0}, format="json", HTTP_IDEMPOTENCY_KEY="rotate-1")

    assert fresh.status_code == replay.status_code == 403, replay.content[:300]
    assert replay.json()["type"] == fresh.json()["type"] and replay.json()["type"].endswith("/role-too-high")
    assert secret.encode() not in replay.content and "Idempotent-Replayed" not in replay


def test_replayed_key_creation_is_refused_when_the_caller_was_demoted_below_the_keys_role(owner_org, api):
    """The rule for creating a key depends on the input (the role asked for): a replay runs it on the stored
    request's body, so a demoted Owner is not handed the Owner key they created before."""
    second_owner, membership = owner_org.add_member(roles=["owner"])
    api.force_login(second_owner)
    url = f"/api/v1/organizations/{owner_org.id}/api-keys"
    body = {"name": "root", "role": "owner"}
    first = api.post(url, body, format="json", HTTP_IDEMPOTENCY_KEY="create-owner-key")
    assert first.status_code == 201
    secret = first.json()["secret"]

    Membership.objects.filter(pk=membership.pk).update(roles=["administrator"])
    replay = api.post(url, body, format="json", HTTP_IDEMPOTENCY_KEY="create-owner-key")

    assert replay.status_code == 403 and replay.json()["errors"][0]["field"] == "role", replay.content[:300]
    assert secret.encode() not in replay.content
    assert ApiKey.objects.filter(name="root").count() == 1


def test_key_details_and_changes_are_refused_when_the_caller_could_not_create_the_key(owner_org, api):
    """The same check, declared once on the view, guards reading, renaming, revoking and rotating."""
    administrator, _ = owner_org.add_member(roles=["administrator"])
    api.force_login(administrator)
    url = f"/api/v1/organizations/{owner_org.id}/api-keys/{owner_org.owner_key.public_id}"
    refusals = [
        api.get(url),
        api.patch(url, {"name": "mine now"}, format="json"),
        api.delete(url),
        api.post(f"{url}/rotate", {}, format="json"),
    ]
    assert [r.status_code for r in refusals] == [403] * 4
    assert b"read the details" in refusals[0].content and b"manage an API key" in refusals[1].content
    owner_org.owner_key.refresh_from_db()
    assert owner_org.owner_key.revoked_at is None and owner_org.owner_key.name == "owner key"


def test_replay_is_not_run_twice_when_the_same_key_is_sent_with_another_spelling_of_bearer(owner_org, api):
    """The caller is the API key, not the text of its header: `Bearer` and `bearer` (both accepted) are one caller."""
    url = f"/api/v1/organizations/{owner_org.id}/projects"
    first = api.post(
        url,
        {"name": "Once"},
        format="json",
        HTTP_AUTHORIZATION=f"Bearer {owner_org.owner_secret}",
        HTTP_IDEMPOTENCY_KEY="create-once",
    )
    assert first.status_code == 201
    for spelling in (f"bearer {owner_org.owner_secret}", f"BEARER  {owner_org.owner_secret} "):
        retry = api.post(
            url, {"name": "Once"}, format="json", HTTP_AUTHORIZATION=spelling, HTTP_IDEMPOTENCY_KEY="create-once"
        )
        assert retry.status_code == 201 and retry["Idempotent-Replayed"] == "true", retry.content[:300]
        assert retry.json()["id"] == first.json()["id"]


def test_replay_is_not_run_twice_when_the_client_retries_with_its_rotated_secret(owner_org, api):
    """A client rotates its key while a create is in flight and retries with the new secret (the overlap window
    exists for exactly this): the same key, so the same caller and the same operation."""
    url = f"/api/v1/organizations/{owner_org.id}/projects"
    old_secret = owner_org.owner_secret
    first = api.post(
        url, {"name": "Once"}, format="json", HTTP_AUTHORIZATION=f"Bearer {old_secret}", HTTP_IDEMPOTENCY_KEY="k1"
    )
    assert first.status_code == 201
    rotated = api.post(
        f"/api/v1/organizations/{owner_org.id}/api-keys/{owner_org.owner_key.public_id}/rotate",
        {"overlap_seconds": 3600},
        format="json",
        HTTP_AUTHORIZATION=f"Bearer {old_secret}",
    )
    new_secret = rotated.json()["secret"]
    retry = api.post(
        url, {"name": "Once"}, format="json", HTTP_AUTHORIZATION=f"Bearer {new_secret}", HTTP_IDEMPOTENCY_KEY="k1"
    )
    assert retry.status_code == 201 and retry.get("Idempotent-Replayed") == "true", retry.content[:300]


def test_same_idempotency_key_runs_anew_when_another_caller_sends_it(owner_org, api, key_client):
    """Keys belong to their caller: another key, or a session of the key's own creator, is another caller."""
    url = f"/api/v1/organizations/{owner_org.id}/projects"
    _key, other_secret = owner_org.key_for(owner_org.owner, role="owner")
    first = key_client(owner_org.owner_secret).post(url, {"name": "P1"}, format="json", HTTP_IDEMPOTENCY_KEY="same")
    second = key_client(other_secret).post(url, {"name": "P2"}, format="json", HTTP_IDEMPOTENCY_KEY="same")
    api.force_login(owner_org.owner)
    third = api.post(url, {"name": "P3"}, format="json", HTTP_IDEMPOTENCY_KEY="same")
    assert [r.status_code for r in (first, second, third)] == [201, 201, 201]
    assert not any(r.get("Idempotent-Replayed") for r in (first, second, third))
    assert IdempotencyRecord.objects.filter(key="same").count() == 3


def test_replay_authenticates_the_key_once_per_request(owner_org, key_client):
    """Knowing whose key it is costs no second lookup of the API key: the view reuses what the middleware read."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    client = key_client(owner_org.owner_secret)
    url = f"/api/v1/organizations/{owner_org.id}/projects"
    client.post(url, {"name": "Once"}, format="json", HTTP_IDEMPOTENCY_KEY="q")
    with CaptureQueriesContext(connection) as queries:
        assert client.post(url, {"name": "Once"}, format="json", HTTP_IDEMPOTENCY_KEY="q").status_code == 201
    key_lookups = [q["sql"] for q in queries.captured_queries if "k.prefix" in q["sql"]]
    assert len(key_lookups) == 1, key_lookups
