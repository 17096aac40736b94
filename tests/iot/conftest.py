"""Fixtures of the IoT tests: a Premium deployment (the organization granted trials, as staff would), its URLs."""

import pytest


def premium_deployment(org, *, name="plant", project=None, running=True):
    """A Premium deployment made through the real service; `running` marks it settled as a reconcile would."""
    from deployments import services
    from organizations.models import Organization

    Organization.objects.filter(pk=org.organization.pk).update(premium_trial_deployments=2)
    org.organization.refresh_from_db()
    deployment, _operation = services.deployment_create(
        project=project or org.default_project, actor=None, name=name, plan="premium", tier="1k", region="local"
    )
    if running:
        deployment.operations.update(status="succeeded")
        type(deployment).objects.filter(pk=deployment.pk).update(
            status="running", observed_generation=deployment.generation
        )
        deployment.refresh_from_db()
    return deployment


@pytest.fixture
def premium(owner_org):
    return premium_deployment(owner_org)


@pytest.fixture
def base(owner_org, premium):
    return f"/api/v1/organizations/{owner_org.id}/projects/{owner_org.default_project.public_id}/deployments/{premium.public_id}"


@pytest.fixture
def client(owner_org, key_client):
    return key_client(owner_org.owner_secret)
