"""Console page cost: server time (p50/p95) and SQL query count of each console page, with 100 deployments and 20
members in one organization, beside the API's own deployment list in the same run.

Needs DATABASE_URL (PostgreSQL) and REDIS_URL: run it with `scripts/bench.sh bench/console.py`.
Each page is requested in-process through Django's full middleware stack (sessions, CSRF, CSP, idempotency), so the
time is the server's, without a network or a browser. The query count of every page is measured with 10 and with
100 deployments (and 4 and 20 members): it must not grow with the rows. Target: p95 under 150 ms on this machine.
"""

import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ["RATE_LIMIT_PRINCIPAL"] = "1000000000,1000000000"
os.environ["RATE_LIMIT_ORGANIZATION"] = "1000000000,1000000000"
os.environ["RATE_LIMIT_PLATFORM"] = "1000000000,1000000000"

from bench.common import setup_django  # noqa: E402

setup_django()

from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402

REQUESTS = int(os.environ.get("BENCH_REQUESTS", "40"))
TARGET_P95_MS = 150.0


class Fixture:
    def __init__(self):
        from accounts.models import User
        from organizations import services

        call_command("migrate", verbosity=0)
        self.owner = User.objects.create_user(f"bench-{time.time()}@example.com", "bench passphrase 123")
        self.org = services.organization_create(name="Console bench", owner=self.owner)
        self.project = self.org.projects.get(is_default=True)
        _key, self.secret = services.api_key_create(
            organization=self.org, actor=None, name="bench", role="owner", created_by=self.owner
        )
        self.deployments = []
        self.members = 1

    def grow(self, *, deployments: int, members: int):
        from accounts.models import User
        from deployments import services as deployment_services
        from deployments.models import Deployment, Operation
        from organizations import services
        from organizations.models import Membership
        from projects.models import ProjectGrant

        while len(self.deployments) < deployments:
            deployment, _ = deployment_services.deployment_create(
                project=self.project,
                actor=None,
                name=f"d{len(self.deployments):03d}",
                plan="dedicated",
                tier="1k",
                region="local",
            )
            self.deployments.append(deployment)
        # As the reconciler leaves them: running, their operations done (a page shows settled rows).
        Operation.objects.filter(deployment__project=self.project).update(status="succeeded")
        for deployment in Deployment.objects.filter(project=self.project):
            Deployment.objects.filter(pk=deployment.pk).update(
                status="running",
                observed_generation=deployment.generation,
                endpoints={"host": "127.0.0.1", "ports": {"mqtt": 21883}},
            )
        while self.members < members:
            user = User.objects.create_user(f"member{self.members}-{time.time()}@example.com", "bench passphrase 123")
            membership = Membership.objects.create(organization=self.org, user=user, roles=["auditor"])
            ProjectGrant.objects.create(membership=membership, project=self.project, role="project_user")
            services.api_key_create(
                organization=self.org, actor=None, name=f"k{self.members}", role="auditor", created_by=user
            )
            self.members += 1

    def pages(self):
        o, p = self.org.public_id, self.project.public_id
        d = f"/console/o/{o}/p/{p}/d/{self.deployments[0].public_id}"
        return [
            ("projects", f"/console/o/{o}"),
            ("deployments", f"/console/o/{o}/p/{p}"),
            ("deployment rows (htmx)", f"/console/o/{o}/p/{p}/rows"),
            ("create wizard", f"/console/o/{o}/p/{p}/deployments/new"),
            ("deployment overview", d),
            ("live status (htmx)", f"{d}/live"),
            ("MQTT users", f"{d}/mqtt-users"),
            ("ACL rules", f"{d}/acl"),
            ("rate limits", f"{d}/rate-limits"),
            ("manage", f"{d}/manage"),
            ("stop dry run", f"{d}/actions/stop"),
            ("history", f"{d}/history"),
            ("VPC peering (local region)", f"{d}/vpc-peering"),
            ("members", f"/console/o/{o}/members"),
            ("API keys", f"/console/o/{o}/api-keys"),
            ("audit log", f"/console/o/{o}/audit"),
            ("settings", f"/console/o/{o}/settings"),
        ]

    def api_list(self):
        return f"/api/v1/organizations/{self.org.public_id}/projects/{self.project.public_id}/deployments?page_size=100"


def queries(client, path, **headers) -> int:
    with CaptureQueriesContext(connection) as captured:
        response = client.get(path, **headers)
    assert response.status_code == 200, (path, response.status_code)
    return len(captured)


def timings(client, path, **headers) -> list[float]:
    client.get(path, **headers)  # warm: templates compiled, connections open
    out = []
    for _ in range(REQUESTS):
        start = time.perf_counter()
        response = client.get(path, **headers)
        out.append((time.perf_counter() - start) * 1000)
        assert response.status_code == 200, (path, response.status_code)
    return out


def p95(values):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def main():
    fixture = Fixture()
    client = Client()
    client.force_login(fixture.owner)
    api = Client(HTTP_AUTHORIZATION=f"Bearer {fixture.secret}")

    fixture.grow(deployments=10, members=4)
    small = {name: queries(client, path) for name, path in fixture.pages()}
    small_api = queries(api, fixture.api_list())
    fixture.grow(deployments=100, members=20)
    rows = []
    for name, path in fixture.pages():
        values = timings(client, path)
        rows.append((name, statistics.median(values), p95(values), small[name], queries(client, path)))
    api_values = timings(api, fixture.api_list())
    api_row = ("API: list 100 deployments", statistics.median(api_values), p95(api_values), small_api)
    api_row += (queries(api, fixture.api_list()),)

    print(f"{REQUESTS} requests per page, in-process, 100 deployments and 20 members in the organization")
    print(f"{'page':28} {'p50 ms':>8} {'p95 ms':>8} {'SQL@10':>7} {'SQL@100':>8}")
    for name, p50, high, before, after in [*rows, api_row]:
        grew = "" if after <= before else "  <- grows with rows"
        slow = "" if high <= TARGET_P95_MS else f"  <- above the {TARGET_P95_MS:.0f} ms target"
        print(f"{name:28} {p50:8.1f} {high:8.1f} {before:7d} {after:8d}{grew}{slow}")
    worst = max(rows, key=lambda r: r[2])
    print(
        f"worst console p95: {worst[2]:.1f} ms ({worst[0]}); target {TARGET_P95_MS:.0f} ms; "
        f"API list p95 in the same run: {api_row[2]:.1f} ms"
    )
    print("query counts equal at 10 and 100 rows:", all(r[3] == r[4] for r in rows))


if __name__ == "__main__":
    main()
