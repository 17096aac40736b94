"""Browser journeys on the VPC peering tab: an Azure peering created from the page against the Azure fake (HTTPS, the
real azure-identity and azure-mgmt-network clients in a real Celery worker): refused with the role to grant when
created before the grant, then created again after it and walked to `active` while the page follows it without a
reload; a customer's bad ranges refused beside the field; the same tab without JavaScript."""

import re

import pytest
from playwright.sync_api import expect

from networking.models import VpcPeering
from tests.console.helpers import console_path, make_organization
from tests.networking.conftest import (  # noqa: F401 (fixtures)
    AZURE_APPLICATION,
    AZURE_CUSTOMER_SUBSCRIPTION,
    AZURE_CUSTOMER_TENANT,
    _azure_server,
    azure,
    azure_region,
    make_deployment,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

WALK = 60_000
CIDR_LABEL = "Your network's CIDR"


@pytest.fixture
def worker(request, monkeypatch, _azure_server):
    """A real worker that polls peerings every second or so and trusts the Azure fake's certificate authority (its
    settings come from its environment)."""
    monkeypatch.setenv("VPC_PEERING_POLL_BASE_SECONDS", "0.2")
    monkeypatch.setenv("VPC_PEERING_POLL_MAX_SECONDS", "1")
    monkeypatch.setenv("VPC_PEERING_AWAITING_POLL_MAX_SECONDS", "1")
    monkeypatch.setenv("VPC_PEERING_RESYNC_SECONDS", "1")
    monkeypatch.setenv("CLOUD_CA_BUNDLE", _azure_server.ca_path)
    return request.getfixturevalue("celery_worker")


def _fill_azure(page, azure, cidr="10.1.0.0/16"):
    page.get_by_label("Tenant ID").fill(AZURE_CUSTOMER_TENANT)
    page.get_by_label("Subscription ID").fill(AZURE_CUSTOMER_SUBSCRIPTION)
    page.get_by_label("Resource group").fill(azure.customer_resource_group)
    page.get_by_label("Virtual network name").fill(azure.customer_vnet_name)
    page.get_by_label(CIDR_LABEL).fill(cidr)


def test_customer_peers_azure_vnet_from_the_page_when_following_the_steps(site, azure, azure_region, worker):
    org = make_organization(name="Peering")
    plant = make_deployment(org.default_project, azure_region, name="plant")
    page = site.page(org.owner, name="owner")
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    page.goto(console_path(plant))
    page.get_by_role("link", name="VPC peering").click()
    expect(page.get_by_role("heading", name="Create a peering")).to_be_visible()
    expect(page.get_by_text("No peering yet.")).to_be_visible()
    expect(page.get_by_label("Cloud provider")).to_have_value("azure")
    page.check("tab")

    # With htmx, the fields follow the provider in place: no navigation, what was typed stays.
    loaded = page.navigations
    page.get_by_label(CIDR_LABEL).fill("10.1.0.0/16")
    page.get_by_label("Cloud provider").select_option("aws")
    expect(page.get_by_label("AWS account ID")).to_be_visible()
    expect(page.get_by_label("Tenant ID")).to_have_count(0)
    expect(page.get_by_label(CIDR_LABEL)).to_have_value("10.1.0.0/16")
    page.get_by_label("Cloud provider").select_option("azure")
    expect(page.get_by_label("Tenant ID")).to_be_visible()
    assert page.navigations == loaded

    _fill_azure(page, azure)
    page.get_by_role("button", name="Check").click()
    result = page.locator("#preflight")
    expect(result).to_contain_text("Pre-flight passed.")
    expect(result).to_contain_text("10.1.0.0/16 is private (RFC 1918)")
    expect(result).to_contain_text("10.1.0.0/16 does not overlap the platform's network 10.0.0.0/16")
    assert page.navigations == loaded and not VpcPeering.objects.exists()
    page.check("preflight-passed")

    # Before anything: what to grant our application in Azure, with its id; no peering to create on their side.
    expect(page.locator("#before-summary")).to_contain_text('"Network Contributor" role on your virtual network')
    expect(page.locator("#before-summary")).to_contain_text("there is no peering to create on your side")
    expect(page.locator("#before-command-1")).to_have_text(f"az ad sp create --id {AZURE_APPLICATION}")
    expect(page.locator("#before-command-2")).to_contain_text(
        f'az role assignment create --assignee {AZURE_APPLICATION} --role "Network Contributor" --scope '
    )
    page.get_by_role("button", name="Copy prerequisite command 1").click()
    assert page.evaluate("navigator.clipboard.readText()") == f"az ad sp create --id {AZURE_APPLICATION}"

    # Created before the grant: Azure refuses, and the page says what to grant, in place.
    page.get_by_role("button", name="Create peering").click()
    expect(page.get_by_text(re.compile(r"Peering pcx_\w+ requested"))).to_be_visible()
    peering = VpcPeering.objects.get()
    assert page.url.endswith(f"/vpc-peering/{peering.public_id}")
    on_peering_page = page.navigations
    state = page.locator("#peering-state")
    try:
        expect(state).to_have_text("failed", timeout=WALK)
    except AssertionError as exc:
        row = VpcPeering.objects.get()
        raise AssertionError(f"{row.state}: {row.last_error}\n{worker.logs()}") from exc
    reason = page.locator("#peering-reason")
    expect(reason).to_contain_text(f'Grant our application {AZURE_APPLICATION} the "Network Contributor" role')
    expect(reason).to_contain_text(azure.customer_vnet)
    assert page.navigations == on_peering_page, "the page reloaded instead of following the peering in place"
    page.check("failed-without-grant")

    # The customer grants the role and tags the VNet, as the tab said, and creates the peering again: both sides.
    page.get_by_role("link", name="All peerings of plant").click()
    tag = page.locator("#before-command-3")
    expect(tag).to_have_text(re.compile(rf"--tags mqtt-cloud-organization={org.organization.public_id}$"))
    azure.customer_grants_access(organization=org.organization.public_id)
    _fill_azure(page, azure)
    page.get_by_role("button", name="Create peering").click()
    expect(page.get_by_text(re.compile(r"Peering pcx_\w+ requested"))).to_be_visible()
    peering = VpcPeering.objects.exclude(pk=peering.pk).get()
    on_peering_page = page.navigations
    expect(state).to_have_text("active", timeout=WALK)
    expect(page.get_by_role("heading", name="Connected")).to_be_visible()
    expect(page.locator("#provider-peering-id")).to_have_text(
        f"{azure.platform_vnet}/virtualNetworkPeerings/{peering.public_id}"
    )
    expect(page.get_by_text("updating…")).to_have_count(0)
    assert page.navigations == on_peering_page, "the page reloaded instead of following the peering in place"
    theirs = azure.fake.peering(azure.customer_vnet, peering.public_id)
    assert theirs["properties"]["peeringState"] == "Connected"
    page.check("active")

    page.get_by_role("link", name="All peerings of plant").click()
    expect(page.locator("#peering-rows").get_by_text("active", exact=True)).to_be_visible()
    page.check("list-active")


def _check_refused(page, cidr, message):
    page.get_by_label(CIDR_LABEL).fill(cidr)
    page.get_by_role("button", name="Check").click()
    field = page.get_by_label(CIDR_LABEL)
    expect(field).to_have_attribute("aria-invalid", "true")
    expect(field).to_have_accessible_description(re.compile(re.escape(message)))
    expect(page.locator("#preflight")).to_contain_text("Nothing was created.")


def test_bad_ranges_are_refused_beside_the_field_when_checked_or_created(site, azure, azure_region):
    from networking import services

    org = make_organization(name="Ranges")
    plant = make_deployment(org.default_project, azure_region, name="plant")
    other = services.vpc_peering_create(
        deployment=plant,
        actor=None,
        provider="azure",
        cidr="10.2.0.0/16",
        tenant_id=AZURE_CUSTOMER_TENANT,
        subscription_id=AZURE_CUSTOMER_SUBSCRIPTION,
        resource_group="acme-rg",
        vnet_name="lab-vnet",
    )
    page = site.page(org.owner, name="owner")
    page.goto(console_path(plant, "vpc-peering"))
    _fill_azure(page, azure)

    _check_refused(page, "10.0.0.0/33", "'10.0.0.0/33' is not a valid IPv4 CIDR: the prefix length must be 0 to 32.")
    page.check("prefix-too-long")
    _check_refused(page, "8.8.8.0/24", "8.8.8.0/24 is not a private range")
    _check_refused(page, "10.0.128.0/20", "10.0.128.0/20 overlaps the platform's network 10.0.0.0/16")
    _check_refused(page, "10.2.4.0/24", f"10.2.4.0/24 overlaps peering {other.public_id} (10.2.0.0/16)")
    page.check("overlaps-peering")

    # Create runs the same pre-flight: the message is beside the field on the page it answers, nothing is created.
    page.get_by_role("button", name="Create peering").click()
    field = page.get_by_label(CIDR_LABEL)
    expect(field).to_have_accessible_description(re.compile(re.escape(f"overlaps peering {other.public_id}")))
    expect(field).to_have_value("10.2.4.0/24")
    assert VpcPeering.objects.count() == 1
    page.check("create-refused")


def test_provider_is_chosen_first_then_its_fields_when_javascript_is_off(site, azure, azure_region):
    from tests.console.browser import ConsolePage

    org = make_organization(name="No script")
    plant = make_deployment(org.default_project, azure_region, name="plant")
    context = site.browser.new_context(base_url=site.base, java_script_enabled=False)
    site.contexts.append(context)
    context.add_cookies([site.session_cookie(org.owner)])
    page = ConsolePage(site, context, "noscript")
    page.goto(console_path(plant, "vpc-peering"))

    page.get_by_label("Cloud provider").select_option("gcp")
    page.get_by_role("button", name="Show the fields for this provider").click()
    expect(page.get_by_label("GCP project ID")).to_be_visible()
    expect(page.get_by_label("Tenant ID")).to_have_count(0)
    page.check("gcp-fields", axe=False)  # axe-core needs JavaScript; the same page runs it in the tests above

    page.get_by_label("Cloud provider").select_option("azure")
    page.get_by_role("button", name="Show the fields for this provider").click()
    _fill_azure(page, azure)
    page.get_by_role("button", name="Check").click()
    expect(page.locator("#preflight")).to_contain_text("Pre-flight passed.")
    expect(page.get_by_label("Tenant ID")).to_have_value(AZURE_CUSTOMER_TENANT)
    page.get_by_role("button", name="Create peering").click()
    expect(page.locator("#peering-state")).to_have_text("pending")
    assert VpcPeering.objects.get().tenant_id == AZURE_CUSTOMER_TENANT
    page.check("created", axe=False)


def test_peering_pages_pass_axe_in_every_state_when_shown_light_and_dark(site, azure, azure_region):
    """Each state of a peering as its page shows it (set directly: the walk itself is the first journey's), the
    list, the delete confirmation, a protected peering, and a `local` region's tab."""
    from deployments.models import Region
    from networking import services

    org = make_organization(name="Tour")
    plant = make_deployment(org.default_project, azure_region, name="plant")
    local = make_deployment(org.default_project, Region.objects.get(code="local"), name="local-one")
    states = {
        "pending": {},
        "awaiting_customer_action": {
            "provider_state": "Initiated",
            "customer_action": {
                "summary": "Create your side of the peering to the platform's VNet (10.0.0.0/16).",
                "commands": ["az network vnet peering create --name pcx_x --vnet-name plant-vnet --allow-vnet-access"],
                "status": "The peering pcx_x does not exist on plant-vnet yet.",
            },
        },
        "active": {"provider_state": "Connected"},
        "failed": {"provider_state": "Disconnected", "last_error": "The remote peering was deleted."},
        "deleting": {"last_error": "Azure answered 503; retrying."},
        "deleted": {},
    }
    pages = [("list", console_path(plant, "vpc-peering")), ("local", console_path(local, "vpc-peering"))]
    for index, (state, extra) in enumerate(states.items()):
        peering = services.vpc_peering_create(
            deployment=plant,
            actor=None,
            provider="azure",
            cidr=f"10.{index + 1}.0.0/16",
            tenant_id=AZURE_CUSTOMER_TENANT,
            subscription_id=AZURE_CUSTOMER_SUBSCRIPTION,
            resource_group="acme-rg",
            vnet_name=f"vnet-{index}",
            deletion_protection=state == "active",
        )
        VpcPeering.objects.filter(pk=peering.pk).update(state=state, **extra)
        pages.append((state, console_path(plant, f"vpc-peering/{peering.public_id}")))
        if state in ("pending", "active"):
            pages.append((f"delete-{state}", console_path(plant, f"vpc-peering/{peering.public_id}/delete")))
    for scheme in ("light", "dark"):
        page = site.page(org.owner, name=scheme, color_scheme=scheme)
        for label, path in pages:
            page.goto(path)
            expect(page.locator("main")).to_be_visible()
            page.check(label)


def test_read_only_role_sees_no_delete_or_form_and_another_organizations_tab_is_not_found(site, azure, azure_region):
    from networking import services

    org = make_organization(name="Watched")
    plant = make_deployment(org.default_project, azure_region, name="plant")
    peering = services.vpc_peering_create(
        deployment=plant,
        actor=None,
        provider="azure",
        cidr="10.1.0.0/16",
        tenant_id=AZURE_CUSTOMER_TENANT,
        subscription_id=AZURE_CUSTOMER_SUBSCRIPTION,
        resource_group="acme-rg",
        vnet_name="lab-vnet",
    )
    auditor, _ = org.add_member(roles=["auditor"], email="audrey@example.com")
    page = site.page(auditor, name="auditor")
    page.goto(console_path(plant))
    page.get_by_role("link", name="VPC peering").click()
    expect(
        page.get_by_text("Your role can look at this deployment's peerings but not create or change them.")
    ).to_be_visible()
    expect(page.get_by_role("button", name="Create peering")).to_have_count(0)
    page.get_by_role("link", name=peering.public_id).click()
    expect(page.locator("main")).to_contain_text("10.1.0.0/16")
    expect(page.get_by_role("link", name=re.compile("^Delete peering"))).to_have_count(0)
    expect(page.get_by_role("button", name=re.compile("deletion protection"))).to_have_count(0)
    page.check("auditor-detail")

    stranger = make_organization(name="Elsewhere")
    intruder = site.page(stranger.owner, name="stranger")
    for path in (console_path(plant, "vpc-peering"), console_path(plant, f"vpc-peering/{peering.public_id}")):
        assert intruder.goto(path).status == 404, path
    intruder.check("not-found")
    assert VpcPeering.objects.get().state == "pending"
