"""Every console view that takes a POST, submitted once by its organization's Owner with a valid form, records an audit
event of that very request (its X-Request-Id), in that organization (none for the signed-in user's own account),
naming the user: the console's mutations are held to the rule the API's are (tests/test_audit_walk.py).

The views are derived from the URL map and their method decorators, so a new POST view fails here until it is walked
(FORMS) or allow-listed as changing nothing stored (NOT_AUDITED), and every allow-listed view is submitted too
(QUIET_FORMS) and must record nothing. The organization and its sample objects are made once for the module
(tests/module_data.py); each submission runs in a savepoint of that data, rolled back after it, so on_commit work never
runs and an audit written after the change's transaction does not count. Sign-up's link page makes its user and
organization itself: its events are that new organization's, naming the new user.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import inspect
from collections.abc import Callable
from typing import Any

import pytest
from django.db import transaction
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver
from django.utils import timezone

from audit.models import AuditEvent
from tests.factories import PASSWORD, UserFactory, make_organization
from tests.module_data import data_for_module
from tests.tenancy_models import changed, fingerprint

pytestmark = pytest.mark.django_db


def _methods(callback) -> set[str]:
    """The HTTP methods a view answers: a class-based view's handlers, or the list its require_http_methods
    (require_POST, require_GET) decorator closes over; a function view without one answers every method."""
    view_class = getattr(callback, "view_class", None)
    if view_class is not None:
        return {name.upper() for name in view_class.http_method_names if hasattr(view_class, name)}
    function = callback
    while function is not None:
        if function.__closure__:
            allowed = inspect.getclosurevars(function).nonlocals.get("request_method_list")
            if allowed is not None:
                return set(allowed)
        function = getattr(function, "__wrapped__", None)
    return {"GET", "POST", "PUT", "PATCH", "DELETE"}


def _console_patterns(patterns, namespace=""):
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            yield from _console_patterns(pattern.url_patterns, pattern.namespace or namespace)
        elif isinstance(pattern, URLPattern) and namespace == "console":
            yield pattern


def console_post_views() -> list[str]:
    """The names of the console's URL patterns whose view takes a POST."""
    return sorted(p.name for p in _console_patterns(get_resolver().url_patterns) if "POST" in _methods(p.callback))


POST_VIEWS = console_post_views()


@dataclasses.dataclass
class World:
    org: Any  # tests.factories.OrgFixture, whose fields are untyped
    member: str
    project: str
    deployment: str
    premium: str  # a Premium deployment, for devices, schemas, codec rules and edge nodes
    enrolled: Any  # a user with two-factor authentication on, and its TOTP device
    device: Any


def _build_world() -> World:
    from projects import services as project_services
    from tests.api_walk import SAMPLE_MAKERS
    from tests.console.helpers import deployment, settle
    from tests.otp import enrol

    org: Any = make_organization()
    _user, member = org.add_member(roles=["auditor"])
    project = project_services.project_create(organization=org.organization, actor=None, name="walk project")
    plant = settle(deployment(org.default_project, name="walk-plant"))
    premium = SAMPLE_MAKERS["dep"](org, {}, "/devices")
    enrolled: Any = UserFactory()
    device, _codes = enrol(enrolled)
    return World(
        org=org,
        member=member.public_id,
        project=project.public_id,
        deployment=plant.public_id,
        premium=premium,
        enrolled=enrolled,
        device=device,
    )


@pytest.fixture(scope="module")
def world(django_db_setup, django_db_blocker):
    with data_for_module(django_db_blocker, _build_world) as data:
        yield data


@dataclasses.dataclass(frozen=True)
class Submission:
    url: str
    data: dict
    user: Any  # the user the audit event must name
    account_level: bool = False  # the event belongs to no organization: the user's own account
    # The fakes of the outside services the request calls (Stripe), serving while it is submitted.
    boundary: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    # A request that makes its own user and organization (signup-confirm): finds (user, organization) once it has
    # answered. Its events are then the new organization's, and the account-level one of the sign-in that follows.
    made: Callable[[], tuple[Any, Any]] | None = None
    # The organization the event must be recorded in, read from the answer, when it is not the walk's own.
    organization_of: Callable[[Any], Any] | None = None

    def expected(self, world: World, response) -> tuple[set[int | None], int]:
        """The organizations of the request's events, and the user they must name."""
        if self.made is not None:
            user, organization = self.made()
            return {organization.pk, None}, user.pk
        if self.organization_of is not None:
            return {self.organization_of(response)}, self.user.pk
        return {None if self.account_level else world.org.organization.pk}, self.user.pk


def _later(**delta) -> str:
    return (timezone.now() + datetime.timedelta(**delta)).strftime("%Y-%m-%dT%H:%M")


def _org_url(world: World, tail: str = "") -> str:
    return f"/console/o/{world.org.organization.public_id}{tail}"


def _project_url(world: World, tail: str = "", project: str | None = None) -> str:
    return _org_url(world, f"/p/{project or world.org.default_project.public_id}{tail}")


def _deployment_url(world: World, tail: str = "") -> str:
    return _project_url(world, f"/d/{world.deployment}{tail}")


def _premium_url(world: World, tail: str = "") -> str:
    return _project_url(world, f"/d/{world.premium}{tail}")


def _as_owner(client: Client, world: World) -> Any:
    client.force_login(world.org.owner)
    return world.org.owner


def _login(world: World, client: Client) -> Submission:
    return Submission(
        "/console/login", {"username": world.org.owner.email, "password": PASSWORD}, world.org.owner, True
    )


def _login_verify(world: World, client: Client) -> Submission:
    from tests.otp import next_code

    client.post("/console/login", {"username": world.enrolled.email, "password": PASSWORD})
    return Submission("/console/login/verify", {"code": next_code(world.device)}, world.enrolled, True)


def _two_factor_verify(world: World, client: Client) -> Submission:
    from tests.otp import next_code

    client.force_login(world.enrolled)  # signed in, not verified by the second factor
    return Submission("/console/account/two-factor/verify", {"code": next_code(world.device)}, world.enrolled, True)


def _two_factor_start(world: World, client: Client) -> Submission:
    user = _as_owner(client, world)
    return Submission("/console/account/two-factor", {"action": "start", "password": PASSWORD}, user, True)


def _two_factor_setup(world: World, client: Client) -> Submission:
    from django_otp.plugins.otp_totp.models import TOTPDevice

    from tests.otp import totp_code

    user = _as_owner(client, world)
    client.post("/console/account/two-factor", {"action": "start", "password": PASSWORD})
    pending = TOTPDevice.objects.get(user=user, confirmed=False)
    return Submission("/console/account/two-factor/setup", {"code": totp_code(pending)}, user, True)


def _organization_two_factor(world: World, client: Client) -> Submission:
    """Only an Owner with a second factor, in a session it verified, may require one of every member."""
    from tests.otp import enrol, next_code

    # A copy: enrolling changes the user's row (its sessions end), which the rollback restores but the module's
    # object would keep.
    owner = type(world.org.owner).objects.get(pk=world.org.owner.pk)
    device, _codes = enrol(owner)
    client.post("/console/login", {"username": owner.email, "password": PASSWORD})
    client.post("/console/login/verify", {"code": next_code(device)})
    url = f"/console/account/two-factor/organizations/{world.org.organization.public_id}"
    return Submission(url, {"require_two_factor": "on"}, owner)


def _password_reset_confirm(world: World, client: Client) -> Submission:
    from django.contrib.auth.tokens import default_token_generator
    from django.utils.encoding import force_bytes
    from django.utils.http import urlsafe_base64_encode

    # The token hashes the row's password and last sign-in, which earlier walks changed on the module's object only.
    user = type(world.org.owner).objects.get(pk=world.org.owner.pk)
    uid = urlsafe_base64_encode(force_bytes(user.pk))
    link = client.get(f"/console/password-reset/{uid}/{default_token_generator.make_token(user)}")
    new = "a walk of new words"
    return Submission(link["Location"], {"new_password1": new, "new_password2": new}, user, True)


def _auto_renew(world: World, client: Client) -> Submission:
    from billing.annual import annual_quote_accept, annual_quote_create
    from deployments.models import Deployment

    user = _as_owner(client, world)
    dep = Deployment.objects.get(public_id=_sample(world, "dep"))
    subscription = annual_quote_accept(quote=annual_quote_create(deployment=dep, actor=None), actor=None)
    return Submission(
        _org_url(world, f"/billing/annual/{subscription.public_id}/auto-renew"), {"auto_renew": "on"}, user
    )


def _coupon(world: World, client: Client) -> Submission:
    from billing.models import Coupon

    user = _as_owner(client, world)
    Coupon.objects.create(code="WALK10", amount=1000, currency="USD")
    return Submission(_org_url(world, "/billing/credits"), {"coupon-code": "WALK10"}, user)


def _device_import(world: World, client: Client) -> Submission:
    from django.core.files.uploadedfile import SimpleUploadedFile

    user = _as_owner(client, world)
    upload = SimpleUploadedFile("devices.csv", b"device_id\nwalk-imported\n", content_type="text/csv")
    return Submission(_premium_url(world, "/devices/import"), {"file": upload}, user)


def _enrolled(path: str) -> Callable[[World, Client], Submission]:
    def submission(world: World, client: Client) -> Submission:
        client.force_login(world.enrolled)
        return Submission(path, {"password": PASSWORD}, world.enrolled, True)

    return submission


def _owner(url: Callable[[World], str], data: dict | Callable[[World], dict] | None = None, *, account_level=False):
    def submission(world: World, client: Client) -> Submission:
        user = _as_owner(client, world)
        body = data(world) if callable(data) else dict(data or {})
        return Submission(url(world), body, user, account_level)

    return submission


_PREMIUM = {"device", "group", "node", "schema", "codec_rule"}


def _sample(world: World, kind: str, route: str = "", **values: str) -> str:
    """A fresh object of `kind`, made as tests/test_audit_walk.py makes the API's (tests/api_walk.py)."""
    from tests.api_walk import SAMPLE_MAKERS

    dep = world.premium if kind in _PREMIUM else world.deployment
    return SAMPLE_MAKERS[kind](world.org, {"dep": dep, **values}, route)


def _on_sample(kind: str, tail: Callable[[World, str], str], data=None, *, route: str = ""):
    """The Owner submits `data` to the page `tail` names for a fresh object of `kind`."""

    def submission(world: World, client: Client) -> Submission:
        user = _as_owner(client, world)
        made = _sample(world, kind, route)
        body = data(world, made) if callable(data) else dict(data or {})
        return Submission(tail(world, made), body, user)

    return submission


def _organization_delete(world: World, client: Client) -> Submission:
    """The walk's organization has deployments, which block its deletion: the Owner deletes another of theirs,
    empty (the refusal itself: tests/console/test_organization_delete_page.py)."""
    from organizations import services as organization_services

    user = _as_owner(client, world)
    closable = organization_services.organization_create(name="Walk closable", owner=user)
    url = f"/console/o/{closable.public_id}/settings/delete"
    return Submission(url, {"delete-confirm_name": closable.name}, user, organization_of=lambda response: closable.pk)


def _organization_create(world: World, client: Client) -> Submission:
    def created(response) -> Any:
        from organizations.models import Organization

        return Organization.objects.get(public_id=response["Location"].rstrip("/").split("/")[-1]).pk

    user = _as_owner(client, world)
    return Submission("/console/organizations/new", {"name": "Walk new"}, user, organization_of=created)


def _invitation_accept(world: World, client: Client) -> Submission:
    from organizations import services as organization_services

    invitee: Any = UserFactory()
    _invitation, token = organization_services.invitation_create(
        organization=world.org.organization, actor=None, email=invitee.email, roles=["auditor"]
    )
    client.force_login(invitee)
    return Submission("/console/invitations/accept", {"token": token}, invitee)


def _signup_confirm(world: World, client: Client) -> Submission:
    """The link's page creates the account, its organization and Default project, and signs it in: the user does not
    exist until the request, so its events name the user and the organization it made."""
    from django.core import mail

    from accounts.models import User
    from accounts.services import signup_email_send
    from organizations.models import Membership

    email = "walk-signup@example.com"
    signup_email_send(email=email, full_name="Walker", organization_name="Walk Signed Up")
    token = mail.outbox[-1].body.split("token=", 1)[1].split()[0]

    def made() -> tuple[Any, Any]:
        user = User.objects.get(email=email)
        return user, Membership.objects.get(user=user).organization

    return Submission(
        "/console/signup/confirm", {"token": token, "password": "a walk of new words"}, None, True, made=made
    )


def _billing_card(world: World, client: Client) -> Submission:
    """Checkout in setup mode, on the Stripe fake: the account's customer is made there first."""
    from django.test import override_settings

    from tests.fakes.stripe_api import FakeStripe

    @contextlib.contextmanager
    def stripe() -> Any:
        with FakeStripe() as fake, override_settings(STRIPE_SECRET_KEY=fake.api_key, STRIPE_API_BASE=fake.url):
            yield

    user = _as_owner(client, world)
    return Submission(_org_url(world, "/billing/card"), {}, user, boundary=stripe)


def _threshold_rule(world: World) -> dict:
    from tests.console.helpers import threshold_rule_form

    return threshold_rule_form(**{"rule-name": "walk busy"})


def _alert_rule_edit(world: World, client: Client) -> Submission:
    from alerts import rules

    user = _as_owner(client, world)
    rule = rules.alert_rule_create(
        project=world.org.default_project, actor=None, name="walk busy", metric="connections", threshold=2
    )
    return Submission(
        _project_url(world, f"/alert-rules/{rule.public_id}"),
        {**_threshold_rule(world), "rule-threshold": "7.5"},
        user,
    )


def _codec_rule_create(world: World, client: Client) -> Submission:
    user = _as_owner(client, world)
    schema = _sample(world, "schema")
    return Submission(
        _premium_url(world, "/codec-rules"),
        {
            "rule-topic_filter": "devices/+/walk",
            "rule-direction": "decode",
            "rule-schema": schema,
            "rule-topic_template": "app/{device_id}/walk",
            "rule-enabled": "on",
        },
        user,
    )


def _codec_rule_edit(world: World, client: Client) -> Submission:
    from iot.models import CodecRule

    user = _as_owner(client, world)
    rule = CodecRule.objects.select_related("schema_version__schema").get(public_id=_sample(world, "codec_rule"))
    return Submission(
        _premium_url(world, f"/codec-rules/{rule.public_id}"),
        {
            "name": "walked",
            "topic_filter": "devices/+/walked",
            "direction": rule.direction,
            "schema": rule.schema_version.schema.name,
            "topic_template": "app/{device_id}/walked",
            "enabled": "on",
        },
        user,
    )


def _tls_upload(world: World, client: Client) -> Submission:
    from tests.deployments.tls_helpers import key_pem, make_leaf, pem

    user = _as_owner(client, world)
    leaf, key = make_leaf(None, "walk.example", sans=("walk.example",))
    return Submission(
        _deployment_url(world, "/tls"),
        {"kind": "server", "server-certificate": pem(leaf), "server-private_key": key_pem(key)},
        user,
    )


def _peering_create(world: World, client: Client) -> Submission:
    """The peering sample moves the deployment to an AWS region (a local region has no VPC to peer) until the
    rollback; its CIDRs are in 10.128.0.0 to 10.227.255.255, so this one overlaps none."""
    user = _as_owner(client, world)
    _sample(world, "peering")
    return Submission(
        _deployment_url(world, "/vpc-peering"),
        {
            "provider": "aws",
            "account_id": "222233334444",
            "vpc_id": "vpc-0a1b2c01",
            "region": "eu-central-1",
            "cidr": "10.250.0.0/24",
        },
        user,
    )


# A valid form per POST view walked: a callable gets the module's world and the test's client (to sign in, or to take
# a step the form needs first) and returns what to submit.
FORMS: dict[str, Callable[[World, Client], Submission]] = {
    "login": _login,
    "login-verify": _login_verify,
    "logout": _owner(lambda w: "/console/logout", account_level=True),
    "two-factor-verify": _two_factor_verify,
    "two-factor": _two_factor_start,
    "two-factor-setup": _two_factor_setup,
    "two-factor-disable": _enrolled("/console/account/two-factor/disable"),
    "two-factor-recovery-codes": _enrolled("/console/account/two-factor/recovery-codes"),
    "password-change": _owner(
        lambda w: "/console/account/password",
        {"old_password": PASSWORD, "new_password1": "a walk of new words", "new_password2": "a walk of new words"},
        account_level=True,
    ),
    "organization-two-factor": _organization_two_factor,
    "password-reset-confirm": _password_reset_confirm,
    "organization": _owner(lambda w: _org_url(w), {"new-name": "walked project"}),
    "settings": _owner(lambda w: _org_url(w, "/settings"), {"org-name": "Walk renamed"}),
    "transfer": _owner(lambda w: _org_url(w, "/settings/transfer-ownership"), lambda w: {"transfer-member": w.member}),
    "organization-delete": _organization_delete,
    "organization-create": _organization_create,
    "members": _owner(
        lambda w: _org_url(w, "/members"), {"invite-email": "walk@example.com", "invite-role": "auditor"}
    ),
    "member-remove": _owner(lambda w: _org_url(w, f"/members/{w.member}/remove")),
    "api-keys": _owner(lambda w: _org_url(w, "/api-keys"), {"new-name": "walk key", "new-role": "auditor"}),
    "api-key-revoke": _owner(lambda w: _org_url(w, f"/api-keys/{w.org.owner_key.public_id}/revoke")),
    "api-key-protection": _owner(
        lambda w: _org_url(w, f"/api-keys/{w.org.owner_key.public_id}/protection"), {"deletion_protection": "on"}
    ),
    "project-settings": _owner(lambda w: _project_url(w, "/settings"), {"name": "walked", "description": "walked"}),
    "project-delete": _owner(lambda w: _project_url(w, "/delete", project=w.project)),
    "deployment-rename": _owner(lambda w: _deployment_url(w, "/rename"), {"rename-name": "walk-renamed"}),
    "deployment-protection": _owner(lambda w: _deployment_url(w, "/protection"), {"deletion_protection": "on"}),
    "deployment-mqtt-users": _owner(
        lambda w: _deployment_url(w, "/mqtt-users"), {"new-username": "walker", "new-password": "a long mqtt password"}
    ),
    "deployment-acl": _owner(
        lambda w: _deployment_url(w, "/acl"),
        {"new-permission": "deny", "new-action": "subscribe", "new-topic": "walk/#"},
    ),
    "invitation-accept": _invitation_accept,
    "deployment-action": _owner(lambda w: _deployment_url(w, "/actions/restart")),
    "deployment-move": _owner(lambda w: _deployment_url(w, "/move"), lambda w: {"project": w.project}),
    "deployment-delete": _owner(lambda w: _deployment_url(w, "/delete"), {"confirm_name": "walk-plant"}),
    "deployment-mqtt-user-delete": _on_sample("user", lambda w, made: _deployment_url(w, f"/mqtt-users/{made}/delete")),
    "deployment-mqtt-user-password": _on_sample(
        "user",
        lambda w, made: _deployment_url(w, f"/mqtt-users/{made}/password"),
        lambda w, made: {f"{made}-password": "another long mqtt password"},
    ),
    "deployment-acl-delete": _on_sample(
        "rule", lambda w, made: _deployment_url(w, f"/acl/{made}/delete"), route="/acl-rules/"
    ),
    "deployment-acl-move": _on_sample(
        "rule", lambda w, made: _deployment_url(w, f"/acl/{made}/move"), {"direction": "down"}, route="/acl-rules/"
    ),
    "channel": _on_sample("channel", lambda w, made: _org_url(w, f"/channels/{made}"), {"enabled": "off"}),
    "channel-delete": _on_sample("channel", lambda w, made: _org_url(w, f"/channels/{made}/delete")),
    "alert-rule-toggle": _on_sample(
        "rule", lambda w, made: _project_url(w, f"/alert-rules/{made}/toggle"), {"enabled": "off"}
    ),
    "alert-rule-delete": _on_sample("rule", lambda w, made: _project_url(w, f"/alert-rules/{made}/delete")),
    "silence-expire": _on_sample("silence", lambda w, made: _project_url(w, f"/silences/{made}/expire")),
    "billing-budget": _owner(
        lambda w: _org_url(w, "/billing/budget"),
        {"budget-metric": "spend_month_to_date", "budget-budget_amount": "250"},
    ),
    "invitation-resend": _on_sample("invitation", lambda w, made: _org_url(w, f"/invitations/{made}/resend")),
    "invitation-revoke": _on_sample("invitation", lambda w, made: _org_url(w, f"/invitations/{made}/revoke")),
    "member-edit": _owner(lambda w: _org_url(w, f"/members/{w.member}"), {"roles": ["accountant"]}),
    "api-key-rotate": _owner(
        lambda w: _org_url(w, f"/api-keys/{w.org.owner_key.public_id}/rotate"), {"overlap_seconds": "600"}
    ),
    "silence-create": _owner(lambda w: _project_url(w, "/silences"), lambda w: {"silence-ends_at": _later(hours=1)}),
    "alert-acknowledge": _on_sample(
        "alert",
        lambda w, made: _org_url(w, f"/alerts/{made}/acknowledge"),
        lambda w, made: {f"{made}-comment": "walking it", f"{made}-duration": "3600"},
    ),
    "channels": _owner(
        lambda w: _org_url(w, "/channels"),
        {"new-name": "walk channel", "new-type": "email", "new-addresses": "walk@example.com"},
    ),
    "channel-test": _on_sample("channel", lambda w, made: _org_url(w, f"/channels/{made}/test")),
    "deployment-annual": _owner(lambda w: _deployment_url(w, "/annual")),
    "deployment-annual-quote": _on_sample(
        "quote", lambda w, made: _deployment_url(w, f"/annual/{made}"), {"accept-auto_renew": "on"}
    ),
    "deployment-tls-delete": _on_sample("cert", lambda w, made: _deployment_url(w, f"/tls/{made}/delete")),
    "deployment-rate-limits": _owner(lambda w: _deployment_url(w, "/rate-limits"), {"connection-messages_rate": "100"}),
    "deployment-vpc-peering-protection": _on_sample(
        "peering",
        lambda w, made: _deployment_url(w, f"/vpc-peering/{made}/protection"),
        {"deletion_protection": "on"},
    ),
    "deployment-vpc-peering-delete": _on_sample(
        "peering", lambda w, made: _deployment_url(w, f"/vpc-peering/{made}/delete")
    ),
    "deployment-device-register": _owner(lambda w: _premium_url(w, "/devices/new"), {"device_id": "walk-device"}),
    "deployment-device-groups": _owner(lambda w: _premium_url(w, "/device-groups"), {"group-name": "walkers"}),
    "deployment-device-group-delete": _on_sample(
        "group", lambda w, made: _premium_url(w, f"/device-groups/{made}/delete")
    ),
    "deployment-device-enabled": _on_sample(
        "device", lambda w, made: _premium_url(w, f"/device/{made}/enabled"), {"enabled": "false"}
    ),
    "deployment-device-shadow": _on_sample(
        "device", lambda w, made: _premium_url(w, f"/device/{made}/shadow"), {"desired": '{"walk": 2}'}
    ),
    "deployment-device-edit": _on_sample(
        "device", lambda w, made: _premium_url(w, f"/device/{made}/edit"), {"description": "walked"}
    ),
    "deployment-device-credentials": _on_sample(
        "device", lambda w, made: _premium_url(w, f"/device/{made}/credentials")
    ),
    "deployment-device-delete": _on_sample("device", lambda w, made: _premium_url(w, f"/device/{made}/delete")),
    "deployment-schema-delete": _on_sample("schema", lambda w, made: _premium_url(w, f"/schemas/{made}/delete")),
    "deployment-codec-rule-toggle": _on_sample(
        "codec_rule", lambda w, made: _premium_url(w, f"/codec-rules/{made}/toggle"), {"enabled": "false"}
    ),
    "deployment-codec-rule-delete": _on_sample(
        "codec_rule", lambda w, made: _premium_url(w, f"/codec-rules/{made}/delete")
    ),
    "deployment-edge-nodes": _owner(
        lambda w: _premium_url(w, "/edge-nodes"), {"node-name": "walk-node", "node-kind": "mosquitto"}
    ),
    "deployment-edge-node-delete": _on_sample("node", lambda w, made: _premium_url(w, f"/edge-nodes/{made}/delete")),
    "billing-auto-renew": _auto_renew,
    "deployment-devices-import": _device_import,
    "billing-credits": _coupon,
    "deployment-schemas": _owner(
        lambda w: _premium_url(w, "/schemas"),
        {
            "new-name": "walk",
            "new-type": "json_schema",
            "new-source": '{"type": "object", "properties": {"t": {"type": "number"}}}',
        },
    ),
    "deployment-schema": _on_sample(
        "schema",
        lambda w, made: _premium_url(w, f"/schemas/{made}"),
        {"version-source": '{"type": "object", "properties": {"u": {"type": "number"}}}'},
    ),
    "billing-details": _owner(
        lambda w: _org_url(w, "/billing/details"),
        {
            "details-country": "US",
            "details-email": "ap@example.com",
            "details-address": "1 Main St",
            "details-city": "Springfield",
            "details-postal_code": "94105",
        },
    ),
    "signup-confirm": _signup_confirm,
    "billing-card": _billing_card,
    "alert-rule-create": _owner(lambda w: _project_url(w, "/alert-rules/new"), _threshold_rule),
    "alert-rule": _alert_rule_edit,
    "deployment-create": _owner(
        lambda w: _project_url(w, "/deployments/new"),
        {"plan": "dedicated", "region": "local", "tier": "1k", "billing_cycle": "hourly", "name": "walk-created"},
    ),
    "deployment-codec-rules": _codec_rule_create,
    "deployment-codec-rule": _codec_rule_edit,
    "deployment-edge-node": _on_sample(
        "node",
        lambda w, made: _premium_url(w, f"/edge-nodes/{made}"),
        {"config-up_topics": "sensors/#", "config-settings": '{"sample_rate": 5}'},
    ),
    "deployment-tls": _tls_upload,
    "deployment-vpc-peering": _peering_create,
}

# POST views that rightly record no audit event: each changes nothing stored, which the walk checks with the
# organization's and the accounts' fingerprint (tests/tenancy_models.py) around the submission. A view that changes
# stored state does not belong here: the service it calls forgot its audit_record.
_ANY_METHOD = "a page whose view takes every method (no method decorator): a POST renders it, storing nothing"
NOT_AUDITED: dict[str, str] = {
    "signup": "enqueues the confirmation email; the account is made on the link's page (signup-confirm)",
    "password-reset": "enqueues the reset email; the password changes on the link's page (password-reset-confirm)",
    "deployment-schema-try": "try it: decodes or encodes the posted payload with the schema, stores nothing",
    "deployment-codec-rule-try": "try it: runs the rule on the posted payload, stores nothing",
    "deployment-vpc-peering-check": "the pre-flight checks of a peering, run without creating anything",
    "home": _ANY_METHOD,
    "signup-sent": _ANY_METHOD,
    "password-reset-done": _ANY_METHOD,
    "password-reset-complete": _ANY_METHOD,
    "two-factor-qr": _ANY_METHOD,
}


def _anonymous(url: str, data: dict | None = None) -> Callable[[World, Client], Submission]:
    def submission(world: World, client: Client) -> Submission:
        return Submission(url, dict(data or {}), None, True)

    return submission


def _peering_check(world: World, client: Client) -> Submission:
    """The pre-flight of the peering _peering_create makes, on the deployment the peering sample moves to AWS."""
    submission = _peering_create(world, client)
    return dataclasses.replace(submission, url=_deployment_url(world, "/vpc-peering/check"))


def _two_factor_qr(world: World, client: Client) -> Submission:
    """The QR code of the authenticator the Owner's session has begun setting up (a pending TOTP device)."""
    user = _as_owner(client, world)
    client.post("/console/account/two-factor", {"action": "start", "password": PASSWORD})
    return Submission("/console/account/two-factor/qr.svg", {}, user, True)


_TRIED = b'{"t": 21.5}'.hex()  # a payload the samples' JSON schema (tests/api_walk.py) decodes

# A form for every allow-listed view, submitted to check that it answers and records nothing: an allow-listed view
# never submitted could hide a mutation that forgot its audit.
QUIET_FORMS: dict[str, Callable[[World, Client], Submission]] = {
    "signup": _anonymous("/console/signup", {"email": "walk-signup@example.com"}),
    "password-reset": _anonymous("/console/password-reset", {"email": "walk-reset@example.com"}),
    "home": _owner(lambda w: "/", account_level=True),
    "signup-sent": _anonymous("/console/signup/sent"),
    "password-reset-done": _anonymous("/console/password-reset/sent"),
    "password-reset-complete": _anonymous("/console/password-reset/complete"),
    "deployment-schema-try": _on_sample(
        "schema",
        lambda w, made: _premium_url(w, f"/schemas/{made}/try"),
        {"try-direction": "decode", "try-payload_format": "hex", "try-payload": _TRIED},
    ),
    "deployment-codec-rule-try": _on_sample(
        "codec_rule",
        lambda w, made: _premium_url(w, f"/codec-rules/{made}/try"),
        {"try-payload_format": "hex", "try-payload": _TRIED},
    ),
    "deployment-vpc-peering-check": _peering_check,
    "two-factor-qr": _two_factor_qr,
}


def test_walk_names_every_console_post_view_once():
    """A new POST view fails here until it is walked or allow-listed."""
    walked, allowed = set(FORMS), set(NOT_AUDITED)
    assert walked & allowed == set(), "a view named twice"
    assert set(POST_VIEWS) - (walked | allowed) == set(), "a POST view the walk does not know"
    assert (walked | allowed) - set(POST_VIEWS) == set(), "an entry for a view that is gone or takes no POST"
    assert len(POST_VIEWS) >= 80
    assert set(QUIET_FORMS) - allowed == set(), "a quiet form for a view that is not allow-listed"
    assert allowed - set(QUIET_FORMS) == set(), "an allow-listed view never submitted: the list could hide a gap"


def _stored(world: World) -> dict[str, tuple[int, str]]:
    """Every column of the walk's organization's rows and of every account's: a session-authenticated request writes
    none of them (no last-seen time), so nothing is left out, as the API walk must leave out an API key's last use."""
    return fingerprint(world.org.organization, accounts=True)


@pytest.mark.parametrize("name", sorted(QUIET_FORMS))
def test_allow_listed_console_post_records_no_audit_event_and_changes_nothing(name, world, redis_clean):
    with transaction.atomic():
        client = Client()
        submission = QUIET_FORMS[name](world, client)
        before = _stored(world)
        response = client.post(submission.url, submission.data)
        writes = changed(before, _stored(world))
        events = list(AuditEvent.objects.filter(request_id=response["X-Request-Id"]))
        transaction.set_rollback(True)
    assert response.status_code < 400, (response.status_code, response.content[:800])
    assert events == [], "allow-listed as changing nothing, yet audited: take it off NOT_AUDITED"
    assert writes == {}, f"allow-listed as changing nothing stored, yet it changed {writes}: audit it"


@pytest.mark.parametrize("name", sorted(FORMS))
def test_console_post_records_an_audit_event_of_its_request_when_it_succeeds(name, world, redis_clean):
    with transaction.atomic():
        client = Client()
        submission = FORMS[name](world, client)
        with submission.boundary():
            response = client.post(submission.url, submission.data)
        events = list(AuditEvent.objects.filter(request_id=response["X-Request-Id"]))
        organizations = {event.organization_id for event in events}
        actors = {event.actor_id for event in events}
        expected, user = submission.expected(world, response) if response.status_code < 400 else (None, None)
        transaction.set_rollback(True)
    assert response.status_code < 400, (response.status_code, response.content[:800])
    assert events, f"{name} answered {response.status_code} and recorded no audit event"
    assert organizations == expected
    assert actors == {user}, "the audit event names someone other than the user"
