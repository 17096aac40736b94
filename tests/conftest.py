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


from tests.celery_worker import brokers_dir, celery_worker, deployments_catalog  # noqa: F401,E402
