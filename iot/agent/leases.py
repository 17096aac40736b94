"""Platform agent leases in PostgreSQL: which agent serves which deployment, until when, and the agents' heartbeats.

A lease is a row per deployment with a holder and an expiry, taken by a conditional upsert only when free or
expired and renewed by its holder's heartbeat, all against the database's clock (never an agent's). A leased row
rather than an advisory lock, because a session lock lives as long as its connection: an agent frozen (SIGSTOP, a
stuck thread, a partitioned host) would keep it forever, while its lease simply expires. `token` grows with every
acquisition, and the agent's writes check it (iot.services._fence), so an agent that lost a lease cannot commit.
"""

from __future__ import annotations

import datetime

from django.db import connection, transaction
from django.utils import timezone

from iot.models import AgentHeartbeat, AgentLease


def acquire(*, deployment_id: int, holder: str, ttl: float) -> int | None:
    """Take the deployment's lease if nobody holds it (or the holder let it expire); the new token, else None."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO iot_agentlease
                (deployment_id, holder, token, acquired_at, renewed_at, expires_at, lag_seconds, presence_cursor)
            VALUES (%s, %s, 1, clock_timestamp(), clock_timestamp(),
                    clock_timestamp() + make_interval(secs => %s), 0, '{}'::jsonb)
            ON CONFLICT (deployment_id) DO UPDATE
                SET holder = EXCLUDED.holder, token = iot_agentlease.token + 1, acquired_at = EXCLUDED.acquired_at,
                    renewed_at = EXCLUDED.renewed_at, expires_at = EXCLUDED.expires_at, lag_seconds = 0
                WHERE iot_agentlease.expires_at <= clock_timestamp()
            RETURNING token
            """,
            [deployment_id, holder, ttl],
        )
        row = cursor.fetchone()
    return int(row[0]) if row else None


def renew(
    *,
    holder: str,
    tokens: dict[int, int],
    ttl: float,
    lags: dict[int, float] | None = None,
    last_events: dict[int, datetime.datetime | None] | None = None,
) -> set[int]:
    """Extend the leases `holder` still holds (deployment id -> token), recording each one's lag and last processed
    event; answers the deployment ids renewed. A lease that expired is not revived: another agent may take it."""
    if not tokens:
        return set()
    lags, last_events = lags or {}, last_events or {}
    ids = list(tokens)
    with connection.cursor() as cursor:
        cursor.execute(
            """
            UPDATE iot_agentlease AS lease
               SET renewed_at = clock_timestamp(), expires_at = clock_timestamp() + make_interval(secs => %s),
                   lag_seconds = mine.lag, last_event_at = COALESCE(mine.last_event, lease.last_event_at)
              FROM unnest(%s::bigint[], %s::bigint[], %s::float8[], %s::timestamptz[])
                   AS mine(deployment_id, token, lag, last_event)
             WHERE lease.deployment_id = mine.deployment_id AND lease.token = mine.token AND lease.holder = %s
               AND lease.expires_at > clock_timestamp()
            RETURNING lease.deployment_id
            """,
            [
                ttl,
                ids,
                [tokens[i] for i in ids],
                [float(lags.get(i, 0.0)) for i in ids],
                [last_events.get(i) for i in ids],
                holder,
            ],
        )
        return {int(row[0]) for row in cursor.fetchall()}


def release(*, holder: str, tokens: dict[int, int]) -> None:
    """Give leases up at once (a clean shutdown): another agent takes them on its next heartbeat."""
    if not tokens:
        return
    ids = list(tokens)
    with connection.cursor() as cursor:
        cursor.execute(
            """
            UPDATE iot_agentlease AS lease SET expires_at = clock_timestamp()
              FROM unnest(%s::bigint[], %s::bigint[]) AS mine(deployment_id, token)
             WHERE lease.deployment_id = mine.deployment_id AND lease.token = mine.token AND lease.holder = %s
            """,
            [ids, [tokens[i] for i in ids], holder],
        )


def held(*, deployment_id: int, holder: str, token: int) -> bool:
    """Whether `holder` still holds the deployment's lease with `token`, unexpired by the database's clock."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT 1 FROM iot_agentlease WHERE deployment_id = %s AND holder = %s AND token = %s "
            "AND expires_at > clock_timestamp()",
            [deployment_id, holder, token],
        )
        return cursor.fetchone() is not None


def presence_cursor(deployment_id: int) -> dict:
    return (
        AgentLease.objects.filter(deployment_id=deployment_id).values_list("presence_cursor", flat=True).first() or {}
    )


def live_agents(*, within: float) -> int:
    since = timezone.now() - datetime.timedelta(seconds=within)
    return AgentHeartbeat.objects.filter(last_heartbeat_at__gt=since).count()


@transaction.atomic
def heartbeat(*, agent_id: str, hostname: str, pid: int, started_at: datetime.datetime, deployments: int) -> None:
    now = timezone.now()
    AgentHeartbeat.objects.update_or_create(
        agent_id=agent_id,
        defaults={
            "hostname": hostname[:255],
            "pid": pid,
            "started_at": started_at,
            "last_heartbeat_at": now,
            "deployments": deployments,
        },
    )
    # Agents silent for a day are gone for good (a restart is a new agent id).
    AgentHeartbeat.objects.filter(last_heartbeat_at__lt=now - datetime.timedelta(days=1)).delete()


def heartbeat_stop(*, agent_id: str) -> None:
    AgentHeartbeat.objects.filter(agent_id=agent_id).delete()
