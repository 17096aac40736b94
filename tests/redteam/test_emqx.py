"""Red team: the EMQX driver and the limiter attacked from outside: the real `kubernetes` client against the HTTP fake
API server, the real EMQX management client against the HTTP fake of EMQX's API (boundaries we cannot reach from
here), and the REST API through the real stack. Each test fails while the weakness it names is there."""

import base64
import hashlib

import pytest

from deployments import services
from deployments.drivers.base import (
    AclEntry,
    BrokerSpec,
    MqttCredential,
    RegionTarget,
    TemporaryDriverError,
)
from deployments.drivers.kubernetes import KubernetesDriver
from deployments.emqx_api import EmqxApi
from deployments.models import RateLimitPolicy
from tests.fakes.emqx_api import FakeEmqxServer
from tests.fakes.kubernetes_api import FakeKubernetesServer

NS = "mqtt-dep-k8s1"


def _credential(username: str, password: str) -> MqttCredential:
    salt = b"a1b2c3d4e5f60718"
    derived = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, 101)
    return MqttCredential(
        username=username, salt_b64=base64.b64encode(salt).decode(), hash_b64=base64.b64encode(derived).decode()
    )


@pytest.fixture
def cluster():
    server = FakeKubernetesServer().start()
    yield server
    server.stop()


@pytest.fixture
def broker_api():
    server = FakeEmqxServer(api_key="controlplane", api_secret="bootstrap-secret").start()
    yield server
    server.stop()


class _AuthzSourceUnavailable(EmqxApi):
    """The real client; EMQX answers 503 to the authorization calls (its authz source restarting), as the fake's
    HTTP server really sends it. Authentication calls go through."""

    def __init__(self, *args, server: FakeEmqxServer, **kwargs):
        super().__init__(*args, **kwargs)
        self._server = server

    def sync_acl(self, entries):
        self._server.state.fail_status = 503
        try:
            return super().sync_acl(entries)
        finally:
            self._server.state.fail_status = None


def test_new_user_is_never_left_without_its_acl_when_the_acl_push_fails(cluster, broker_api):
    """KubernetesDriver pushes users, then the ACL (drivers/kubernetes.py, _observe_running). When the ACL push
    fails after the users went in, a new user whose rules deny it everything is live in EMQX with no rule at all,
    and authorization's no_match is allow: it may publish and subscribe anywhere until a retry gets through (and
    for good if the ACL cannot compile: PermanentDriverError after the users were pushed)."""

    def factory(*, base_url, api_key, api_secret):
        return _AuthzSourceUnavailable(broker_api.url, api_key, api_secret, server=broker_api)

    driver = KubernetesDriver(emqx_api_factory=factory)
    spec = BrokerSpec(
        name="dep_K8S1",
        region=RegionTarget(code="eu-1", driver="kubernetes", kubeconfig=cluster.kubeconfig()),
        running=True,
        max_connections=1000,
        messages_per_second=100,
        replicas=2,
        users=(_credential("alice", "pw"), _credential("quarantined", "pw")),
        acl=(AclEntry(permission="deny", action="all", topic="#", username="quarantined"),),
        api_key="controlplane",
        api_secret="bootstrap-secret",
        license_key="licence",
    )
    driver.apply(spec)
    cluster.state.mark_emqx_ready(NS, replicas=2)
    cluster.state.set_listeners_service(NS, ip="203.0.113.7")

    with pytest.raises(TemporaryDriverError):
        driver.apply(spec)

    if "quarantined" in broker_api.users():
        decision = broker_api.authorize(
            client_id="q-1", username="quarantined", action="publish", topic="factory/valves/open"
        )
        assert decision == "deny", "the user was pushed without its ACL: EMQX's no_match lets it publish anywhere"


@pytest.mark.django_db
@pytest.mark.usefixtures("deployments_catalog")
@pytest.mark.parametrize(
    "policy",
    [
        {"level": "global", "max_conn_rate": 10**12},
        {"level": "global", "messages_rate": 2**31},
        {"level": "global", "bytes_rate": 2**63},
        {"level": "connection", "bytes_rate": 10**20},
    ],
)
def test_rate_limit_beyond_what_is_stored_is_a_400_when_it_is_put(owner_org, key_client, brokers_dir, policy):
    """The serializer has a min_value and no max_value: a rate above the column's range (PositiveIntegerField,
    PositiveBigIntegerField) reaches PostgreSQL and answers 500 ("integer out of range")."""
    deployment, _operation = services.deployment_create(
        project=owner_org.default_project, actor=None, name="plant", plan="dedicated", tier="1k", region="local"
    )
    client = key_client(owner_org.owner_secret)
    client.raise_request_exception = False
    url = (
        f"/api/v1/organizations/{owner_org.id}/projects/{owner_org.default_project.public_id}"
        f"/deployments/{deployment.public_id}/rate-limits"
    )

    response = client.put(url, {"policies": [policy]}, format="json")

    assert response.status_code == 400, response.content[:200]
    assert response["Content-Type"] == "application/problem+json"
    assert not RateLimitPolicy.objects.filter(deployment=deployment).exists()
