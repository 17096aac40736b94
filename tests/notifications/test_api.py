"""The notification channel API: create (secret shown once), refuse bad destinations and headers, mask credentials
everywhere they could be read back (API, database, audit log, admin), send a test, list deliveries, tenancy."""

import base64

import pytest
from django.db import connection

from audit.models import AuditEvent
from notifications import services
from notifications.models import NotificationChannel
from tests.alerts.test_tasks import Receiver, eager  # noqa: F401 - eager is a fixture
from tests.otp import staff_sign_in

pytestmark = pytest.mark.django_db

PAGERDUTY_KEY = "0123456789abcdef0123456789abcdef"
SLACK_URL = "https://hooks.slack.com/services/T0001/B0002/abcDEF123"


@pytest.fixture
def ctx(owner_org, key_client):
    return {
        "client": key_client(owner_org.owner_secret),
        "org": owner_org,
        "org_url": f"/api/v1/organizations/{owner_org.id}",
    }


def problem_fields(response) -> set[str]:
    assert response["Content-Type"] == "application/problem+json", response.content
    return {e["field"] for e in response.json()["errors"]}


def test_webhook_secret_shown_once_when_channel_created(ctx, settings):
    settings.ALLOW_PRIVATE_WEBHOOKS = True
    url = f"{ctx['org_url']}/notification-channels"
    created = ctx["client"].post(
        url,
        {"name": "hook", "type": "webhook", "config": {"url": "http://127.0.0.1:9/x", "headers": {"X-Team": "a"}}},
        format="json",
    )
    assert created.status_code == 201, created.content
    assert created.json()["secret"].startswith("whsec_")
    shown = ctx["client"].get(f"{url}/{created.json()['id']}").json()
    assert "secret" not in shown and shown["config"]["headers"] == {"X-Team": "…"}


@pytest.mark.parametrize(
    "body, field",
    [
        ({"type": "webhook", "config": {"url": "ftp://example.com/x"}}, "config.url"),
        ({"type": "webhook", "config": {"url": "http://127.0.0.1:8000/x"}}, "config.url"),
        ({"type": "webhook", "config": {"url": "http://169.254.169.254/latest"}}, "config.url"),
        ({"type": "webhook", "config": {"url": "http://10.0.0.5/x"}}, "config.url"),
        ({"type": "slack", "config": {"url": "https://example.com/services/T/B/x"}}, "config.url"),
        ({"type": "pagerduty", "config": {"routing_key": "short"}}, "config.routing_key"),
        ({"type": "email", "config": {"addresses": ["not-an-address"]}}, "config.addresses"),
        ({"type": "sms", "config": {}}, "type"),
    ],
)
def test_channel_refused_when_destination_bad(ctx, body, field):
    response = ctx["client"].post(f"{ctx['org_url']}/notification-channels", {"name": "x", **body}, format="json")
    assert response.status_code == 400, response.content
    assert field in problem_fields(response)


def test_slack_and_pagerduty_accepted_when_shapes_right(ctx):
    url = f"{ctx['org_url']}/notification-channels"
    slack = ctx["client"].post(url, {"name": "s", "type": "slack", "config": {"url": SLACK_URL}}, format="json")
    assert slack.status_code == 201, slack.content
    assert slack.json()["config"]["url"].endswith("/…") and slack.json()["secret"] is None
    pd = ctx["client"].post(
        url, {"name": "p", "type": "pagerduty", "config": {"routing_key": PAGERDUTY_KEY}}, format="json"
    )
    assert pd.status_code == 201, pd.content
    assert PAGERDUTY_KEY not in str(pd.json())


def test_channel_test_delivers_and_history_lists_attempt_when_sent(ctx, settings, eager):
    settings.ALLOW_PRIVATE_WEBHOOKS = True
    receiver = Receiver()
    try:
        url = f"{ctx['org_url']}/notification-channels"
        channel = (
            ctx["client"]
            .post(url, {"name": "hook", "type": "webhook", "config": {"url": receiver.url}}, format="json")
            .json()
        )
        from django.test import TestCase

        with TestCase.captureOnCommitCallbacks(execute=True):
            response = ctx["client"].post(f"{url}/{channel['id']}/test")
        assert response.status_code == 202, response.content
    finally:
        receiver.stop()
    assert [b["event"] for b in receiver.bodies()] == ["test"]
    history = ctx["client"].get(f"{url}/{channel['id']}/deliveries").json()["results"]
    assert history[0]["status"] == "succeeded"
    assert history[0]["history"][0]["status_code"] == 200


# --- header names, names with control characters, masked values sent back ----------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {"X Team": "a"},
        {"X-Team:": "a"},
        {"X-Team\r\nX-Injected": "a"},
        {"": "a"},
        {"Host": "evil.example"},
        {"Content-Length": "0"},
        {"X-Team": "a", "x-team": "b"},
        {"X-Team": "line\x00break"},
        {"X-Team": "tab\x7fdel"},
        {"X-Team": "☃"},
    ],
)
def test_webhook_headers_refused_when_names_or_values_cannot_be_sent(ctx, settings, headers):
    settings.ALLOW_PRIVATE_WEBHOOKS = True
    response = ctx["client"].post(
        f"{ctx['org_url']}/notification-channels",
        {"name": "hook", "type": "webhook", "config": {"url": "http://127.0.0.1:9/x", "headers": headers}},
        format="json",
    )
    assert response.status_code == 400, response.content
    assert problem_fields(response) == {"config.headers"}
    assert not NotificationChannel.objects.exists()


@pytest.mark.parametrize("name", ["ops\rteam", "ops\nteam", "tab\there", "nul\x00", "sep\u2028x", "del\x7f"])
def test_channel_name_refused_when_it_has_control_characters(ctx, name):
    url = f"{ctx['org_url']}/notification-channels"
    body = {"name": name, "type": "email", "config": {"addresses": ["ops@example.com"]}}
    response = ctx["client"].post(url, body, format="json")
    assert response.status_code == 400, response.content
    assert "name" in problem_fields(response)
    good = ctx["client"].post(url, {**body, "name": "ops 🛠 team"}, format="json")
    assert good.status_code == 201, good.content
    renamed = ctx["client"].patch(f"{url}/{good.json()['id']}", {"name": name}, format="json")
    assert renamed.status_code == 400 and "name" in problem_fields(renamed)


def test_a_token_in_a_webhooks_path_is_shown_to_nobody_when_an_auditor_reads_the_channel(ctx, settings, key_client):
    """Discord-style hooks carry their credential in the path: whoever reads it may post to the team's chat."""
    settings.ALLOW_PRIVATE_WEBHOOKS = True
    token = "Zk3xQ9vT-secret-path-token"
    url = f"{ctx['org_url']}/notification-channels"
    created = ctx["client"].post(
        url,
        {"name": "chat", "type": "webhook", "config": {"url": f"http://127.0.0.1:9/api/webhooks/42/{token}"}},
        format="json",
    )
    assert created.status_code == 201, created.content
    auditor, _ = ctx["org"].add_member(roles=["auditor"])
    _, secret = ctx["org"].key_for(auditor, role="auditor")
    read = key_client(secret).get(f"{url}/{created.json()['id']}")
    assert read.status_code == 200, read.content
    assert read.json()["config"]["url"] == "http://127.0.0.1:9/api/…"
    listed = key_client(secret).get(url)
    assert token not in listed.content.decode() and token not in created.content.decode()
    audit = AuditEvent.objects.get(action="notification_channel.create")
    assert token not in str(audit.summary)
    channel = NotificationChannel.objects.get(public_id=created.json()["id"])
    assert services.channel_config(channel)["url"].endswith(f"/42/{token}")  # still what is sent to


def test_webhook_paths_stored_before_are_masked_when_the_migration_runs(ctx, settings):
    import importlib

    from django.apps import apps

    settings.ALLOW_PRIVATE_WEBHOOKS = True
    whole = "http://127.0.0.1:9/api/webhooks/42/old-token"
    created = ctx["client"].post(
        f"{ctx['org_url']}/notification-channels",
        {"name": "chat", "type": "webhook", "config": {"url": whole}},
        format="json",
    )
    assert created.status_code == 201, created.content
    # As the rule before showed it: the whole path.
    NotificationChannel.objects.filter(public_id=created.json()["id"]).update(config={"url": whole, "headers": {}})
    audit = AuditEvent.objects.get(action="notification_channel.create")
    AuditEvent.objects.filter(pk=audit.pk).update(summary={**audit.summary, "config": {"url": whole, "headers": {}}})
    importlib.import_module("notifications.migrations.0006_webhook_paths_masked").mask_paths(apps, None)
    channel = NotificationChannel.objects.get(public_id=created.json()["id"])
    assert channel.config == {"url": "http://127.0.0.1:9/api/…", "headers": {}}
    assert services.channel_config(channel)["url"] == whole
    audit.refresh_from_db()
    assert audit.summary["config"]["url"] == "http://127.0.0.1:9/api/…"


def test_masked_url_sent_back_refused_and_masked_header_keeps_stored_value_when_channel_changed(ctx, settings):
    settings.ALLOW_PRIVATE_WEBHOOKS = True
    url = f"{ctx['org_url']}/notification-channels"
    created = (
        ctx["client"]
        .post(
            url,
            {
                "name": "hook",
                "type": "webhook",
                "config": {"url": "http://127.0.0.1:9/x?token=abcd1234", "headers": {"X-Key": "k-1"}},
            },
            format="json",
        )
        .json()
    )
    shown = created["config"]
    assert shown == {"url": "http://127.0.0.1:9/x?token=…", "headers": {"X-Key": "…"}}
    refused = ctx["client"].patch(f"{url}/{created['id']}", {"config": shown}, format="json")
    assert refused.status_code == 400 and problem_fields(refused) == {"config.url"}
    changed = ctx["client"].patch(
        f"{url}/{created['id']}",
        {"config": {"headers": {"X-Key": "…", "X-New": "n-2"}}},
        format="json",
    )
    assert changed.status_code == 200, changed.content
    channel = NotificationChannel.objects.get(public_id=created["id"])
    assert services.channel_config(channel) == {
        "url": "http://127.0.0.1:9/x?token=abcd1234",
        "headers": {"X-Key": "k-1", "X-New": "n-2"},
    }
    unknown = ctx["client"].patch(f"{url}/{created['id']}", {"config": {"headers": {"X-Other": "…"}}}, format="json")
    assert unknown.status_code == 400 and problem_fields(unknown) == {"config.headers"}


# --- credentials at rest and on display ----------------------------------------------------------------------------

SECRETS = ("url-password", "query-token-value", "header-secret-value")


def test_webhook_credentials_encrypted_at_rest_masked_everywhere_and_still_sent_when_delivered(
    ctx, settings, eager, django_capture_on_commit_callbacks, client
):
    from accounts.models import User

    settings.ALLOW_PRIVATE_WEBHOOKS = True
    receiver = Receiver()
    try:
        port = receiver.server.server_address[1]
        url = f"{ctx['org_url']}/notification-channels"
        hook = f"http://alice:url-password@127.0.0.1:{port}/hook?team=ops&token=query-token-value"
        created = ctx["client"].post(
            url,
            {
                "name": "hook",
                "type": "webhook",
                "config": {"url": hook, "headers": {"X-Api-Key": "header-secret-value"}},
            },
            format="json",
        )
        assert created.status_code == 201, created.content
        channel_id = created.json()["id"]
        with django_capture_on_commit_callbacks(execute=True):
            assert ctx["client"].post(f"{url}/{channel_id}/test").status_code == 202
    finally:
        receiver.stop()

    # Delivered with every credential: HTTP Basic from the userinfo, the query token, the custom header.
    [request] = receiver.requests
    assert request["path"] == "/hook?team=ops&token=query-token-value"
    assert request["headers"]["X-Api-Key"] == "header-secret-value"
    assert request["headers"]["Authorization"] == "Basic " + base64.b64encode(b"alice:url-password").decode()

    # The API shows the masked form, the list too.
    shown = ctx["client"].get(f"{url}/{channel_id}").json()["config"]
    assert shown == {"url": f"http://…@127.0.0.1:{port}/hook?team=…&token=…", "headers": {"X-Api-Key": "…"}}
    listed = (
        ctx["client"].get(url).content.decode() + ctx["client"].get(f"{url}/{channel_id}/deliveries").content.decode()
    )
    # At rest: neither the row's columns nor the audit log hold a credential in clear.
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT config::text || config_encrypted || secret_encrypted FROM alerts_notificationchannel WHERE public_id = %s",
            [channel_id],
        )
        row = cursor.fetchone()[0]
    audit = " ".join(str(e.summary) for e in AuditEvent.objects.filter(target_id=channel_id))
    assert "notification_channel.create" in set(AuditEvent.objects.values_list("action", flat=True))
    # The admin's change page and list show the masked config only.
    staff = User.objects.create_superuser("ops@example.com", "operator passphrase")
    staff_sign_in(client, staff, "operator passphrase")
    pk = NotificationChannel.objects.get(public_id=channel_id).pk
    admin_page = client.get(f"/admin/notifications/notificationchannel/{pk}/change/")
    assert admin_page.status_code == 200
    admin = admin_page.content.decode() + client.get("/admin/notifications/notificationchannel/").content.decode()
    for secret in SECRETS:
        assert secret not in listed and secret not in row and secret not in audit and secret not in admin, secret
    assert "127.0.0.1" in admin and "X-Api-Key" in admin


def test_slack_hook_path_encrypted_at_rest_when_channel_created(ctx):
    created = ctx["client"].post(
        f"{ctx['org_url']}/notification-channels",
        {"name": "s", "type": "slack", "config": {"url": SLACK_URL}},
        format="json",
    )
    assert created.status_code == 201, created.content
    channel = NotificationChannel.objects.get(public_id=created.json()["id"])
    assert "abcDEF123" not in str(channel.config) and "abcDEF123" not in channel.config_encrypted
    assert services.channel_config(channel) == {"url": SLACK_URL}


def test_channel_answers_503_and_saves_nothing_when_dns_does_not_answer_but_400_when_the_name_does_not_exist(ctx):
    import socket
    from unittest import mock

    from notifications import urlsafety
    from notifications.models import NotificationChannel

    url = f"{ctx['org_url']}/notification-channels"
    body = {"name": "hook", "type": "webhook", "config": {"url": "https://hooks.example.com/in"}}
    # The resolver is the machine's: it is made to fail the way a DNS outage (EAI_AGAIN) and a typo (EAI_NONAME) do.
    outage = socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
    with mock.patch.object(urlsafety.socket, "getaddrinfo", side_effect=outage):
        answer = ctx["client"].post(url, body, format="json")
    assert answer.status_code == 503, answer.content
    assert answer["Content-Type"] == "application/problem+json" and int(answer["Retry-After"]) > 0
    assert answer.json()["type"].endswith("/unavailable")
    assert "hooks.example.com" in answer.json()["detail"]
    missing = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    with mock.patch.object(urlsafety.socket, "getaddrinfo", side_effect=missing):
        answer = ctx["client"].post(url, body, format="json")
    assert answer.status_code == 400 and problem_fields(answer) == {"config.url"}
    assert not NotificationChannel.objects.filter(organization=ctx["org"].organization).exists()


@pytest.mark.django_db(transaction=True)
def test_channel_deleted_and_audited_in_one_transaction_when_the_request_commits_as_in_production(
    owner_org, key_client
):
    # Transactional, as the server runs: no test transaction around the request hides a service that forgot its own
    # (audit_record refuses to run outside the change's transaction, which answered 500).
    client = key_client(owner_org.owner_secret)
    url = f"/api/v1/organizations/{owner_org.id}/notification-channels"
    body = {"name": "ops mail", "type": "email", "config": {"addresses": ["ops@example.com"]}}
    channel = client.post(url, body, format="json").json()["id"]
    deleted = client.delete(f"{url}/{channel}")
    assert deleted.status_code == 204, deleted.content[:300]
    assert not NotificationChannel.objects.filter(public_id=channel).exists()
    assert AuditEvent.objects.filter(action="notification_channel.delete", request_id=deleted["X-Request-Id"]).exists()
