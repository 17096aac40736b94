"""Journey: the API's own pages. Swagger UI renders from our static files under the CSP, a person authorizes with an
API key, tries out listing the organization's projects and sees the answer and the curl line; ReDoc renders without
any CDN; the console links to both."""

import pytest
from playwright.sync_api import expect

from tests.console.helpers import make_organization

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def test_person_tries_an_operation_in_swagger_ui_when_authorized_with_an_api_key(site):
    org = make_organization(name="Docs")
    console = site.page(org.owner, name="owner")
    console.goto(f"/console/o/{org.id}")
    console.get_by_role("link", name="API docs").click()

    docs = console
    expect(docs.locator(".swagger-ui .info .title")).to_contain_text("MQTT Cloud control plane API", timeout=30_000)
    docs.check("swagger", axe=False)  # Swagger UI's own markup is not ours to fix; its accessibility is upstream's
    docs.get_by_role("button", name="Authorize").first.click()
    dialog = docs.locator(".modal-ux")
    dialog.locator("input").first.fill(org.owner_secret)
    dialog.get_by_role("button", name="Apply credentials").first.click()
    expect(dialog.get_by_role("button", name="Remove authorization").first).to_be_visible()
    dialog.get_by_role("button", name="Close", exact=True).first.click()

    operation = docs.locator(".opblock-get", has_text="/api/v1/organizations/{org}/projects").filter(
        has_text="List projects"
    )
    # Swagger UI renders only the operations near the viewport: scroll as a person would until it is there.
    for _ in range(80):
        if operation.count():
            break
        docs.mouse.wheel(0, 1200)
        docs.wait_for_timeout(150)
    operation.locator(".opblock-summary").first.click()
    # SWAGGER_UI_SETTINGS turns "Try it out" on for every operation; a person who turned it off turns it back on.
    try_it = operation.get_by_role("button", name="Try it out")
    if try_it.count():
        try_it.click()
    operation.locator("tr[data-param-name='org'] input").fill(org.id)
    operation.get_by_role("button", name="Execute").click()
    response = operation.locator(".live-responses-table .response").first
    expect(response.locator(".response-col_status")).to_contain_text("200", timeout=15_000)
    expect(response).to_contain_text(org.default_project.public_id)
    curl = operation.locator(".curl-command")
    expect(curl).to_contain_text("curl -X 'GET'")
    expect(curl).to_contain_text(f"/api/v1/organizations/{org.id}/projects")
    expect(curl).to_contain_text("Authorization: Bearer")
    docs.check("swagger-tried", axe=False)
    # The key lives as long as the page: none of it is written to the browser's storage, where the next person at a
    # shared computer, or any script on the console's origin, could read it later.
    stored = docs.evaluate("() => JSON.stringify([Object.entries(localStorage), Object.entries(sessionStorage)])")
    assert org.owner_secret not in stored and org.owner_secret.split("_")[-1][-12:] not in stored

    redoc = site.page(name="reader")
    redoc.goto("/api/redoc/")
    expect(redoc.get_by_role("heading", name="MQTT Cloud control plane API", level=1)).to_be_visible(timeout=90_000)
    expect(redoc.get_by_text("List projects").first).to_be_attached()
    redoc.check("redoc", axe=False, full_page=False)  # ReDoc draws every operation: one screen is enough
