"""The VPC peering tab through Django's test client: the list and its badges, the provider's fields, the pre-flight's
messages beside their fields, create (audited, through the API's service), the peering page's step and reason, the
poll's 204 while nothing changed, delete and deletion protection, a `local` region, and what each role may do."""

import datetime
import re

import pytest

from audit.models import AuditEvent
from deployments.models import Region
from networking import services
from networking.models import VpcPeering
from tests.console.helpers import console_path
from tests.networking.conftest import (
    AZURE_CUSTOMER_SUBSCRIPTION,
    AZURE_CUSTOMER_TENANT,
    make_deployment,
    make_region,
)

pytestmark = pytest.mark.django_db

AZURE = {
    "provider": "azure",
    "tenant_id": AZURE_CUSTOMER_TENANT,
    "subscription_id": AZURE_CUSTOMER_SUBSCRIPTION,
    "resource_group": "acme-rg",
    "vnet_name": "plant-vnet",
    "cidr": "10.1.0.0/16",
}


@pytest.fixture
def region(deployments_catalog):
    # No poll runs in these tests (nothing is committed), so the region's endpoints are never called.
    return make_region(
        code="azure-westeurope",
        provider="azure",
        cloud_region="westeurope",
        network={
            "tenant_id": "11111111-1111-4111-8111-111111111111",
            "subscription_id": "22222222-2222-4222-8222-222222222222",
            "resource_group": "platform-rg",
            "vnet_name": "brokers-vnet",
            "cidr": "10.0.0.0/16",
            "reserved_cidrs": ["10.96.0.0/12"],
        },
        credentials={"client_id": "55555555-5555-4555-8555-555555555555", "client_secret": "s"},
    )


@pytest.fixture
def plant(owner_org, region):
    return make_deployment(owner_org.default_project, region, name="plant")


@pytest.fixture
def owner(client, owner_org):
    client.force_login(owner_org.owner)
    return client


def _tab(plant, page=""):
    return console_path(plant, f"vpc-peering/{page}" if page else "vpc-peering")


def _field_errors(html: str, field: str) -> list[str]:
    """The messages Django renders beside `field` (its error list, tied to the input by aria-describedby)."""
    found = re.search(rf'<ul class="errorlist" id="id_{field}_error">(.*?)</ul>', html, re.S)
    assert found, f"no errors beside {field}"
    assert re.search(
        rf'<input[^>]*aria-invalid="true"[^>]*id="id_{field}"|<input[^>]*id="id_{field}"[^>]*aria-invalid="true"', html
    )
    return re.findall(r"<li>(.*?)</li>", found.group(1))


def _peering(plant, **overrides) -> VpcPeering:
    fields = {k: v for k, v in AZURE.items() if k != "provider"}
    return services.vpc_peering_create(deployment=plant, actor=None, provider="azure", **{**fields, **overrides})


# --- The list and the form ---------------------------------------------------------------------------------------


def test_tab_shows_the_regions_provider_fields_and_badges_when_owner_visits(owner, plant):
    waiting = _peering(plant)
    VpcPeering.objects.filter(pk=waiting.pk).update(state="awaiting_customer_action")
    failed = _peering(plant, cidr="10.2.0.0/16", vnet_name="lab-vnet")
    VpcPeering.objects.filter(pk=failed.pk).update(state="failed", last_error="Azure refused")
    html = owner.get(_tab(plant)).content.decode()
    assert 'aria-current="page">VPC peering</a>' in html
    assert '<span class="badge badge-busy">awaiting customer action</span>' in html
    assert '<span class="badge badge-bad">failed</span>' in html
    assert html.index(failed.public_id) < html.index(waiting.public_id)  # newest first
    for label in ("Tenant ID", "Subscription ID", "Resource group", "Virtual network name", "Your network&#x27;s CIDR"):
        assert f">{label}</label>" in html, label
    assert "AWS account ID" not in html and "GCP project ID" not in html
    assert '<option value="azure" selected>Azure</option>' in html
    assert "This deployment runs in Azure (westeurope)" in html


@pytest.mark.parametrize(
    ("provider", "shown", "hidden"),
    [
        ("aws", ["AWS account ID", "VPC ID", "AWS region"], ["Tenant ID", "GCP project ID"]),
        ("gcp", ["GCP project ID", "VPC network name"], ["Tenant ID", "AWS account ID"]),
        ("azure", ["Tenant ID", "Virtual network name"], ["AWS account ID", "GCP project ID"]),
    ],
)
def test_fields_follow_the_provider_when_chosen_without_javascript_or_with_htmx(owner, plant, provider, shown, hidden):
    step = owner.get(_tab(plant), {"provider": provider}).content.decode()  # the no-JavaScript choice step (GET)
    swapped = owner.get(_tab(plant, "fields"), {"provider": provider, "cidr": "10.7.0.0/16"}, HTTP_HX_REQUEST="true")
    fragment = swapped.content.decode()
    assert fragment.startswith('<div id="peering-fields">') and "<html" not in fragment
    assert 'value="10.7.0.0/16"' in fragment  # what was typed survives the swap
    for html in (step, fragment):
        assert f'name="provider" value="{provider}"' in html
        for label in shown:
            assert f">{label}</label>" in html, (provider, label)
        for label in hidden:
            assert f">{label}</label>" not in html, (provider, label)


def test_choose_button_shows_other_providers_fields_when_posted_without_javascript(owner, plant):
    response = owner.post(_tab(plant), {"provider": "gcp", "choose": "1", "cidr": "10.5.0.0/16"})
    html = response.content.decode()
    assert response.status_code == 200 and ">GCP project ID</label>" in html and 'value="10.5.0.0/16"' in html
    assert "errorlist" not in html and not VpcPeering.objects.exists()


def test_check_lists_each_passed_check_and_creates_nothing_when_input_is_valid(owner, plant):
    response = owner.post(_tab(plant, "check"), AZURE)
    html = response.content.decode()
    assert response.status_code == 200
    assert "Pre-flight passed." in html
    assert "10.1.0.0/16 is private (RFC 1918)" in html
    assert "10.1.0.0/16 does not overlap the platform&#x27;s network 10.0.0.0/16" in html
    assert f'value="{AZURE_CUSTOMER_TENANT}"' in html  # the values stay, ready for Create
    assert not VpcPeering.objects.exists() and not AuditEvent.objects.filter(action__startswith="vpc_peering").exists()


def test_check_answers_only_the_form_when_asked_by_htmx(owner, plant):
    html = owner.post(_tab(plant, "check"), AZURE, HTTP_HX_REQUEST="true").content.decode()
    assert html.startswith('<form method="post" id="peering-form"') and "Pre-flight passed." in html


BAD = [
    ({"cidr": "10.0.0.0/33"}, "cidr", "the prefix length must be 0 to 32"),
    ({"cidr": "8.8.8.0/24"}, "cidr", "8.8.8.0/24 is not a private range"),
    ({"cidr": "10.0.128.0/20"}, "cidr", "overlaps the platform&#x27;s network 10.0.0.0/16 in region azure-westeurope"),
    ({"cidr": "10.100.0.0/16"}, "cidr", "overlaps the reserved range 10.96.0.0/12"),
    ({"cidr": "10.1.0.1/16"}, "cidr", "did you mean 10.1.0.0/16?"),
    ({"cidr": ""}, "cidr", "This field is required."),
    ({"cidr": "10.1.0.0/1\x1b6"}, "cidr", "Must not contain control characters"),
    ({"vnet_name": "plant\u2028vnet"}, "vnet_name", "Must not contain control characters"),
    ({"tenant_id": "acme"}, "tenant_id", "An Azure tenant id is a GUID"),
    ({"resource_group": "acme rg; rm -rf /"}, "resource_group", "An Azure resource group name is 1 to 90"),
    ({"subscription_id": ""}, "subscription_id", "Required for a azure peering."),
]


@pytest.mark.parametrize("page", ["check", ""])
@pytest.mark.parametrize(("change", "field", "message"), BAD, ids=[repr(c) for c, _, _ in BAD])
def test_refused_input_is_shown_beside_its_field_when_checked_or_created(owner, plant, page, change, field, message):
    response = owner.post(_tab(plant, page), {**AZURE, **change})
    html = response.content.decode()
    assert response.status_code == 400, html
    assert any(message in m for m in _field_errors(html, field)), _field_errors(html, field)
    assert "The pre-flight refused this peering: each problem is shown beside its field. Nothing was created." in html
    assert not VpcPeering.objects.exists()


def test_overlap_with_another_peering_names_that_peering_when_checked(owner, plant):
    first = _peering(plant)
    html = owner.post(_tab(plant, "check"), {**AZURE, "vnet_name": "lab-vnet", "cidr": "10.1.128.0/17"}).content
    messages = _field_errors(html.decode(), "cidr")
    assert messages == [f"10.1.128.0/17 overlaps peering {first.public_id} (10.1.0.0/16) of this deployment."]


def test_another_provider_is_refused_beside_the_provider_when_region_is_azure(owner, plant):
    body = {"provider": "aws", "account_id": "222233334444", "vpc_id": "vpc-0a1b2c3d", "region": "westeurope"}
    html = owner.post(_tab(plant, "check"), {**body, "cidr": "10.1.0.0/16"}).content.decode()
    assert "runs on azure; a aws network cannot be peered with it" in html
    assert not VpcPeering.objects.exists()


def test_create_records_a_pending_audited_peering_and_opens_its_page_when_input_is_valid(owner, owner_org, plant):
    response = owner.post(_tab(plant), {**AZURE, "deletion_protection": "on", "create": "1"})
    peering = VpcPeering.objects.get()
    assert response.status_code == 302 and response["Location"] == _tab(plant, peering.public_id)
    assert (peering.state, peering.provider, peering.cidr, peering.vnet_name) == (
        "pending",
        "azure",
        "10.1.0.0/16",
        "plant-vnet",
    )
    assert peering.deletion_protection and peering.created_by == owner_org.owner
    event = AuditEvent.objects.get(action="vpc_peering.create")
    assert event.target_id == peering.public_id and event.actor_id == owner_org.owner.pk
    page = owner.get(response["Location"]).content.decode()
    assert f"Peering {peering.public_id} requested" in page
    assert "The platform is creating its side of the peering at Azure" in page
    assert 'hx-trigger="every 2s"' in page and '<meta http-equiv="refresh" content="5">' in page


def test_fields_of_another_provider_are_ignored_when_posted_with_a_create(owner, plant):
    assert owner.post(_tab(plant), {**AZURE, "account_id": "222233334444", "create": "1"}).status_code == 302
    peering = VpcPeering.objects.get()
    assert peering.account_id == "" and peering.tenant_id == AZURE_CUSTOMER_TENANT


# --- One peering --------------------------------------------------------------------------------------------------


def test_peering_page_shows_the_commands_with_copy_buttons_when_awaiting_the_customer(owner, plant):
    peering = _peering(plant)
    commands = ["az ad sp create --id 5555", 'az role assignment create --role "Network Contributor" --scope /x']
    VpcPeering.objects.filter(pk=peering.pk).update(
        state="awaiting_customer_action",
        provider_state="ApplicationNotRegistered",
        customer_action={"summary": "Register our application.", "commands": commands, "status": "Not registered."},
    )
    html = owner.get(_tab(plant, peering.public_id)).content.decode()
    assert '<span class="badge badge-busy">awaiting customer action</span>' in html
    assert "<code>ApplicationNotRegistered</code>" in html and "Register our application." in html
    assert "Not registered." in html
    assert '<pre id="step-command-1">az ad sp create --id 5555</pre>' in html
    assert (
        '<pre id="step-command-2">az role assignment create --role &quot;Network Contributor&quot; --scope /x</pre>'
        in html
    )
    assert 'data-copy="step-command-2" aria-label="Copy command 2"' in html
    assert 'data-copy="platform-cidr"' in html and "10.0.0.0/16" in html
    assert 'id="step-expires"' not in html  # awaiting since unknown: no deadline to show yet

    since = datetime.datetime(2026, 11, 2, 10, 0, tzinfo=datetime.UTC)
    VpcPeering.objects.filter(pk=peering.pk).update(awaiting_since=since)
    html = owner.get(_tab(plant, peering.public_id)).content.decode()
    assert "Take your step by <time" in html and "2026-11-09 10:00 UTC</time>: after that the peering expires" in html


def test_tab_tells_what_to_grant_in_azure_before_a_peering_is_created(owner, plant):
    html = owner.get(_tab(plant)).content.decode()
    assert 'id="peering-before"' in html
    assert "&quot;Network Contributor&quot; role on your virtual network" in html
    assert "there is no peering to create on your side" in html
    assert '<pre id="before-command-1">az ad sp create --id ' in html
    organization = plant.project.organization.public_id
    assert f"--tags mqtt-cloud-organization={organization}</pre>" in html  # the owner tag, with this organization
    assert "az network vnet peering create" not in html
    html = owner.get(_tab(plant) + "?provider=aws").content.decode()
    assert 'id="peering-before"' not in html


def test_peering_page_shows_the_providers_reason_and_stops_polling_when_failed(owner, plant):
    peering = _peering(plant)
    reason = "Azure refused to create peering: VnetAddressSpacesOverlap <b>x</b>"
    VpcPeering.objects.filter(pk=peering.pk).update(state="failed", last_error=reason)
    html = owner.get(_tab(plant, peering.public_id)).content.decode()
    assert (
        "Azure's reason:</strong> Azure refused to create peering: VnetAddressSpacesOverlap &lt;b&gt;x&lt;/b&gt;"
        in html
    )
    assert "hx-trigger" not in html and 'http-equiv="refresh"' not in html


def test_peering_page_says_what_is_not_peered_when_active_with_an_unsynced_address_space(owner, plant):
    peering = _peering(plant)
    note = "Your virtual network's address space is now 10.1.0.0/16, 10.9.0.0/16: 10.9.0.0/16 lies outside"
    VpcPeering.objects.filter(pk=peering.pk).update(
        state="active", provider_state="Connected (LocalNotInSync)", last_error=note
    )
    html = owner.get(_tab(plant, peering.public_id)).content.decode()
    assert '<span class="badge badge-ok">active</span>' in html
    assert f"Not all is well:</strong> {note.replace(chr(39), '&#x27;')}" in html
    assert "<code>Connected (LocalNotInSync)</code>" in html
    assert "The platform retries on its own" not in html


def test_live_answers_204_while_unchanged_and_the_new_state_when_changed(owner, plant):
    peering = _peering(plant)
    live = _tab(plant, f"{peering.public_id}/live")
    first = owner.get(live, HTTP_HX_REQUEST="true")
    digest = re.search(r"/live\?v=([0-9a-f]+)", first.content.decode()).group(1)
    assert owner.get(live, {"v": digest}, HTTP_HX_REQUEST="true").status_code == 204
    VpcPeering.objects.filter(pk=peering.pk).update(state="active", provider_state="Connected")
    changed = owner.get(live, {"v": digest}, HTTP_HX_REQUEST="true")
    html = changed.content.decode()
    assert changed.status_code == 200 and '<span class="badge badge-ok">active</span>' in html
    assert html.startswith('<div id="peering-live">')  # settled: no more polling
    rows = owner.get(_tab(plant, "rows"), HTTP_HX_REQUEST="true").content.decode()
    assert '<span class="badge badge-ok">active</span>' in rows and "hx-trigger" not in rows


def test_delete_asks_for_confirmation_then_starts_deleting_when_confirmed(owner, plant):
    peering = _peering(plant)
    confirm = owner.get(_tab(plant, f"{peering.public_id}/delete")).content.decode()
    assert f"Delete peering {peering.public_id}</button>" in confirm and "plant-vnet" in confirm
    assert VpcPeering.objects.get().state == "pending"
    response = owner.post(_tab(plant, f"{peering.public_id}/delete"))
    assert response.status_code == 302 and VpcPeering.objects.get().state == "deleting"
    assert AuditEvent.objects.filter(action="vpc_peering.delete", target_id=peering.public_id).exists()
    html = owner.get(response["Location"]).content.decode()
    assert f"Deleting {peering.public_id}" in html and "Delete peering…" not in html


def test_protected_peering_is_not_deleted_until_protection_is_lifted(owner, plant):
    peering = _peering(plant, deletion_protection=True)
    page = owner.get(_tab(plant, peering.public_id)).content.decode()
    assert "Delete peering…" not in page and "Lift deletion protection" in page
    assert "deletion protection is on" in owner.get(_tab(plant, f"{peering.public_id}/delete")).content.decode()
    refused = owner.post(_tab(plant, f"{peering.public_id}/delete"), follow=True).content.decode()
    assert "Deletion protection is on for this peering" in refused
    assert VpcPeering.objects.get().state == "pending"
    owner.post(_tab(plant, f"{peering.public_id}/protection"), {"deletion_protection": "off"})
    assert not VpcPeering.objects.get().deletion_protection
    assert AuditEvent.objects.filter(action="vpc_peering.protection.lift").exists()
    assert owner.post(_tab(plant, f"{peering.public_id}/delete")).status_code == 302
    assert VpcPeering.objects.get().state == "deleting"


def test_unknown_or_foreign_peering_is_not_found_when_addressed_by_id(owner, owner_org, org_factory, region):
    other = org_factory()
    theirs_dep = make_deployment(other.default_project, region, name="theirs")
    theirs = _peering(theirs_dep, cidr="10.9.0.0/16")
    mine = make_deployment(owner_org.default_project, region, name="mine")
    for page in ("", "/live", "/delete"):
        assert owner.get(_tab(mine, f"{theirs.public_id}{page}")).status_code == 404
        assert owner.get(_tab(mine, f"pcx_doesnotexist{page}")).status_code == 404
    assert owner.post(_tab(mine, f"{theirs.public_id}/delete")).status_code == 404
    assert owner.get(_tab(theirs_dep)).status_code == 404
    assert owner.post(_tab(theirs_dep), {**AZURE, "cidr": "10.8.0.0/16", "create": "1"}).status_code == 404
    assert VpcPeering.objects.get().state == "pending" and VpcPeering.objects.count() == 1


# --- Where peering is not available, and roles --------------------------------------------------------------------


def test_local_region_says_why_and_offers_no_form_when_visited(owner, owner_org, deployments_catalog):
    local = make_deployment(owner_org.default_project, Region.objects.get(code="local"), name="local-one")
    html = owner.get(_tab(local)).content.decode()
    assert "Region &#x27;local&#x27; has no VPC: VPC peering is available in cloud regions (AWS, GCP, Azure)" in html
    assert "Create peering" not in html and "Check</button>" not in html
    response = owner.post(_tab(local), {**AZURE, "create": "1"})
    assert response.status_code == 409 and "Region &#x27;local&#x27; has no VPC" in response.content.decode()
    assert not VpcPeering.objects.exists()


def test_serverless_deployment_says_why_when_visited(owner, owner_org, region):
    serverless = make_deployment(owner_org.default_project, region, name="tiny", plan="serverless")
    html = owner.get(_tab(serverless)).content.decode()
    assert "VPC peering is available for Dedicated and Premium deployments, not Serverless." in html


@pytest.mark.parametrize("roles", [["auditor"], ["accountant"]])
def test_read_only_roles_see_peerings_but_no_form_and_are_refused_when_crafting_posts(client, owner_org, plant, roles):
    peering = _peering(plant)
    user, _ = owner_org.add_member(roles=roles)
    client.force_login(user)
    html = client.get(_tab(plant)).content.decode()
    assert peering.public_id in html and "Create peering" not in html
    assert "Your role can look at this deployment's peerings but not create or change them." in html
    detail = client.get(_tab(plant, peering.public_id)).content.decode()
    assert "Delete peering…" not in detail and "deletion protection</button>" not in detail
    assert client.post(_tab(plant), {**AZURE, "cidr": "10.3.0.0/16", "create": "1"}).status_code == 403
    assert client.post(_tab(plant, "check"), AZURE).status_code == 403
    assert client.get(_tab(plant, "fields")).status_code == 403
    assert client.post(_tab(plant, f"{peering.public_id}/delete")).status_code == 403
    assert client.get(_tab(plant, f"{peering.public_id}/delete")).status_code == 403
    assert client.post(_tab(plant, f"{peering.public_id}/protection"), {"deletion_protection": "on"}).status_code == 403
    assert VpcPeering.objects.count() == 1 and VpcPeering.objects.get().state == "pending"
    assert not VpcPeering.objects.get().deletion_protection


def test_project_user_creates_and_protects_but_cannot_lift_protection_when_crafting_posts(client, owner_org, plant):
    user, _ = owner_org.add_member(project_grants=[(owner_org.default_project, "project_user")])
    client.force_login(user)
    assert client.post(_tab(plant), {**AZURE, "create": "1"}).status_code == 302
    peering = VpcPeering.objects.get()
    assert client.post(_tab(plant, f"{peering.public_id}/protection"), {"deletion_protection": "on"}).status_code == 302
    detail = client.get(_tab(plant, peering.public_id)).content.decode()
    assert "Lift deletion protection" not in detail and "which your role cannot do" in detail
    assert (
        client.post(_tab(plant, f"{peering.public_id}/protection"), {"deletion_protection": "off"}).status_code == 403
    )
    assert VpcPeering.objects.get().deletion_protection
    assert not AuditEvent.objects.filter(action="vpc_peering.protection.lift").exists()


def test_deleted_deployment_offers_no_form_when_visited(owner, plant):
    from deployments.models import Deployment

    Deployment.objects.filter(pk=plant.pk).update(desired_state="deleted")
    html = owner.get(_tab(plant)).content.decode()
    assert "The deployment is being deleted or was deleted." in html and "Create peering" not in html


def test_double_submitted_create_makes_one_peering_when_the_form_key_repeats(owner, plant):
    body = {**AZURE, "create": "1", "form_key": "f" * 32}
    first, again = owner.post(_tab(plant), body), owner.post(_tab(plant), body)
    assert first.status_code == again.status_code == 302 and first["Location"] == again["Location"]
    assert VpcPeering.objects.count() == 1
    assert AuditEvent.objects.filter(action="vpc_peering.create").count() == 1


def test_unknown_provider_is_refused_and_creates_nothing_when_crafted(owner, plant):
    response = owner.post(_tab(plant), {**AZURE, "provider": "ibm", "create": "1"})
    assert response.status_code == 400
    assert "Select a valid choice. ibm is not one of the available choices." in response.content.decode()
    assert not VpcPeering.objects.exists()
