"""Journey: bad input on the alerting pages, typed in a real browser. Each refusal is said beside its own field (the
field's accessible description carries it, as a screen reader announces it), the rest of what was typed stays in
the form, and nothing is saved: a webhook to a private address, a threshold that is not a number, a silence that ends
before it starts, control characters in a channel's or a rule's name."""

import re

import pytest
from playwright.sync_api import expect

from tests.console.helpers import deployment, make_organization

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

CONTROL = re.compile(r"Must not contain control characters .* found U\+0007 at position 3")


def _nothing_saved(org):
    from alerts.models import AlertRule, Silence
    from notifications.models import NotificationChannel

    assert not NotificationChannel.objects.filter(organization=org.organization).exists()
    assert not AlertRule.objects.filter(project=org.default_project, default_key="").exists()
    assert not Silence.objects.filter(project=org.default_project).exists()


def test_bad_alerting_input_is_refused_beside_its_field_when_typed_in_the_browser(site, settings):
    settings.ALLOW_PRIVATE_WEBHOOKS = False
    org = make_organization(name="Careful")
    deployment(org.default_project, name="plant")
    page = site.page(org.owner)

    # A webhook to a private address: refused beside the URL, the name kept.
    page.goto(f"/console/o/{org.id}/channels")
    page.get_by_label("Name", exact=True).fill("On-call hook")
    page.get_by_role("radio", name="Webhook").check()
    page.get_by_label("Webhook URL", exact=True).fill("https://10.1.2.3/hook")
    page.get_by_role("button", name="Create channel").click()
    url = page.get_by_label("Webhook URL", exact=True)
    expect(url).to_have_accessible_description(re.compile("private address"))
    expect(url).to_have_value("https://10.1.2.3/hook")
    expect(page.get_by_label("Name", exact=True)).to_have_value("On-call hook")
    page.check("webhook-private-address")

    # A control character in the channel's name (U+0007, the bell): refused beside the name.
    page.get_by_label("Name", exact=True).fill("Ops\x07mail")
    page.get_by_role("radio", name="Email").check()
    page.get_by_label("Email addresses").fill("ops@example.com")
    page.get_by_role("button", name="Create channel").click()
    expect(page.get_by_label("Name", exact=True)).to_have_accessible_description(CONTROL)
    expect(page.get_by_role("row", name=re.compile("Ops"))).to_have_count(0)
    page.check("channel-control-character")

    # A threshold that is not a number, then a control character in the rule's name.
    page.goto(f"/console/o/{org.id}/p/{org.default_project.public_id}/alert-rules/new")
    page.get_by_label("Name", exact=True).fill("Busy")
    page.get_by_label("Threshold", exact=True).fill("2,5x")
    page.get_by_role("button", name="Create rule").click()
    threshold = page.get_by_label("Threshold", exact=True)
    expect(threshold).to_have_accessible_description(re.compile(r"Enter a number, such as 80 or 2\.5\."))
    expect(page.get_by_label("Name", exact=True)).to_have_value("Busy")
    page.check("threshold-not-a-number")
    page.get_by_label("Name", exact=True).fill("Bus\x07y")
    threshold.fill("2")
    page.get_by_role("button", name="Create rule").click()
    expect(page.get_by_label("Name", exact=True)).to_have_accessible_description(CONTROL)
    expect(threshold).not_to_have_accessible_description(re.compile("number"))
    page.check("rule-control-character")

    # A silence that ends before it starts: refused beside its end.
    page.goto(f"/console/o/{org.id}/p/{org.default_project.public_id}/alert-rules")
    silence = page.get_by_role("form", name="New silence")
    silence.get_by_label("Starts", exact=True).fill("2030-01-02T10:00")
    silence.get_by_label("Ends", exact=True).fill("2030-01-02T09:00")
    silence.get_by_label("Comment", exact=True).fill("maintenance")
    silence.get_by_role("button", name="Create silence").click()
    silence = page.get_by_role("form", name="New silence")
    expect(silence.get_by_label("Ends", exact=True)).to_have_accessible_description(
        re.compile("The silence must end after it starts.")
    )
    expect(silence.get_by_label("Comment", exact=True)).to_have_value("maintenance")
    expect(page.get_by_role("region", name="Silences")).to_contain_text("No silences.")
    page.check("silence-ends-before-it-starts")

    _nothing_saved(org)
