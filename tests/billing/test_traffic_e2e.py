"""Traffic metered end to end: a deployment provisioned by a real worker (a real mosquitto), real paho clients, and
the alerts collection task, whose one reading of the broker's byte counters also feeds billing."""

import pytest

from billing.models import TrafficRecord
from tests.alerts.test_alerting_e2e import collect, running, worker_env  # noqa: F401 - fixtures
from tests.deployments.test_local_driver import Client

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def test_bytes_published_reach_the_deployments_traffic_when_the_collector_reads_the_broker(running):  # noqa: F811
    collect(running["deployment_id"])
    before = sum(TrafficRecord.objects.values_list("bytes", flat=True))
    publisher = Client(running["port"], "device", "device-secret")
    subscriber = Client(running["port"], "device", "device-secret")
    assert not publisher.connect().is_failure and not subscriber.connect().is_failure
    try:
        subscriber.subscribe("plant/#")
        for _ in range(40):
            publisher.publish("plant/line-1", b"y" * 2000)
        assert len(subscriber.received(40)) == 40
        collect(running["deployment_id"])
    finally:
        publisher.close()
        subscriber.close()
    counted = sum(TrafficRecord.objects.values_list("bytes", flat=True)) - before
    # 40 PUBLISH of 2,000 bytes in and 40 out: at least 160,000 bytes, less than twice that with headers and acks
    assert 160_000 <= counted < 320_000
