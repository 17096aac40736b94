"""The deployments API: catalog, lifecycle actions, dry runs, bad input, tenancy and pinned query counts.

No worker here: the reconciler's part is played by `settle()`, which writes what a converged reconcile would.
"""

import base64

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from audit.models import AuditEvent
from deployments import selectors
from deployments.drivers.base import MqttCredential
from deployments.models import AclRule, Deployment, MqttUser, Operation, RateLimitPolicy, Region, Tier
from deployments.passwords import verify_mqtt_password
from organizations.models import Organization
from projects.services import project_create

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("deployments_catalog")]


@pytest.fixture
def client(owner_org, key_client):
    return key_client(owner_org.owner_secret)


@pytest.fixture
def base(owner_org):
    return f"/api/v1/organizations/{owner_org.id}/projects/{owner_org.default_project.public_id}/deployments"


def create(client, base, name="plant", **changes):
    body = {"name": name, "plan": "dedicated", "tier": "1k", "region": "local", **changes}
    return client.post(base, body, format="json")


def settle(public_id):
    """What a converged reconcile writes: observed state caught up, operations done."""
    deployment = Deployment.objects.get(public_id=public_id)
    status = {"running": "running", "stopped": "stopped", "deleted": "deleted"}[deployment.desired_state]
    Deployment.objects.filter(pk=deployment.pk).update(
        status=status, observed_generation=deployment.generation, observed_restart_nonce=deployment.restart_nonce
    )
    Operation.objects.filter(deployment=deployment).update(status="succeeded")


@pytest.fixture
def deployment(client, base):
    response = create(client, base)
    assert response.status_code == 202, response.content
    public_id = response.json()["deployment"]["id"]
    settle(public_id)
    return public_id


def test_catalog_lists_local_region_and_seeded_prices_when_anonymous(api):
    regions = api.get("/api/v1/regions")
    assert regions.status_code == 200
    local = next(r for r in regions.json() if r["code"] == "local")
    assert local["driver"] == "local" and local["is_open"]
    assert {"dedicated/1k", "dedicated/10k", "premium/5k"} <= set(local["tiers"])
    plans = {p["code"]: p for p in api.get("/api/v1/plans").json()}
    assert set(plans) == {"serverless", "dedicated", "premium", "byoc"}
    hourly = {p["tier"]: p["amount"] for p in plans["dedicated"]["prices"] if p["kind"] == "hourly"}
    assert hourly == {"1k": "0.360000", "2k": "0.500000", "5k": "0.990000", "10k": "1.490000"}
    assert {p["kind"]: p["amount"] for p in plans["serverless"]["prices"]} == {
        "session_minutes_million": "2.000000",
        "traffic_gb": "0.150000",
    }


def test_create_answers_202_with_pending_operation_when_request_is_valid(client, base, owner_org):
    response = create(client, base)
    assert response.status_code == 202, response.content
    body = response.json()
    assert body["deployment"]["id"].startswith("dep_")
    assert body["deployment"]["status"] == "pending"
    assert body["operation"]["kind"] == "create" and body["operation"]["status"] == "pending"
    assert AuditEvent.objects.filter(action="deployment.create", target_id=body["deployment"]["id"]).exists()
    deployment = Deployment.objects.get(public_id=body["deployment"]["id"])
    username, password = selectors.monitor_credentials(deployment)
    assert username == "$controlplane-monitor"
    cred = MqttCredential(username=username, salt_b64=deployment.monitor_salt_b64, hash_b64=deployment.monitor_hash_b64)
    assert verify_mqtt_password(password, cred)


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"region": "mars-1"}, "region"),
        ({"tier": "3k"}, "tier"),
        ({"plan": "platinum"}, "plan"),
        ({"name": "x" * 65}, "name"),
        ({"name": 42}, "name"),
        ({"colour": "blue"}, "colour"),
    ],
)
def test_create_answers_400_naming_the_field_when_input_is_bad(client, base, changes, field):
    response = create(client, base, **changes)
    assert response.status_code == 400, response.content
    assert response["Content-Type"] == "application/problem+json"
    assert field in [e["field"] for e in response.json()["errors"]]
    assert not Deployment.objects.exists()


def test_create_answers_400_when_tier_is_not_offered_or_region_closed(client, base):
    region = Region.objects.create(
        code="eu-test", display_name="EU test", provider="aws", driver="kubernetes", in_cluster=True
    )
    region.tiers.add(Tier.objects.get(plan__code="dedicated", code="1k"))
    not_offered = create(client, base, region="eu-test", tier="2k")
    assert not_offered.status_code == 400 and "not offered" in not_offered.json()["detail"]
    Region.objects.filter(pk=region.pk).update(is_open=False)
    closed = create(client, base, region="eu-test")
    assert closed.status_code == 400 and "closed" in closed.json()["detail"]
    assert not Deployment.objects.exists()


def test_create_answers_409_when_name_clashes_in_project_whatever_the_case(client, base, deployment):
    response = create(client, base, name="PLANT")
    assert response.status_code == 409
    assert response.json()["errors"][0]["field"] == "name"


def test_name_is_free_again_when_deployment_was_deleted(client, base, deployment):
    assert client.delete(f"{base}/{deployment}").status_code == 202
    assert create(client, base).status_code == 202


def test_premium_needs_a_trial_and_stops_at_the_granted_count(client, base, owner_org):
    assert create(client, base, plan="premium").status_code == 403
    owner_org.organization.premium_trial_deployments = 1
    owner_org.organization.save()
    assert create(client, base, name="p1", plan="premium").status_code == 202
    response = create(client, base, name="p2", plan="premium")
    assert response.status_code == 409 and "trial" in response.json()["detail"]


def test_dry_run_prices_without_changing_anything_when_asked(client, base, deployment):
    url = f"{base}/{deployment}"
    before = Deployment.objects.get(public_id=deployment)
    created = client.post(
        f"{base}?dry_run=true", {"name": "other", "plan": "dedicated", "tier": "2k", "region": "local"}, format="json"
    )
    assert created.status_code == 200, created.content
    assert created.json()["price_per_hour_after"] == "0.500000" and created.json()["disruption"] == "none"
    tier = client.post(f"{url}/change-tier?dry_run=true", {"tier": "5k"}, format="json").json()
    assert (tier["price_per_hour_before"], tier["price_per_hour_after"], tier["disruption"]) == (
        "0.360000",
        "0.990000",
        "restart",
    )
    stop = client.post(f"{url}/stop?dry_run=true", {}, format="json").json()
    assert (stop["price_per_hour_after"], stop["disruption"]) == ("0.060000", "restart")
    assert client.post(f"{url}/restart?dry_run=true", {}, format="json").json()["disruption"] == "restart"
    after = Deployment.objects.get(public_id=deployment)
    assert (after.generation, after.tier_id, after.desired_state) == (before.generation, before.tier_id, "running")
    assert Deployment.objects.count() == 1 and Operation.objects.count() == 1


def test_change_answers_409_when_another_operation_is_in_progress(client, base):
    public_id = create(client, base).json()["deployment"]["id"]
    response = client.post(f"{base}/{public_id}/stop", {}, format="json")
    assert response.status_code == 409 and "in progress" in response.json()["detail"]
    assert Deployment.objects.get(public_id=public_id).desired_state == "running"


def test_stop_answers_409_when_deployment_is_already_stopped(client, base, deployment):
    assert client.post(f"{base}/{deployment}/stop", {}, format="json").status_code == 202
    settle(deployment)
    assert client.post(f"{base}/{deployment}/stop", {}, format="json").status_code == 409


def test_billing_stop_is_recorded_and_only_billing_starts_it_again(client, base, deployment):
    from deployments import services

    services.deployment_stop(deployment=Deployment.objects.get(public_id=deployment), actor=None, reason="billing")
    settle(deployment)
    assert client.get(f"{base}/{deployment}").json()["status_reason"] == "billing"
    assert client.post(f"{base}/{deployment}/start", {}, format="json").status_code == 409
    services.deployment_start(deployment=Deployment.objects.get(public_id=deployment), actor=None)
    assert Deployment.objects.get(public_id=deployment).desired_state == "running"


def test_tier_changes_at_most_once_per_interval_when_changed_twice(client, base, deployment, settings):
    url = f"{base}/{deployment}/change-tier"
    first = client.post(url, {"tier": "2k"}, format="json")
    assert first.status_code == 202 and first.json()["deployment"]["tier"] == "2k"
    settle(deployment)
    second = client.post(url, {"tier": "5k"}, format="json")
    assert second.status_code == 409 and "12" in second.json()["detail"]
    settings.TIER_CHANGE_MIN_INTERVAL_HOURS = 0
    assert client.post(url, {"tier": "5k"}, format="json").status_code == 202


def test_delete_answers_409_while_protected_and_lifting_is_audited(client, base, deployment):
    url = f"{base}/{deployment}"
    assert client.patch(url, {"deletion_protection": True}, format="json").status_code == 200
    refused = client.delete(url)
    assert refused.status_code == 409 and "protection" in refused.json()["detail"]
    assert client.patch(url, {"deletion_protection": False}, format="json").status_code == 200
    assert AuditEvent.objects.filter(action="deployment.protection.lift", target_id=deployment).exists()
    deleted = client.delete(url)
    assert deleted.status_code == 202 and deleted.json()["operation"]["kind"] == "delete"


def test_move_answers_400_and_changes_nothing_when_project_is_another_organizations(
    client, base, deployment, org_factory
):
    other = org_factory()
    response = client.post(f"{base}/{deployment}/move", {"project": other.default_project.public_id}, format="json")
    assert response.status_code == 400
    assert Deployment.objects.get(public_id=deployment).project.organization_id != other.organization.pk


def _project_with_history(owner_org, name):
    """A project holding a deleted deployment (invoice history): deleting it hides it rather than removing the row."""
    from django.utils import timezone

    from deployments import services

    project = project_create(organization=owner_org.organization, actor=None, name=name)
    old, _ = services.deployment_create(
        project=project, actor=None, name="old", plan="dedicated", tier="1k", region="local"
    )
    Deployment.objects.filter(pk=old.pk).update(desired_state="deleted", status="deleted", deleted_at=timezone.now())
    return project


def test_create_and_move_into_a_project_deleted_since_the_request_resolved_it_are_refused(owner_org):
    """The view resolved the project; it was deleted before the service ran. Nothing may land in a deleted project:
    it would be live, billed and hidden from every page and operation."""
    from controlplane.errors import NotFound
    from deployments import services
    from projects import services as project_services
    from projects.models import Project

    staging = _project_with_history(owner_org, "staging")
    plant, _ = services.deployment_create(
        project=owner_org.default_project, actor=None, name="plant", plan="dedicated", tier="1k", region="local"
    )
    Operation.objects.filter(deployment=plant).update(status="succeeded")
    stale = Project.objects.get(pk=staging.pk)
    project_services.project_delete(project=Project.objects.get(pk=staging.pk), actor=None)

    with pytest.raises(NotFound):
        services.deployment_create(project=stale, actor=None, name="new", plan="dedicated", tier="1k", region="local")
    with pytest.raises(NotFound):
        services.deployment_move(deployment=plant, actor=None, project=stale)

    assert not Deployment.objects.filter(project=staging).exclude(desired_state="deleted").exists()
    assert Deployment.objects.get(pk=plant.pk).project_id == owner_org.default_project.pk


@pytest.mark.django_db(transaction=True)
def test_project_deletion_waits_for_a_deployment_being_created_in_it_and_then_refuses(owner_org):
    """The deletion arrives while the create is between its checks and its insert: it waits for the project's row and
    then finds the new deployment."""
    import threading
    import time
    from unittest import mock

    from controlplane.errors import Conflict
    from deployments import services
    from projects import services as project_services
    from projects.models import Project

    staging = _project_with_history(owner_org, "staging")
    outcome: dict = {}

    def delete():
        try:
            project_services.project_delete(project=Project.objects.get(pk=staging.pk), actor=None)
            outcome["deleted"] = True
        except Conflict as exc:
            outcome["refused"] = str(exc)
        finally:
            connection.close()

    deleting = threading.Thread(target=delete)
    original = services._name_taken

    def meanwhile(*args, **kwargs):  # between the create's checks and its insert
        if not deleting.is_alive() and not outcome:
            deleting.start()
            time.sleep(0.5)  # it reaches the project's lock, held by this create
        return original(*args, **kwargs)

    with mock.patch.object(services, "_name_taken", meanwhile):
        services.deployment_create(project=staging, actor=None, name="new", plan="dedicated", tier="1k", region="local")
    deleting.join(30)

    assert not deleting.is_alive()
    assert outcome == {"refused": "The project still holds deployments: delete or move them first."}
    assert Project.objects.filter(pk=staging.pk).exists()


def test_move_lands_in_target_project_when_same_organization(client, base, deployment, owner_org):
    target = project_create(organization=owner_org.organization, actor=None, name="Second")
    response = client.post(f"{base}/{deployment}/move", {"project": target.public_id}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["deployment"]["project"] == target.public_id
    assert client.get(f"{base}/{deployment}").status_code == 404
    moved = f"/api/v1/organizations/{owner_org.id}/projects/{target.public_id}/deployments/{deployment}"
    assert client.get(moved).status_code == 200


@pytest.mark.parametrize("topic", ["a/#/b", "a+/b", ""])
def test_acl_rule_answers_400_when_topic_filter_is_invalid(client, base, deployment, topic):
    before = Deployment.objects.get(public_id=deployment).generation
    response = client.post(
        f"{base}/{deployment}/acl-rules", {"permission": "deny", "action": "all", "topic": topic}, format="json"
    )
    assert response.status_code == 400, response.content
    assert response.json()["errors"][0]["field"] == "topic"
    assert not AclRule.objects.exists()
    assert Deployment.objects.get(public_id=deployment).generation == before


@pytest.mark.parametrize("topic", ["devices/${username}/state", "a/${clientid}/#", "${x}", "eq a/b"])
def test_acl_rule_answers_400_naming_the_topic_when_emqx_would_read_it_as_a_placeholder_or_exact_match(
    client, base, deployment, topic
):
    url = f"{base}/{deployment}/acl-rules"
    kept = client.post(url, {"permission": "allow", "action": "all", "topic": "a/b"}, format="json")
    assert kept.status_code == 201, kept.content
    before = Deployment.objects.get(public_id=deployment).generation
    created = client.post(url, {"permission": "allow", "action": "publish", "topic": topic}, format="json")
    updated = client.patch(f"{url}/{kept.json()['id']}", {"topic": topic}, format="json")
    for response in (created, updated):
        assert response.status_code == 400, response.content
        assert response["Content-Type"] == "application/problem+json"
        [error] = response.json()["errors"]
        assert error["field"] == "topic"
        assert ("'${'" if "${" in topic else "'eq '") in error["message"], error
    assert [r.topic for r in AclRule.objects.all()] == ["a/b"]
    assert Deployment.objects.get(public_id=deployment).generation == before


def test_acl_rule_for_client_id_answers_400_when_region_runs_mosquitto(client, base, deployment):
    response = client.post(
        f"{base}/{deployment}/acl-rules",
        {"permission": "deny", "action": "all", "topic": "a/b", "client_id": "c1"},
        format="json",
    )
    assert response.status_code == 400 and "client id" in response.json()["detail"]


def test_acl_rules_keep_their_order_when_inserted_at_a_position(client, base, deployment):
    url = f"{base}/{deployment}/acl-rules"
    for topic in ("a", "b"):
        assert (
            client.post(url, {"permission": "allow", "action": "all", "topic": topic}, format="json").status_code == 201
        )
    first = client.post(url, {"permission": "deny", "action": "publish", "topic": "z/#", "position": 0}, format="json")
    assert first.status_code == 201 and first.json()["operation"].startswith("op_")
    assert [r["topic"] for r in client.get(url).json()["results"]] == ["z/#", "a", "b"]
    client.patch(f"{url}/{first.json()['id']}", {"position": 2}, format="json")
    assert [(r["topic"], r["position"]) for r in client.get(url).json()["results"]] == [("a", 0), ("b", 1), ("z/#", 2)]


def test_mqtt_user_password_is_write_only_and_duplicates_answer_409(client, base, deployment):
    url = f"{base}/{deployment}/mqtt-users"
    created = client.post(url, {"username": "sensor", "password": "sensor-secret"}, format="json")
    assert created.status_code == 201 and "password" not in created.json()
    stored = MqttUser.objects.get()
    assert "sensor-secret" not in stored.hash_b64 and base64.b64decode(stored.hash_b64)
    assert client.post(url, {"username": "sensor", "password": "another-one"}, format="json").status_code == 409
    assert client.post(url, {"username": "$sys", "password": "another-one"}, format="json").status_code == 400
    assert Deployment.objects.get(public_id=deployment).generation == 2


def test_rate_limits_answer_400_above_parent_and_say_local_honours_none(client, base, deployment):
    url = f"{base}/{deployment}/rate-limits"
    too_high = client.put(
        url,
        {"policies": [{"level": "global", "messages_rate": 100}, {"level": "connection", "messages_rate": 500}]},
        format="json",
    )
    assert too_high.status_code == 400 and "exceeds" in too_high.json()["detail"]
    ok = client.put(
        url,
        {"policies": [{"level": "global", "messages_rate": 1000}, {"level": "listener", "messages_rate": 100}]},
        format="json",
    )
    assert ok.status_code == 200, ok.content
    body = ok.json()
    assert body["driver"] == "local" and body["honoured"]["global"] == [] and "Not enforced" in body["note"]
    assert [p["level"] for p in client.get(url).json()["policies"]] == ["global", "listener"]


@pytest.mark.parametrize(
    "policy",
    [
        {"level": "global", "max_conn_rate": 10**12},
        {"level": "global", "messages_rate": 2**31},
        {"level": "global", "bytes_rate": 2**63},
        {"level": "connection", "bytes_rate": 10**20},
    ],
)
def test_rate_limit_beyond_what_is_stored_is_a_400_when_it_is_put(client, base, deployment, policy):
    """A rate above its column's range (PositiveIntegerField, PositiveBigIntegerField) must not reach PostgreSQL
    ("integer out of range" would be a 500)."""
    client.raise_request_exception = False
    response = client.put(f"{base}/{deployment}/rate-limits", {"policies": [policy]}, format="json")

    assert response.status_code == 400, response.content[:200]
    assert response["Content-Type"] == "application/problem+json"
    assert not RateLimitPolicy.objects.filter(deployment__public_id=deployment).exists()


def test_rate_limit_beyond_what_is_stored_is_refused_naming_the_field_when_the_service_is_called(deployment):
    """The service checks the bounds itself: the console's form (or a task) may hand it anything."""
    from controlplane.errors import ValidationFailed
    from deployments import services
    from deployments.models import Deployment

    plant = Deployment.objects.get(public_id=deployment)
    policies = [{"level": "global", "messages_rate": 100}, {"level": "zone", "max_conn_rate": 3_000_000_000}]
    with pytest.raises(ValidationFailed) as refused:
        services.rate_limits_replace(deployment=plant, actor=None, policies=policies)
    assert [(e.field, e.message) for e in refused.value.errors] == [
        ("policies.1.max_conn_rate", "Ensure this value is less than or equal to 2147483647.")
    ]
    assert not RateLimitPolicy.objects.filter(deployment=plant).exists()


def test_every_method_answers_404_when_deployment_belongs_to_another_organization(
    client, base, deployment, org_factory
):
    other = org_factory()
    stranger = f"/api/v1/organizations/{other.id}/projects/{other.default_project.public_id}/deployments"
    from rest_framework.test import APIClient

    outsider = APIClient()
    outsider.credentials(HTTP_AUTHORIZATION=f"Bearer {other.owner_secret}")
    theirs = f"{base}/{deployment}"
    mine_with_their_id = f"{stranger}/{deployment}"
    for url in (theirs, mine_with_their_id):
        assert outsider.get(url).status_code == 404
        assert outsider.patch(url, {"name": "x"}, format="json").status_code == 404
        assert outsider.delete(url).status_code == 404
        for action in ("stop", "start", "restart", "move"):
            assert outsider.post(f"{url}/{action}", {}, format="json").status_code == 404
        assert outsider.post(f"{url}/change-tier", {"tier": "2k"}, format="json").status_code == 404
        for child in ("operations", "events", "mqtt-users", "acl-rules", "rate-limits"):
            assert outsider.get(f"{url}/{child}").status_code == 404, child
        assert (
            outsider.post(f"{url}/mqtt-users", {"username": "u", "password": "password1"}, format="json").status_code
            == 404
        )
        assert outsider.put(f"{url}/rate-limits", {"policies": []}, format="json").status_code == 404
    assert Deployment.objects.get(public_id=deployment).generation == 1


def _count(client, url):
    with CaptureQueriesContext(connection) as ctx:
        response = client.get(url)
    assert response.status_code == 200, response.content
    return len(ctx.captured_queries)


def test_list_endpoints_make_the_same_number_of_queries_whatever_the_page_size(
    client, base, deployment, django_assert_num_queries
):
    for n in range(12):
        assert create(client, base, name=f"d{n}").status_code == 202
    for n in range(12):
        assert (
            client.post(
                f"{base}/{deployment}/mqtt-users", {"username": f"u{n}", "password": "password1"}, format="json"
            ).status_code
            == 201
        )
    for url in (
        base,
        f"{base}/{deployment}/operations",
        f"{base}/{deployment}/events",
        f"{base}/{deployment}/mqtt-users",
    ):
        small = _count(client, f"{url}?page_size=10")
        with django_assert_num_queries(small):
            response = client.get(f"{url}?page_size=100")
        assert len(response.json()["results"]) > 10


def test_a_project_scoped_request_reads_the_organization_once_when_the_key_authenticates(client, base, deployment):
    """The project the URL names was matched on its organization: checking the caller's scopes in it must not read
    the organization again (it did, once per project-scoped request)."""
    table = Organization._meta.db_table
    with CaptureQueriesContext(connection) as ctx:
        assert client.get(f"{base}/{deployment}").status_code == 200
    reads = [q["sql"] for q in ctx.captured_queries if f'FROM "{table}"' in q["sql"] or f'JOIN "{table}"' in q["sql"]]
    assert len(reads) == 1, reads


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("method", ["patch", "delete"])
@pytest.mark.parametrize("child", ["mqtt-users", "acl-rules"])
def test_a_user_or_rule_deleted_while_a_request_waits_for_the_deployment_is_a_404_when_it_goes_on(
    child, method, client, base, deployment
):
    """The request found the row, then waited for the deployment's lock while another request deleted it: it answers
    404 (not a 500, nor a second delete audited for a row already gone)."""
    from django.db import transaction

    from deployments import services
    from tests.races import run_elsewhere_until_blocked

    if child == "mqtt-users":
        created = client.post(
            f"{base}/{deployment}/mqtt-users", {"username": "sensor", "password": "long enough 1"}, format="json"
        )
        model, body = MqttUser, {"password": "another long one"}
    else:
        created = client.post(
            f"{base}/{deployment}/acl-rules", {"permission": "allow", "action": "publish", "topic": "a"}, format="json"
        )
        model, body = AclRule, {"topic": "b"}
    assert created.status_code == 201, created.content
    url = f"{base}/{deployment}/{child}/{created.json()['id']}"
    row = model.objects.get(public_id=created.json()["id"])
    action = "deployment.mqtt_user.delete" if child == "mqtt-users" else "deployment.acl_rule.delete"

    with transaction.atomic():  # the other request's delete: it holds the deployment's lock until it commits
        if child == "mqtt-users":
            services.mqtt_user_delete(user=row, actor=None)
        else:
            services.acl_rule_delete(rule=row, actor=None)
        finish = run_elsewhere_until_blocked(lambda: getattr(client, method)(url, body, format="json"))
    response = finish()

    assert response.status_code == 404, response.content
    assert response["Content-Type"] == "application/problem+json"
    assert AuditEvent.objects.filter(action=action).count() == 1
