"""Fixtures of the console's tests. The browser harness lives in tests/console/browser.py (documented there)."""

import os

# Playwright's synchronous API runs an asyncio loop in the test's thread; the ORM calls the tests make in that same
# thread are synchronous all the same, and Django's guard against async contexts would refuse them.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

from tests.console.browser import browser, site  # noqa: E402,F401
