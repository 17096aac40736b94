"""Enumerates every operation under /api/v1 from the URL map, and makes sample objects for its path parameters.

Used by the tenancy and role-matrix tests so that a new endpoint is covered the moment it is routed. A new path
parameter needs a sample maker in SAMPLE_MAKERS; until it has one those tests fail and say so.
"""

from __future__ import annotations

import dataclasses
import datetime
import itertools
import re

from django.urls import URLPattern, URLResolver, get_resolver
from django.utils import timezone

METHODS = ("get", "post", "put", "patch", "delete")
# Django path converters (<str:org>) and the routers' regex groups ((?P<key>[a-z0-9_]+)).
_PARAM = re.compile(r"\(\?P<(\w+)>[^)]*\)|<(?:\w+:)?(\w+)>")


@dataclasses.dataclass(frozen=True)
class Operation:
    route: str  # e.g. "api/v1/organizations/<str:org>/projects/<str:project>"
    method: str
    callback: object

    @property
    def kwargs(self) -> list[str]:
        return [a or b for a, b in _PARAM.findall(self.route)]

    @property
    def view_class(self):
        return getattr(self.callback, "cls", None) or getattr(self.callback, "view_class", None)

    @property
    def action(self) -> str | None:
        actions = getattr(self.callback, "actions", None)
        return actions.get(self.method) if actions else None

    @property
    def required_scope(self) -> str | None:
        cls = self.view_class
        scopes = getattr(cls, "required_scopes", None)
        if scopes is None:
            return None
        return scopes.get(self.action or self.method)

    @property
    def scope_level(self) -> str:
        return getattr(self.view_class, "scope_level", "organization")

    def url(self, values: dict[str, str]) -> str:
        path = _PARAM.sub(lambda m: values[m.group(1) or m.group(2)], self.route)
        return "/" + path

    def __str__(self):
        return f"{self.method.upper()} /" + _PARAM.sub(lambda m: "{" + (m.group(1) or m.group(2)) + "}", self.route)


def _walk(patterns, prefix=""):
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            yield from _walk(pattern.url_patterns, prefix + str(pattern.pattern))
        elif isinstance(pattern, URLPattern):
            yield prefix + str(pattern.pattern), pattern.callback


def api_operations() -> list[Operation]:
    operations = []
    for route, callback in _walk(get_resolver().url_patterns):
        if not route.startswith("api/v1/"):
            continue
        route = route.replace("^", "").replace("$", "")
        actions = getattr(callback, "actions", None)
        if actions:
            methods = [m for m in actions if m in METHODS]
        else:
            cls = getattr(callback, "cls", None) or getattr(callback, "view_class", None)
            methods = [m for m in METHODS if cls is not None and hasattr(cls, m)]
        operations.extend(Operation(route, method, callback) for method in methods)
    return operations


def tenant_operations() -> list[Operation]:
    return [op for op in api_operations() if "org" in op.kwargs]


# --- Sample objects -------------------------------------------------------------------------------------------
# A maker takes (org, values so far, route) and returns the public id of an object of `org`; values holds the ids
# made for the parameters to its left, so a child (an operation) belongs to its parent (that deployment).


def _stamp() -> str:
    return str(timezone.now().timestamp()).replace(".", "")


def _member(org, values, route):
    _user, membership = org.add_member(roles=["auditor"])
    return membership.public_id


def _invitation(org, values, route):
    from organizations import services

    invitation, _ = services.invitation_create(
        organization=org.organization, actor=None, email=f"invitee-{_stamp()}@example.com", roles=["auditor"]
    )
    return invitation.public_id


def _key(org, values, route):
    key, _ = org.key_for(org.owner, role="auditor")
    return key.public_id


def _event(org, values, route):
    from audit.models import AuditEvent

    return AuditEvent.objects.filter(organization=org.organization).latest("created_at").public_id


def _deployment_row(values):
    from deployments.models import Deployment

    return Deployment.objects.get(public_id=values["dep"])


def _deployment(org, values, route):
    from deployments import services
    from organizations.models import Organization
    from projects.models import Project

    project = Project.objects.get(public_id=values.get("project", org.default_project.public_id))
    plan = "dedicated"
    if (
        "/devices" in route
        or "/device-" in route
        or "/edge-nodes" in route
        or "/schemas" in route
        or "/codec-rules" in route
    ):
        # Devices and shadows are Premium's: the organization is granted trials, as staff would. An organization has
        # at most two, so the device routes share one Premium deployment (their own objects are made fresh).
        existing = project.deployments.filter(plan__code="premium").exclude(desired_state="deleted").first()
        if existing is not None:
            return existing.public_id
        Organization.objects.filter(pk=org.organization.pk).update(premium_trial_deployments=2)
        project.organization.refresh_from_db()
        plan = "premium"
    deployment, _operation = services.deployment_create(
        project=project, actor=None, name=f"dep-{_stamp()}", plan=plan, tier="1k", region="local"
    )
    # Settled and running, as most actions expect; nothing here starts a broker (no worker runs in these tests).
    deployment.operations.update(status="succeeded")
    type(deployment).objects.filter(pk=deployment.pk).update(
        status="running", observed_generation=deployment.generation
    )
    return deployment.public_id


def _operation(org, values, route):
    return _deployment_row(values).operations.latest("created_at").public_id


def _mqtt_user(org, values, route):
    from deployments import services

    user, _ = services.mqtt_user_create(
        deployment=_deployment_row(values), actor=None, username=f"u{_stamp()}", password="a long mqtt password"
    )
    return user.public_id


def _rule(org, values, route):
    if "/acl-rules/" in route:
        from deployments import services

        rule, _ = services.acl_rule_create(
            deployment=_deployment_row(values), actor=None, permission="allow", action="publish", topic="sensors/#"
        )
        return rule.public_id
    return _alert_rule(org, values, route)


def _certificate(org, values, route):
    from deployments import tls_services
    from tests.deployments.tls_helpers import key_pem, make_leaf, pem

    leaf, key = make_leaf(None, "walk.example", sans=("walk.example",))
    certificate, _, _ = tls_services.tls_certificate_create(
        deployment=_deployment_row(values), actor=None, kind="server", certificate=pem(leaf), private_key=key_pem(key)
    )
    return certificate.public_id


def _quote(org, values, route):
    from billing.annual import annual_quote_create

    return annual_quote_create(deployment=_deployment_row(values), actor=None).public_id


def _invoice(org, values, route):
    from billing.annual import annual_quote_accept, annual_quote_create

    values = {**values, "dep": _deployment(org, values, route)}
    quote = annual_quote_create(deployment=_deployment_row(values), actor=None)
    subscription = annual_quote_accept(quote=quote, actor=None)
    return subscription.invoices.get().public_id


def _credit_note(org, values, route):
    from billing import services
    from billing.models import Invoice
    from billing.selectors import billing_account_for

    services.billing_account_update(
        account=billing_account_for(organization=org.organization),
        actor=None,
        country="US",
        email="ap@example.com",
        address="1 Main St",
        city="Springfield",
        postal_code="94105",
    )
    invoice = Invoice.objects.get(public_id=_invoice(org, values, route))
    return services.invoice_void(invoice=invoice, actor=None).credit_note.public_id


def _alert_rule(org, values, route):
    from alerts import defaults
    from alerts.models import AlertRule

    dep = _deployment_row({"dep": _deployment(org, values, route)})
    defaults.create_default_rules(deployment=dep)
    return AlertRule.objects.filter(deployment=dep).first().public_id


def _silence(org, values, route):
    from alerts import rules

    silence = rules.silence_create(
        project=org.default_project,
        actor=None,
        matchers={},
        starts_at=None,
        ends_at=timezone.now() + datetime.timedelta(hours=1),
    )
    return silence.public_id


def _alert(org, values, route):
    from alerts import collection, evaluate, rules
    from alerts.models import Alert

    dep = _deployment_row({"dep": _deployment(org, values, route)})
    rule = rules.alert_rule_create(
        project=dep.project,
        actor=None,
        deployment=dep,
        name="walk",
        metric="connections",
        window_seconds=3600,
        threshold=0,
    )
    collection.samples_store(rows=[(dep.pk, "connections", timezone.now(), 5.0)])
    evaluate.rules_evaluate(deployment_ids=[dep.pk])
    return Alert.objects.get(rule=rule).public_id


def _channel(org, values, route):
    from notifications import services as notification_services

    channel, _ = notification_services.channel_create(
        organization=org.organization,
        actor=None,
        name=f"c{_stamp()}",
        type="email",
        config={"addresses": ["ops@example.com"]},
    )
    return channel.public_id


def _device(org, values, route):
    from iot import services

    # An underscore, as public ids have: the tenancy walk makes a "missing" id from the part before it.
    device, _credentials, _operation = services.device_create(
        deployment=_deployment_row(values), actor=None, device_id=f"dev_walk{_stamp()}"
    )
    # With a shadow, so reading and deleting it answer as for any device in use.
    services.shadow_update_desired(device=device, actor=None, body={"state": {"desired": {"walk": True}}})
    return device.device_id


def _device_group(org, values, route):
    from iot import services

    return services.device_group_create(deployment=_deployment_row(values), actor=None, name=f"grp_walk{_stamp()}").name


def _edge_node(org, values, route):
    from iot import edge_services

    # An underscore, as public ids have: the tenancy walk makes a "missing" id from the part before it.
    node, _credentials, _operation = edge_services.edge_node_create(
        deployment=_deployment_row(values), actor=None, name=f"gw_walk{_stamp()}", kind="mosquitto"
    )
    return node.name


_JSON_SCHEMA = '{"type": "object", "properties": {"t": {"type": "number"}}}'


def _schema(org, values, route):
    from iot import codecs

    return codecs.schema_create(
        deployment=_deployment_row(values),
        actor=None,
        name=f"s_walk{_stamp()}",
        type="json_schema",
        source=_JSON_SCHEMA,
    ).name


def _codec_rule(org, values, route):
    from iot import codecs

    deployment = _deployment_row(values)
    schema = codecs.schema_create(
        deployment=deployment, actor=None, name=f"r_walk{_stamp()}", type="json_schema", source=_JSON_SCHEMA
    )
    rule = codecs.codec_rule_create(
        deployment=deployment,
        actor=None,
        topic_filter="devices/+/telemetry",
        direction="decode",
        schema=schema.name,
        topic_template="app/{device_id}/telemetry",
    )
    return rule.public_id


_peerings = itertools.count()


def _peering(org, values, route):
    """A peering on the deployment in `values`, moved to an AWS region (a local region has no VPC to peer)."""
    from controlplane import crypto
    from deployments.models import Deployment, Region, Tier
    from networking import services

    region, _ = Region.objects.get_or_create(
        code="walk-aws",
        defaults={
            "display_name": "Walk (AWS)",
            "provider": "aws",
            "cloud_region": "eu-central-1",
            "driver": Region.Driver.KUBERNETES,
            "in_cluster": True,
            "network": {"account_id": "123456789012", "vpc_id": "vpc-0a1b2c3d", "cidr": "10.0.0.0/16"},
            "cloud_credentials_encrypted": crypto.encrypt_str('{"access_key_id": "x", "secret_access_key": "y"}'),
        },
    )
    region.tiers.set(Tier.objects.all())
    deployment = _deployment_row(values)
    Deployment.objects.filter(pk=deployment.pk).update(region=region)
    deployment.refresh_from_db()
    n = next(_peerings)
    peering = services.vpc_peering_create(
        deployment=deployment,
        actor=None,
        provider="aws",
        cidr=f"10.{128 + n % 100}.{n // 100 % 256}.0/24",
        account_id="222233334444",
        vpc_id=f"vpc-{n:08x}",
        region="eu-central-1",
    )
    return peering.public_id


SAMPLE_MAKERS = {
    "org": lambda org, values, route: org.id,
    "project": lambda org, values, route: org.default_project.public_id,
    "member": _member,
    "invitation": _invitation,
    "key": _key,
    "event": _event,
    "dep": _deployment,
    "op": _operation,
    "user": _mqtt_user,
    "rule": _rule,
    "cert": _certificate,
    "quote": _quote,
    "inv": _invoice,
    "crn": _credit_note,
    "silence": _silence,
    "alert": _alert,
    "channel": _channel,
    "device": _device,
    "group": _device_group,
    "node": _edge_node,
    "peering": _peering,
    "schema": _schema,
    "version": lambda org, values, route: "1",
    "codec_rule": _codec_rule,
}


def sample_values(org, kwargs, *, route: str = "") -> dict[str, str]:
    """Every maker but `org` and `project` makes a fresh object, so a DELETE always has its own target."""
    values: dict[str, str] = {}
    for name in kwargs:
        maker = SAMPLE_MAKERS.get(name)
        if maker is None:
            raise AssertionError(
                f"No sample maker for path parameter <{name}>: add one to SAMPLE_MAKERS in tests/api_walk.py so the "
                "tenancy and role tests cover the new endpoint."
            )
        values[name] = maker(org, values, route)
    return values
