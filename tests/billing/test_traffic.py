"""Traffic from the brokers' own byte counters: growth counted once, restarts never negative nor double, a real
mosquitto's $SYS counters, and the invoice's traffic line per deployment (100 GiB a month included, then 0.15/GiB)."""

import datetime
import time
from decimal import Decimal

import pytest

from billing import invoicing
from billing.models import Invoice, TrafficCounter, TrafficRecord
from billing.money import BYTES_PER_GIB
from billing.traffic import traffic_counters_record, traffic_record_from_collector
from tests.billing.conftest import at
from tests.billing.test_scenarios import set_account

pytestmark = pytest.mark.django_db
GIB = BYTES_PER_GIB  # 1,073,741,824 bytes


def day_bytes(dep, day):
    return sum(TrafficRecord.objects.filter(deployment=dep, day=day).values_list("bytes", flat=True))


def test_growth_counted_once_and_restarts_never_negative_nor_double_when_broker_reports_uptime(
    owner_org, make_deployment
):
    dep = make_deployment(owner_org.default_project)
    read = lambda minute, rx, tx, up: traffic_counters_record(  # noqa: E731
        deployment_id=dep.pk, at=at(2026, 4, 2, 10, minute), bytes_received=rx, bytes_sent=tx, uptime_seconds=up
    )
    assert read(0, 5000, 7000, 86400) == 0  # a broker up for a day: its first reading is the base only
    assert read(1, 6000, 7500, 86460) == 1500  # +1000 in, +500 out
    assert read(1, 9000, 9000, 86460) == 0  # the same instant again (a retried task): ignored
    assert read(2, 6000, 7480, 86520) == 0  # out dipped by 20 (the monitor's share): nothing, and no negative
    assert read(3, 6100, 7520, 86580) == 100 + 20  # +100 in; out counts only above its high-water mark 7500
    assert read(4, 300, 200, 40) == 500  # restarted 40 s ago: the bytes since the restart
    assert read(5, 800, 900, 100) == 500 + 700
    assert day_bytes(dep, datetime.date(2026, 4, 2)) == 1500 + 120 + 500 + 1200
    counter = TrafficCounter.objects.get(deployment=dep)
    assert (counter.resets, counter.bytes_received, counter.bytes_sent) == (1, 800, 900)


def test_sum_of_cluster_counters_rebased_when_a_node_restarts_and_no_uptime_is_reported(owner_org, make_deployment):
    dep = make_deployment(owner_org.default_project)
    state = lambda v: {"counters": {"bytes": {"value": v, "ts": 0}}}  # noqa: E731 - EMQX's collector state
    assert traffic_record_from_collector(deployment_id=dep.pk, at=at(2026, 4, 2, 10, 0), state=state(10_000)) == 0
    assert traffic_record_from_collector(deployment_id=dep.pk, at=at(2026, 4, 2, 10, 1), state=state(12_500)) == 2500
    # one node of three restarted: the sum went down; what it counted since is unknowable, never counted twice
    assert traffic_record_from_collector(deployment_id=dep.pk, at=at(2026, 4, 2, 10, 2), state=state(9_000)) == 0
    assert traffic_record_from_collector(deployment_id=dep.pk, at=at(2026, 4, 2, 10, 3), state=state(9_400)) == 400
    assert day_bytes(dep, datetime.date(2026, 4, 2)) == 2900


def test_a_new_brokers_first_reading_counts_its_traffic_when_it_started_within_the_hour(owner_org, make_deployment):
    dep = make_deployment(owner_org.default_project)
    assert (
        traffic_counters_record(
            deployment_id=dep.pk, at=at(2026, 4, 2, 10), bytes_received=800, bytes_sent=200, uptime_seconds=65
        )
        == 1000
    )


@pytest.mark.slow
def test_bytes_of_a_real_mosquitto_counted_as_its_sys_counters_grew_when_devices_publish(
    owner_org, make_deployment, tmp_path
):
    from tests.alerts.test_collector_mosquitto import Broker, close, device_client

    dep = make_deployment(owner_org.default_project)
    broker = Broker(tmp_path, debug_log=False)
    try:
        first = broker.collect()
        # a broker started seconds ago: its first reading is this deployment's traffic already
        base = traffic_record_from_collector(deployment_id=dep.pk, at=at(2026, 4, 2, 10, 0), state=first.state)
        publisher, _, _ = device_client(broker.port)
        subscriber, _, _ = device_client(broker.port)
        subscriber.subscribe("dev/#", qos=1)
        time.sleep(0.2)
        for _ in range(50):
            publisher.publish("dev/telemetry", b"x" * 1000, qos=1).wait_for_publish(5)
        time.sleep(2.5)  # the byte counters are republished on the next $SYS batch
        second = broker.collect(previous=first.state, log_offset=first.log_offset)
        close(publisher)
        close(subscriber)
    finally:
        broker.stop()
    counted = traffic_record_from_collector(deployment_id=dep.pk, at=at(2026, 4, 2, 10, 1), state=second.state)
    grown = sum(second.state["counters"][k] - first.state["counters"][k] for k in ("bytes_received", "bytes_sent"))
    assert counted == int(grown)
    # 50 PUBLISH of 1,000 bytes in, 50 out to the subscriber: at least 100,000 bytes
    assert counted >= 100_000
    # a broker started afresh (its uptime went back): counted from zero, not negative, not again
    restarted = Broker(tmp_path, debug_log=False)
    try:
        third = restarted.collect()
    finally:
        restarted.stop()
    assert third.state["uptime"] < second.state["uptime"]
    more = traffic_record_from_collector(deployment_id=dep.pk, at=at(2026, 4, 2, 10, 2), state=third.state)
    assert more == int(third.state["counters"]["bytes_received"] + third.state["counters"]["bytes_sent"]) >= 0
    assert base == int(first.state["counters"]["bytes_received"] + first.state["counters"]["bytes_sent"])
    assert day_bytes(dep, datetime.date(2026, 4, 2)) == base + counted + more


def test_traffic_line_per_deployment_with_100_gib_included_and_late_traffic_on_the_next_invoice(
    owner_org, make_deployment, history
):
    set_account(owner_org)
    heavy = make_deployment(owner_org.default_project, name="heavy")
    light = make_deployment(owner_org.default_project, name="light")
    for dep in (heavy, light):
        history(dep, [("running", at(2026, 4, 1), at(2026, 5, 2))])
    for dep, gibibytes in ((heavy, 130), (light, 40)):
        traffic_counters_record(
            deployment_id=dep.pk, at=at(2026, 4, 1, 0, 1), bytes_received=0, bytes_sent=0, uptime_seconds=60
        )
        traffic_counters_record(
            deployment_id=dep.pk,
            at=at(2026, 4, 20),
            bytes_received=gibibytes * GIB // 2,
            bytes_sent=gibibytes * GIB // 2,
            uptime_seconds=60 + 19 * 86400,
        )
    invoicing.invoices_close(month=datetime.date(2026, 4, 1), now=at(2026, 5, 1, 0, 20))
    april = Invoice.objects.get(period_start=datetime.date(2026, 4, 1))
    traffic = {line.deployment_id: line for line in april.lines.filter(product="traffic")}
    # heavy: 130 GiB, 100 included, 30 GiB x 0.15 = 4.50; light: 40 GiB, all included, 0.00
    assert (traffic[heavy.pk].quantity, traffic[heavy.pk].unit, traffic[heavy.pk].amount) == (30, "GiB", 450)
    assert (traffic[light.pk].quantity, traffic[light.pk].amount) == (0, 0)
    assert traffic[heavy.pk].bytes == 130 * GIB and "100 GiB a month included" in traffic[heavy.pk].description
    # 720 h x 0.36 x 2 deployments = 518.40, + 4.50 traffic
    assert april.subtotal == 2 * 25920 + 450

    # A last April reading that arrives after the close: 5 GiB more for heavy, on 30 April
    traffic_counters_record(
        deployment_id=heavy.pk,
        at=at(2026, 4, 30, 23, 59),
        bytes_received=135 * GIB // 2,
        bytes_sent=135 * GIB // 2,
        uptime_seconds=60 + 30 * 86400,
    )
    invoicing.invoices_close(month=datetime.date(2026, 5, 1), now=at(2026, 6, 1, 0, 20))
    may = Invoice.objects.get(period_start=datetime.date(2026, 5, 1))
    (late,) = may.lines.filter(product="traffic")
    # April's allowance was used up by the 130 GiB billed: the 5 GiB are 5 x 0.15 = 0.75, as April's late usage
    assert (late.quantity, late.amount, late.usage_month) == (5, 75, datetime.date(2026, 4, 1))
    assert "late usage for April 2026" in late.description
    assert not TrafficRecord.objects.filter(invoice__isnull=True).exists()


def test_traffic_line_is_in_gib_at_the_price_per_gib_when_one_gib_and_one_byte_pass_the_allowance(
    owner_org, make_deployment, history
):
    set_account(owner_org)
    dep = make_deployment(owner_org.default_project, name="edge")
    history(dep, [("running", at(2026, 4, 1), at(2026, 5, 2))])
    total = 101 * GIB + 1  # the 100 GiB allowance, then 1 GiB and 1 byte
    traffic_counters_record(
        deployment_id=dep.pk, at=at(2026, 4, 1, 0, 1), bytes_received=0, bytes_sent=0, uptime_seconds=60
    )
    traffic_counters_record(
        deployment_id=dep.pk,
        at=at(2026, 4, 20),
        bytes_received=total // 2,
        bytes_sent=total - total // 2,
        uptime_seconds=60 + 19 * 86400,
    )
    invoicing.invoices_close(month=datetime.date(2026, 4, 1), now=at(2026, 5, 1, 0, 20))
    (line,) = Invoice.objects.get(period_start=datetime.date(2026, 4, 1)).lines.filter(product="traffic")
    assert line.bytes == total
    assert (line.unit, line.quantity, line.unit_price) == ("GiB", Decimal("1"), Decimal("0.15"))
    # (2^30 + 1) bytes x 0.15 / 2^30 = 15.00000001 cents, rounded once: 15. Counted in 10^9-byte GB it would be
    # 1.0737 GB, 16 cents.
    assert line.amount == 15
    assert "traffic 101.000000 GiB in + out, 100 GiB a month included" in line.description
    assert "GB" not in line.description


def test_bytes_of_an_emqx_cluster_counted_from_its_metrics_api_when_nodes_serve_traffic(owner_org, make_deployment):
    from alerts.collectors.emqx import EmqxMonitorApi, collect_emqx
    from tests.fakes.emqx_monitor import EmqxMonitorFake

    dep = make_deployment(owner_org.default_project)
    fake = EmqxMonitorFake().start()
    api = EmqxMonitorApi(fake.base_url, fake.key, fake.secret, timeout=1.0)
    try:
        first = collect_emqx(api, None)
        # a cluster's first reading is the base: EMQX reports no uptime here, so it is not known to be new
        assert traffic_record_from_collector(deployment_id=dep.pk, at=at(2026, 4, 2, 10), state=first.state) == 0
        fake.metrics_nodes[0]["bytes.received"] += 1000
        fake.metrics_nodes[1]["bytes.sent"] += 500
        second = collect_emqx(api, first.state)
        assert traffic_record_from_collector(deployment_id=dep.pk, at=at(2026, 4, 2, 10, 1), state=second.state) == 1500
        fake.metrics_nodes[1]["bytes.received"] = 0  # node 2 restarted: the sum went down
        fake.metrics_nodes[1]["bytes.sent"] = 0
        third = collect_emqx(api, second.state)
        assert traffic_record_from_collector(deployment_id=dep.pk, at=at(2026, 4, 2, 10, 2), state=third.state) == 0
    finally:
        api.close()
        fake.stop()
    assert day_bytes(dep, datetime.date(2026, 4, 2)) == 1500
