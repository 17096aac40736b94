"""Idempotent replays re-authenticate: the stored response goes only to a caller whose credential still
authenticates and who may still make the call; stored responses are encrypted at rest and gone after 24 h."""

import datetime

import pytest
from django.utils import timezone

from idempotency.models import IdempotencyRecord
from organizations.models import ApiKey

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
