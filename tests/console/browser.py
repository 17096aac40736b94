"""The console's browser harness: Debian's Chromium (its headless shell) driven by Playwright against pytest-django's
live server.

Fixtures (registered in tests/console/conftest.py, reusable by any module under tests/):
- `browser` (module scope): one headless Chromium for the module.
- `site`: the live server with helpers to open pages as a person would:
  `site.page(user=None)` -> a `ConsolePage` in a fresh browser context (signed in as `user` when given);
  `site.url("/console/...")` -> an absolute URL.
A `ConsolePage` wraps a Playwright page: `.check(name)` saves a screenshot under var/screenshots/<module>/<test>/
and runs axe-core (no serious or critical violation allowed), and every page it opens fails the test on a
Content-Security-Policy violation, a JavaScript error, or a request to a host other than the live server.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
from urllib.parse import urlsplit

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
# Debian's chromium-headless-shell: the same Chromium build as Debian's `chromium` package (same engine, same version),
# in the headless mode Playwright itself uses for headless runs, without the desktop browser's UI layer. The console's
# two tours used about a quarter less CPU under it than under /usr/bin/chromium (58 against 75 CPU-seconds). Another
# build: CONSOLE_TEST_CHROMIUM=/usr/bin/chromium.
CHROMIUM = os.environ.get("CONSOLE_TEST_CHROMIUM", "/usr/bin/chromium-headless-shell")
# Without the background-networking flags Chromium keeps calling out of this closed network; the rest make a
# headless run quiet and deterministic.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
AXE = pathlib.Path(__file__).resolve().parent / "vendor" / "axe.min.js"
SCREENSHOTS = REPO / "var" / "screenshots"
BLOCKING_IMPACTS = ("serious", "critical")


def launch_browser(playwright):
    if not pathlib.Path(CHROMIUM).exists():
        raise RuntimeError(
            f"{CHROMIUM} is missing: scripts/bootstrap.sh test installs Debian's chromium-headless-shell"
        )
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)


class ConsolePage:
    def __init__(self, site: Site, context, name: str):
        self.site = site
        self.context = context
        self.page = context.new_page()
        self.name = name
        self.problems: list[str] = []
        self.navigations = 0
        self.page.set_default_timeout(15_000)
        self.page.on("console", self._on_console)
        self.page.on("pageerror", lambda error: self.problems.append(f"JavaScript error: {error}"))
        self.page.on("request", self._on_request)
        self.page.on("framenavigated", self._on_navigated)

    # -- what a person would notice ---------------------------------------------------------------------------

    def _on_console(self, message):
        text = message.text
        if "Content Security Policy" in text or "Content-Security-Policy" in text:
            self.problems.append(f"CSP violation: {text}")
        elif message.type == "error" and "Failed to load resource" not in text:
            self.problems.append(f"console error: {text}")

    def _on_request(self, request):
        host = urlsplit(request.url).hostname
        if request.url.startswith(("data:", "blob:", "about:")):
            return
        if host != urlsplit(self.site.base).hostname:
            self.problems.append(f"request to another host: {request.url}")

    def _on_navigated(self, frame):
        if frame == self.page.main_frame:
            self.navigations += 1

    def assert_clean(self):
        assert not self.problems, "\n".join(self.problems)

    # -- navigation ---------------------------------------------------------------------------------------------

    def goto(self, path: str):
        response = self.page.goto(self.site.url(path))
        return response

    def __getattr__(self, name):
        return getattr(self.page, name)

    # -- screenshots and axe-core -------------------------------------------------------------------------------

    def screenshot_path(self, label: str) -> pathlib.Path:
        self.site.shots += 1
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{self.site.shots:02d}-{self.name}-{label}")
        return self.site.screenshots / f"{safe}.png"

    def check(self, label: str, *, axe: bool = True, full_page: bool = True) -> list[dict]:
        """Screenshot the page as it is now, then fail on any serious or critical axe-core violation (and on any
        CSP violation, script error or foreign request seen so far)."""
        self.page.wait_for_load_state("load")
        self.page.screenshot(path=str(self.screenshot_path(label)), full_page=full_page)
        self.assert_clean()
        if not axe:
            return []
        result = self.page.evaluate(
            "async () => { const r = await axe.run(document, {resultTypes: ['violations']});"
            " return r.violations.map(v => ({id: v.id, impact: v.impact, help: v.help,"
            " nodes: v.nodes.slice(0, 5).map(n => n.target.join(' ') + ': ' + n.failureSummary)})); }"
        )
        blocking = [v for v in result if v["impact"] in BLOCKING_IMPACTS]
        assert not blocking, f"axe-core on {label} ({self.page.url}):\n" + json.dumps(blocking, indent=2)
        self.site.axe_pages.append(self.page.url)
        return result


class Site:
    def __init__(self, live_server, browser, request):
        self.base = live_server.url
        self.browser = browser
        self.module = request.module.__name__.rsplit(".", 1)[-1]
        self.test = request.node.name
        self.shots = 0
        self.contexts = []
        self.axe_pages: list[str] = []
        # One folder per test, emptied as the test starts: the names carry the run's user names, so an earlier run's
        # screenshots would not be overwritten, and the folder would mix runs and grow with each one.
        self.screenshots = SCREENSHOTS / self.module / re.sub(r"[^A-Za-z0-9_.-]+", "-", self.test)
        shutil.rmtree(self.screenshots, ignore_errors=True)
        self.screenshots.mkdir(parents=True)

    def url(self, path: str) -> str:
        return path if path.startswith("http") else f"{self.base}{path}"

    def page(self, user=None, *, name: str = "", color_scheme: str = "light") -> ConsolePage:
        context = self.browser.new_context(
            base_url=self.base, viewport={"width": 1280, "height": 900}, color_scheme=color_scheme
        )
        # An init script runs through the DevTools protocol, which the page's CSP does not govern: axe-core is
        # there without weakening the policy under test.
        context.add_init_script(path=str(AXE))
        self.contexts.append(context)
        if user is not None:
            context.add_cookies([self.session_cookie(user)])
        return ConsolePage(self, context, name or (getattr(user, "email", "") or "anonymous").split("@")[0])

    def session_cookie(self, user) -> dict:
        from django.conf import settings
        from django.test import Client

        client = Client()
        client.force_login(user)
        return {
            "name": settings.SESSION_COOKIE_NAME,
            "value": client.cookies[settings.SESSION_COOKIE_NAME].value,
            "url": self.base,
        }

    def close(self):
        for context in self.contexts:
            context.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = launch_browser(playwright)
        yield chromium
        chromium.close()


@pytest.fixture
def site(live_server, browser, request, transactional_db, deployments_catalog, settings):
    # Links in emails (invitations) must point at the live server.
    settings.PUBLIC_URL = live_server.url
    s = Site(live_server, browser, request)
    yield s
    s.close()


def csrf_post(page: ConsolePage, path: str, data: dict | None = None):
    """A crafted POST from the signed-in browser (its cookies, a valid CSRF token): what a person could send by hand.
    Returns the Playwright APIResponse."""
    token = next(c["value"] for c in page.context.cookies() if c["name"] == "csrftoken")
    return page.context.request.post(
        page.site.url(path),
        form={"csrfmiddlewaretoken": token, **(data or {})},
        headers={"Referer": page.site.url(path), "X-CSRFToken": token},
        max_redirects=0,
    )
