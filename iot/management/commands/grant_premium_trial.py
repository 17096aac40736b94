"""`manage.py grant_premium_trial --organization org_… [--deployments 2] [--days 14]`: the operator's grant of a
Premium trial, through iot.trials.premium_trial_grant (audited as the system: whoever runs manage.py is the operator).
"""

import re

from django.core.management.base import BaseCommand, CommandError

from controlplane.errors import DomainError
from iot import trials
from organizations.models import Organization

PUBLIC_ID = re.compile(r"org_[a-z0-9]{1,40}")


def describe(exc: DomainError) -> str:
    if not exc.errors:
        return exc.message
    return "; ".join(f"--{e.field}: {e.message}" if e.field else e.message for e in exc.errors)


class Command(BaseCommand):
    help = (
        "Grant an organization a Premium trial: it may create up to --deployments Premium deployments (1 or 2), "
        "never billed by the hour, until --days days from now (1 to 90). Its members are reminded 3 days and 1 day "
        "before the end. At the end each trial deployment whose Premium annual plan was bought keeps running; the "
        "others are stopped, their data kept 7 days, then deleted. Granted again before the end, the trial is "
        "changed: its end moves to --days from now. A trial that ended is not granted again."
    )

    def add_arguments(self, parser):
        parser.add_argument("--organization", required=True, help="The organization's public id (org_…).")
        parser.add_argument(
            "--deployments",
            type=int,
            default=trials.MAX_TRIAL_DEPLOYMENTS,
            help=f"Trial deployments, 1 to {trials.MAX_TRIAL_DEPLOYMENTS} (default {trials.MAX_TRIAL_DEPLOYMENTS}).",
        )
        parser.add_argument(
            "--days",
            type=int,
            default=trials.DEFAULT_DAYS,
            help=f"Days until the trial ends, 1 to {trials.MAX_DAYS} (default {trials.DEFAULT_DAYS}).",
        )

    def handle(self, *args, organization, deployments, days, **options):
        value = organization.strip()
        # Checked before any query: an id with a NUL or other control character never reaches the database.
        found = Organization.objects.filter(public_id=value).first() if PUBLIC_ID.fullmatch(value) else None
        if found is None:
            raise CommandError(f"--organization: no organization {organization!r}.")
        try:
            trial = trials.premium_trial_grant(organization=found, actor=None, deployments=deployments, days=days)
        except DomainError as exc:
            raise CommandError(describe(exc)) from None
        self.stdout.write(
            f"{found.name} ({found.public_id}): Premium trial {trial.public_id}, {trial.deployments} trial "
            f"deployment(s), ends {trials._fmt(trial.ends_at)}."
        )
