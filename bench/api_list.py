"""API list throughput: a page of 100 projects through the full stack (gunicorn, real PostgreSQL, Redis rate
limits, auth, tenancy, serialization) beside the floor — the same rows fetched with raw psycopg and json.dumps.

Needs DATABASE_URL (PostgreSQL) and REDIS_URL: run it with `scripts/bench.sh bench/api_list.py`.
Prints requests per second for both, their ratio (target: at least 0.25), and the SQL query count for a page of
10 and of 100 (target: equal).
"""

import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
# The buckets stay in the path (their Redis call is part of the stack) but never refuse.
os.environ["RATE_LIMIT_PRINCIPAL"] = "1000000000,1000000000"
os.environ["RATE_LIMIT_ORGANIZATION"] = "1000000000,1000000000"
os.environ["RATE_LIMIT_PLATFORM"] = "1000000000,1000000000"

from bench.common import setup_django  # noqa: E402

setup_django()

from django.conf import settings  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402

DURATION = float(os.environ.get("BENCH_SECONDS", "8"))
CLIENTS = 4
# What we ship: the Helm chart's default web pod (helm/controlplane/values.yaml web.gunicorn) and the Dockerfile's
# command run three sync workers of one thread each.
GUNICORN = ["--workers", "3", "--threads", "1"]


def setup_data():
    from accounts.models import User
    from organizations import services
    from organizations.models import ApiKey
    from organizations.roles import Role
    from projects.models import Project

    call_command("migrate", verbosity=0)
    owner = User.objects.create_user(f"bench-{time.time()}@example.com", "bench passphrase 123")
    org = services.organization_create(name="Bench", owner=owner)
    Project.objects.bulk_create(
        Project(organization=org, name=f"Project {i:04d}", description="bench") for i in range(999)
    )
    _key, secret = services.api_key_create(
        organization=org, actor=None, name="bench", role=Role.OWNER, created_by=owner
    )
    for i in range(199):
        services.api_key_create(organization=org, actor=None, name=f"k{i}", role=Role.AUDITOR, created_by=owner)
    assert (
        Project.objects.filter(organization=org).count() == 1000
        and ApiKey.objects.filter(organization=org).count() == 200
    )
    return org, secret


def query_counts(org, secret):
    from rest_framework.test import APIClient

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    counts = {}
    for size in (10, 100):
        url = f"/api/v1/organizations/{org.public_id}/projects?page_size={size}"
        client.get(url)
        with CaptureQueriesContext(connection) as ctx:
            assert client.get(url).status_code == 200
        counts[size] = len(ctx.captured_queries)
    return counts


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def drive(port, path, headers, seconds):
    done = []
    stop = time.monotonic() + seconds

    def worker():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        n = 0
        while time.monotonic() < stop:
            conn.request("GET", path, headers=headers)
            response = conn.getresponse()
            body = response.read()
            assert response.status == 200, body[:200]
            n += 1
        done.append(n)

    threads = [threading.Thread(target=worker) for _ in range(CLIENTS)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done) / (time.monotonic() - start)


def raw_floor(org_pk, seconds):
    import psycopg

    db = settings.DATABASES["default"]
    conn = psycopg.connect(
        host=db["HOST"], port=db["PORT"], user=db["USER"], password=db["PASSWORD"] or None, dbname=db["NAME"]
    )
    sql = (
        "SELECT public_id, name, description, is_default, created_at FROM projects_project "
        "WHERE organization_id = %s ORDER BY created_at DESC, id DESC LIMIT 100"
    )
    n, stop, start = 0, time.monotonic() + seconds, time.monotonic()
    while time.monotonic() < stop:
        with conn.cursor() as cur:
            cur.execute(sql, (org_pk,))
            rows = cur.fetchall()
        json.dumps(
            {
                "results": [
                    {"id": r[0], "name": r[1], "description": r[2], "is_default": r[3], "created_at": r[4].isoformat()}
                    for r in rows
                ]
            }
        )
        n += 1
    conn.close()
    return n / (time.monotonic() - start)


def main():
    org, secret = setup_data()
    counts = query_counts(org, secret)
    # The floor is measured before and after the stack and the better figure kept: a background vacuum or a slow
    # moment must not flatter the ratio.
    floor_before = raw_floor(org.pk, DURATION / 2)
    port = free_port()
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "controlplane.settings"}
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "controlplane.wsgi:application",
            "--bind",
            f"127.0.0.1:{port}",
            *GUNICORN,
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        env=env,
    )
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        path = f"/api/v1/organizations/{org.public_id}/projects?page_size=100"
        headers = {"Authorization": f"Bearer {secret}", "Host": "127.0.0.1"}
        drive(port, path, headers, 1.0)  # warm up connections and caches
        stack = statistics.median(drive(port, path, headers, DURATION / 2) for _ in range(2))
    finally:
        server.terminate()
        server.wait(10)
    floor = max(floor_before, raw_floor(org.pk, DURATION / 2))
    print(f"full stack (gunicorn {' '.join(GUNICORN)}, {CLIENTS} clients): {stack:8.1f} req/s   page of 100 projects")
    print(f"floor (raw psycopg + json.dumps, 1 client, best of two): {floor:8.1f} req/s")
    print(f"ratio stack/floor: {stack / floor:.2f}   (target >= 0.25)")
    print(f"SQL queries per request: page_size=10 -> {counts[10]}, page_size=100 -> {counts[100]}   (target: equal)")


if __name__ == "__main__":
    main()
