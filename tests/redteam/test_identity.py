"""Red team: the identity work attacked from outside. What is left here belongs to another area than identity (alert
rules: the alerts app); every identity finding moved, fixed, to the test module of what it tests."""

import pytest

from deployments import services as deployment_services

pytestmark = pytest.mark.django_db


@pytest.mark.usefixtures("deployments_catalog")
def test_alert_rule_name_refuses_line_breaks_when_it_would_head_every_alert_email(owner_org, api, brokers_dir):
    """An alert's email subject is "[FIRING] <rule name>: ..." with only "\\n" replaced: a rule named with a "\\r"
    (StrictCharField takes it) makes alerts.channels.send_email refuse every email of that rule ("subject must be
    one line"), so its alerts never reach anyone by email. A Project User can name rules."""
    deployment, _op = deployment_services.deployment_create(
        project=owner_org.default_project, actor=None, name="plant", plan="dedicated", tier="1k", region="local"
    )
    user, _membership = owner_org.add_member(project_grants=[(owner_org.default_project, "project_user")])
    api.force_login(user)
    response = api.post(
        f"/api/v1/organizations/{owner_org.id}/projects/{owner_org.default_project.public_id}/alert-rules",
        {
            "name": "Busy\rBcc: victim@example.com",
            "metric": "connections",
            "aggregation": "max",
            "window_seconds": 60,
            "operator": ">",
            "threshold": 2,
            "deployment": deployment.public_id,
        },
        format="json",
    )
    assert response.status_code == 400, response.content[:200]
    assert response.json()["errors"][0]["field"] == "name"
