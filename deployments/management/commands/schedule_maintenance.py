"""`manage.py schedule_maintenance (--deployment dep_… | --region CODE) --start ISO-8601 --duration 2h --reason …`.

Announces maintenance through deployments.services.maintenance_schedule, which checks the lead time (14 days; 24 hours
with --emergency) and tells each organization. A region-wide run schedules every live deployment there or none at all.
"""

import datetime
import re

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from controlplane.errors import DomainError
from deployments import services
from deployments.models import Deployment, DesiredState, Region

_DURATION = re.compile(r"^(?:(?P<hours>\d+)h)?(?:(?P<minutes>\d+)m)?\Z")


def parse_start(value: str) -> datetime.datetime:
    try:
        parsed = datetime.datetime.fromisoformat(value.strip())
    except ValueError:
        raise CommandError(f"--start: {value!r} is not an ISO 8601 date and time, e.g. 2026-12-01T02:00:00Z") from None
    # A time without an offset is read as UTC: operators announce maintenance in UTC.
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=datetime.UTC)


def parse_duration(value: str) -> datetime.timedelta:
    match = _DURATION.match(value.strip().lower())
    if not value.strip() or match is None:
        raise CommandError(f"--duration: {value!r} is not a duration such as 2h, 90m or 1h30m")
    try:
        duration = datetime.timedelta(hours=int(match["hours"] or 0), minutes=int(match["minutes"] or 0))
    except OverflowError:
        raise CommandError("--duration: at most 4 hours") from None
    if duration <= datetime.timedelta(0):
        raise CommandError("--duration: must be longer than zero")
    return duration


def describe(exc: DomainError) -> str:
    if not exc.errors:
        return exc.message
    grouped: dict[str | None, list[str]] = {}
    for error in exc.errors:
        grouped.setdefault(error.field, []).append(error.message)
    return "; ".join(
        f"{field}: {' '.join(messages)}" if field else " ".join(messages) for field, messages in grouped.items()
    )


class Command(BaseCommand):
    help = "Schedule maintenance (a restart inside the window, alerts withheld) and notify the organizations."

    def add_arguments(self, parser):
        target = parser.add_mutually_exclusive_group(required=True)
        target.add_argument("--deployment", help="A deployment's public id (dep_…).")
        target.add_argument("--region", help="A region code: every live deployment in it.")
        parser.add_argument(
            "--start", required=True, help="ISO 8601 start, e.g. 2026-12-01T02:00:00Z (no offset means UTC)."
        )
        parser.add_argument("--duration", required=True, help="2h, 90m, 1h30m; at most 4 hours.")
        parser.add_argument("--emergency", action="store_true", help="Announce 24 hours ahead instead of 14 days.")
        parser.add_argument("--reason", required=True, help="Why: customers read it in the notification.")

    def handle(self, *args, deployment, region, start, duration, emergency, reason, **options):
        starts_at = parse_start(start)
        length = parse_duration(duration)
        try:
            ends_at = starts_at + length
        except OverflowError:
            raise CommandError(f"--start: {start!r} plus {duration!r} ends past year 9999") from None
        deployments = self._targets(deployment, region)
        if not deployments:
            self.stdout.write(f"No live deployment in region {region}: nothing scheduled.")
            return
        scheduled = []
        with transaction.atomic():  # a region is scheduled whole or not at all; notifications leave on commit
            for target in deployments:
                try:
                    window = services.maintenance_schedule(
                        deployment=target,
                        starts_at=starts_at,
                        ends_at=ends_at,
                        reason=reason,
                        emergency=emergency,
                        actor=None,
                    )
                except DomainError as exc:
                    raise CommandError(
                        f"{target.public_id} ({target.name}): {describe(exc)} Nothing was scheduled."
                    ) from exc
                scheduled.append(window)
        kind = "emergency maintenance" if emergency else "maintenance"
        for window in scheduled:
            target = window.deployment
            self.stdout.write(
                f"Scheduled {kind} {window.public_id} for {target.public_id} ({target.name}, "
                f"{target.project.organization.public_id}): {services.maintenance_window_text(window)}"
            )
        self.stdout.write(f"{len(scheduled)} window(s) scheduled; the organizations have been notified.")

    def _targets(self, deployment: str | None, region: str | None) -> list[Deployment]:
        live = (
            Deployment.objects.exclude(desired_state=DesiredState.DELETED)
            .select_related("project__organization")
            .order_by("pk")
        )
        if deployment is not None:
            found = live.filter(public_id=deployment.strip()).first()
            if found is None:
                raise CommandError(f"--deployment: no live deployment {deployment!r}")
            return [found]
        if not Region.objects.filter(code=region).exists():
            raise CommandError(f"--region: no region {region!r}")
        return list(live.filter(region__code=region))
