"""Data the console's tests start from, made through the real services (as a person or the API would make it)."""

from tests.factories import PASSWORD, OrgFixture, UserFactory, make_organization  # noqa: F401


def deployment(project, *, name="plant", tier="1k", actor=None):
    from deployments import services

    deployment, _operation = services.deployment_create(
        project=project, actor=actor, name=name, plan="dedicated", tier=tier, region="local"
    )
    return deployment


def threshold_rule_form(**overrides):
    """The alert rule form of a valid threshold rule on the project (no deployment chosen), as a person fills it."""
    data = {
        "rule-name": "Busy",
        "rule-deployment": "",
        "rule-metric": "connections",
        "rule-aggregation": "last",
        "rule-window_seconds": "60",
        "rule-operator": ">",
        "rule-threshold": "2",
        "rule-threshold_unit": "absolute",
        "rule-for_seconds": "60",
        "rule-severity": "critical",
        "rule-repeat_interval_seconds": "3600",
        "rule-enabled": "on",
    }
    data.update(overrides)
    return data


def console_path(deployment, page=""):
    project = deployment.project
    base = f"/console/o/{project.organization.public_id}/p/{project.public_id}/d/{deployment.public_id}"
    return f"{base}/{page}" if page else base


def settle(deployment):
    """Mark a deployment as the reconciler leaves it once running (no worker in the test): its operations done."""
    from deployments.models import Deployment, Operation

    deployment.refresh_from_db()
    Operation.objects.filter(deployment=deployment).update(status="succeeded")
    Deployment.objects.filter(pk=deployment.pk).update(
        status="running", observed_generation=deployment.generation, observed_restart_nonce=deployment.restart_nonce
    )
    deployment.refresh_from_db()
    return deployment
