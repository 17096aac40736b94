"""Shared fixtures. Django-dependent imports stay inside fixtures so driver tests also run with `-p no:django`."""

import gc
import os
import random

import pytest

# --- Seeded randomness ------------------------------------------------------------------------------------------
# One seed per run, printed in the header and beside every failure; CONTROLPLANE_TEST_SEED=<seed> replays it. Each
# test's `random` and Faker (factory_boy) are seeded from it and the test's id, so a test draws the same values
# whatever ran before it. Under CI, Hypothesis derandomizes (its examples follow from each test's source).
SEED_VARIABLE = "CONTROLPLANE_TEST_SEED"
_seed_key = pytest.StashKey[int]()


def _under_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1", "yes")


def pytest_configure(config):
    given = os.environ.get(SEED_VARIABLE, "").strip()
    seed = int(given) if given else random.SystemRandom().randrange(2**32)
    config.stash[_seed_key] = seed
    # Set for modules that seed their own generators at import (tests/billing/test_metering_property.py) and for
    # processes the tests start.
    os.environ[SEED_VARIABLE] = str(seed)

    from hypothesis import settings

    # Hypothesis' own profiles: "ci" derandomizes (and prints a failure's reproduction blob). Hypothesis loads it when
    # a CI variable merely exists; here CI must say true, and HYPOTHESIS_PROFILE picks another by name.
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if _under_ci() else "default"))


def pytest_report_header(config):
    from hypothesis import settings

    seed = config.stash[_seed_key]
    return [
        f"random seed: {seed} ({SEED_VARIABLE}={seed} replays it); "
        f"hypothesis profile: {settings.get_current_profile_name()} (derandomize={settings.default.derandomize})"
    ]


def pytest_runtest_setup(item):
    import factory.random

    test_seed = f"{item.config.stash[_seed_key]}:{item.nodeid}"
    random.seed(test_seed)
    factory.random.reseed_random(test_seed)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.failed:
        seed = item.config.stash[_seed_key]
        report.sections.append(("random seed", f"{SEED_VARIABLE}={seed} pytest {item.nodeid!r} replays this test"))
    return report


def pytest_sessionfinish(session):
    # An xdist worker hands its summary lines to the controller, which prints the terminal summary.
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["summary_lines"] = list(SUMMARY_LINES)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    """On the xdist controller, as each worker finishes: the lines its test modules asked to print."""
    SUMMARY_LINES.extend(getattr(node, "workeroutput", {}).get("summary_lines", []))


def pytest_collection_finish(session):
    """Collection imported the control plane and every test module: some 300,000 objects that live as long as the
    process. Every full garbage collection walked them all again (about 0.2 s each); frozen here, a collection walks
    only what the tests made since. A young collection every 20,000 allocations instead of 700 does the same work in
    fewer passes. Measured on three API modules: 5.4 s of a worker's 40 CPU-seconds went to collecting, now 2.3."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 10, 10)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    """On a pytest-xdist worker, modules with a test marked `longest` come first, then those with one marked `slow`
    (otherwise in the order pytest-django left them). The workers take whole modules in this order, and a long module
    started last (the schema fuzzer's few minutes) would leave the other workers idle while it finishes. One process
    keeps pytest-django's order."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    longest_modules = {item.path for item in items if item.get_closest_marker("longest")}
    slow_modules = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: (item.path not in longest_modules, item.path not in slow_modules))


def pytest_terminal_summary(terminalreporter, config):
    for line in SUMMARY_LINES:
        terminalreporter.write_line(line)
    if terminalreporter.stats.get("failed") or terminalreporter.stats.get("error"):
        seed = config.stash[_seed_key]
        terminalreporter.write_line(f"random seed of this run: {seed} (rerun with {SEED_VARIABLE}={seed})")


# Lines a test module wants printed at the end of the run (figures such as how many API operations a fuzzer ran).
SUMMARY_LINES: list[str] = []


# scripts/test.sh migrates one database before a parallel run and names it here: each worker's test database is then
# copied from it (CREATE DATABASE … TEMPLATE) instead of migrated again on every worker, and the migrate pytest-django
# still runs finds nothing to apply. Nothing may be connected to the template while a worker copies it, so it is a
# database of its own, never the one DATABASE_URL names.
TEMPLATE_VARIABLE = "CONTROLPLANE_TEST_DB_TEMPLATE"


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings_parallel_suffix):
    template = os.environ.get(TEMPLATE_VARIABLE, "")
    if template:
        from django.conf import settings

        settings.DATABASES["default"].setdefault("TEST", {})["TEMPLATE"] = template


# Data migrations seed the catalog (plans, tiers, prices, the `local` region) and its traffic allowances. A
# transactional test ends with a flush that empties every table; on one pytest process the transactional tests ran
# last, but an xdist worker interleaves modules, so a flush would leave the next module's tests without a catalog.
# Every flush is followed by post_migrate: seed again there, so each test starts from the database the migrations made.
_SEED_MIGRATIONS = (
    "deployments.migrations.0002_seed_catalog",
    "billing.migrations.0003_seed_details_and_traffic_allowance",
)


def _seed_after_flush(sender, using, **kwargs):
    import importlib

    from django.apps import apps

    if sender.label != "deployments":  # post_migrate is sent once per app: seed once
        return
    for module in _SEED_MIGRATIONS:
        importlib.import_module(module).seed(apps, None)


@pytest.fixture(scope="session", autouse=True)
def _migration_data_survives_flush():
    from django.db.models.signals import post_migrate

    post_migrate.connect(_seed_after_flush, dispatch_uid="tests.conftest.seed_after_flush")
    yield
    post_migrate.disconnect(dispatch_uid="tests.conftest.seed_after_flush")


@pytest.fixture(scope="session", autouse=True)
def _transactional_tests_end_without_a_full_flush(request):
    """tests/db_reset.py: a transactional test ends with the database a flush leaves, at a fraction of its cost."""
    if not request.config.pluginmanager.hasplugin("django"):
        yield
        return
    from tests import db_reset

    original = db_reset.install()
    yield
    db_reset.uninstall(original)


@pytest.fixture
def redis_clean():
    """An empty Redis database (rate-limit buckets and caches of earlier tests would leak into this one)."""
    import redis
    from django.conf import settings

    client = redis.Redis.from_url(settings.REDIS_URL)
    client.flushdb()
    yield client
    client.flushdb()


@pytest.fixture
def api(redis_clean):
    from rest_framework.test import APIClient

    return APIClient()


@pytest.fixture
def org_factory(db):
    from tests.factories import make_organization

    return make_organization


@pytest.fixture
def owner_org(org_factory):
    return org_factory()


@pytest.fixture
def admin_client(db, admin_user):
    """pytest-django's admin_client, signed in as staff really sign in: password and a TOTP code."""
    from django.test import Client

    from tests.otp import staff_sign_in

    client = Client()
    staff_sign_in(client, admin_user, "password")
    return client


@pytest.fixture
def key_client(redis_clean):
    """A client authenticated with an API key secret: key_client(secret) -> APIClient."""
    from rest_framework.test import APIClient

    def make(secret: str) -> APIClient:
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
        return client

    return make


@pytest.fixture
def tasks_inline(django_capture_on_commit_callbacks):
    """`with tasks_inline(): client.post(...)`: what the block enqueues on commit (Celery tasks included) runs in this
    process when the block ends, each task's own code in Celery's eager mode, its errors raised. Email such a task
    sends lands in mailoutbox. A test of the task boundary itself runs a real worker (celery_worker) instead."""
    import contextlib

    from controlplane.celery import app

    @contextlib.contextmanager
    def run():
        previous = app.conf.task_always_eager, app.conf.task_eager_propagates
        app.conf.task_always_eager = app.conf.task_eager_propagates = True
        try:
            with django_capture_on_commit_callbacks(execute=True):
                yield
        finally:
            app.conf.task_always_eager, app.conf.task_eager_propagates = previous

    return run


@pytest.fixture
def smtp_receiver():
    """A real SMTP server on a loopback port (tests/mail.py); `smtp_receiver.use_in(settings)` points this process at
    it, `monkeypatch.setenv("EMAIL_URL", smtp_receiver.url)` a worker started afterwards."""
    from tests.mail import SmtpReceiver

    server = SmtpReceiver()
    server.start()
    yield server
    server.close()


from tests.celery_worker import (  # noqa: F401,E402
    _session_brokers_dir,
    _session_celery_worker,
    brokers_dir,
    celery_worker,
    deployments_catalog,
)
