"""Shared fixtures. Django-dependent imports stay inside fixtures so driver tests also run with `-p no:django`."""

import pytest


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


from tests.celery_worker import brokers_dir, celery_worker, deployments_catalog  # noqa: F401,E402
