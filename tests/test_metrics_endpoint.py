"""/metrics on the real project: the control plane's own figures, behind the bearer token."""

import pytest


@pytest.mark.django_db
def test_metrics_endpoint_reports_deployments_by_status_and_metering_lag(client, settings):
    import datetime

    from django.utils import timezone

    from billing.models import MeteringCursor
    from deployments import services as deployment_services
    from tests.factories import make_organization

    settings.METRICS_TOKEN = "scrape-secret"
    org = make_organization()
    deployment_services.deployment_create(
        project=org.default_project, actor=None, name="m1", plan="dedicated", tier="1k", region="local"
    )
    MeteringCursor.objects.create(metered_until=timezone.now() - datetime.timedelta(hours=2))
    assert client.get("/metrics").status_code == 401
    body = client.get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-secret").content.decode()
    assert 'controlplane_deployments{status="pending"} 1.0' in body
    lag = [line for line in body.splitlines() if line.startswith("controlplane_metering_lag_seconds ")]
    assert lag and 7000 < float(lag[0].split()[1]) < 7400
    assert "controlplane_http_request_duration_seconds" in body
