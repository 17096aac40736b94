"""Premium trials: staff grant one (premium_trial_grant); each Premium deployment made under it is recorded and never
billed by the hour (billing.metering reads coverage_source() through its coverage registry); reminders go out 3 days and
1 day before the end; at the end each trial deployment is converted (its annual plan was bought) or stopped, then
deleted RETENTION later (premium_trials_sweep).

Every change runs in one transaction with its audit row. The sweep takes each trial's advisory lock and rereads its
rows under it, so two sweeps at once, or one run twice, do each thing once. Nothing here bills or talks to a broker.
"""

from __future__ import annotations

import datetime
import logging

from django.db import connection, transaction
from django.db.models import Min, OuterRef, QuerySet, Subquery
from django.utils import timezone

from audit.services import audit_record
from billing.metering import CoverageSource, Term
from billing.models import AnnualSubscription, SubscriptionStatus
from controlplane.db import LockSpace, xact_try_lock
from controlplane.errors import Conflict, DomainError, PermissionDenied, ValidationFailed, model_clean
from deployments import selectors as deployment_selectors
from deployments import services as deployment_services
from deployments.models import Deployment, DesiredState, Plan
from iot.trials_models import MAX_TRIAL_DEPLOYMENTS, PremiumTrial, TrialDeployment
from notifications.models import PlatformEvent
from notifications.services import platform_event_notify
from organizations import access
from organizations.models import Organization
from projects.models import Project

logger = logging.getLogger(__name__)

MAX_DAYS = 90
DEFAULT_DAYS = 14
# Days before the end on which the organization is reminded, latest first: the sweep sends the latest one due.
REMINDER_DAYS = (1, 3)
# A trial deployment not bought by the end is stopped; its data is kept this long after the stop, then deleted.
RETENTION = datetime.timedelta(days=7)
STOP_REASON = "trial_ended"
Outcome = TrialDeployment.Outcome


def _fmt(at: datetime.datetime) -> str:
    return f"{at.astimezone(datetime.UTC):%Y-%m-%d %H:%M} UTC"


def _iso(at: datetime.datetime | None) -> str | None:
    return at.isoformat() if at is not None else None


# -- grant --------------------------------------------------------------------------------------------------------


def _check_grant_input(deployments, days) -> tuple[int, int]:
    errors = {}
    if isinstance(deployments, bool) or not isinstance(deployments, int):
        errors["deployments"] = "A whole number of trial deployments, 1 or 2."
    elif not 1 <= deployments <= MAX_TRIAL_DEPLOYMENTS:
        errors["deployments"] = (
            f"A Premium trial has 1 to {MAX_TRIAL_DEPLOYMENTS} trial deployments, not {deployments}."
        )
    if isinstance(days, bool) or not isinstance(days, int):
        errors["days"] = f"A whole number of days, 1 to {MAX_DAYS}."
    elif not 1 <= days <= MAX_DAYS:
        errors["days"] = f"A Premium trial lasts 1 to {MAX_DAYS} days, not {days}."
    if errors:
        raise ValidationFailed(errors)
    return deployments, days


def premium_deployments_used(organization: Organization) -> int:
    """Premium deployments the organization ever created: what deployments.services counts against the grant."""
    return deployment_selectors.premium_deployments_count(organization.pk)


@transaction.atomic
def premium_trial_grant(
    *,
    organization: Organization,
    actor,
    deployments: int = MAX_TRIAL_DEPLOYMENTS,
    days: int = DEFAULT_DAYS,
    now: datetime.datetime | None = None,
) -> PremiumTrial:
    """Grant the organization a Premium trial of `deployments` trial deployments ending `days` from now; granted
    again before it ends, the trial is changed (its end moves to `days` from now). Staff only. A trial that ended is
    history: it is not granted again."""
    if not access.is_staff(actor):
        raise PermissionDenied("Only staff grant Premium trials.")
    deployments, days = _check_grant_input(deployments, days)
    now = now or timezone.now()
    # The organization's row lock orders this grant against a concurrent Premium deployment_create (which takes it).
    organization = Organization.objects.select_for_update().get(pk=organization.pk)
    if organization.closed_at is not None:
        # Its Owner deleted it: nobody is left to use a trial, and the sweep leaves a closed organization's trial alone.
        raise Conflict(f"The organization was deleted on {_fmt(organization.closed_at)}: a trial cannot be granted.")
    trial = PremiumTrial.objects.select_for_update().filter(organization=organization).first()
    # ended_at too: a grant whose clock was read before the end may get the row only after the sweep ended it.
    if trial is not None and (trial.ended_at is not None or trial.ends_at <= now):
        raise Conflict(f"The organization's Premium trial ended on {_fmt(trial.ends_at)}; a trial is granted once.")
    used = premium_deployments_used(organization)
    if deployments < used:
        raise ValidationFailed(
            {"deployments": f"The organization already created {used} Premium deployment(s): grant at least {used}."}
        )
    ends_at = now + datetime.timedelta(days=days)
    action = "premium_trial.grant" if trial is None else "premium_trial.change"
    before = None if trial is None else {"deployments": trial.deployments, "ends_at": trial.ends_at.isoformat()}
    if trial is None:
        trial = PremiumTrial(organization=organization, starts_at=now)
    trial.deployments, trial.ends_at = deployments, ends_at
    trial.granted_by = access.acting_user(actor)
    # A moved end gets its own reminders (their dedup keys name the end).
    trial.reminded_3d_at = trial.reminded_1d_at = None
    model_clean(trial, exclude=["organization", "granted_by"], validate_constraints=False)
    trial.save()
    Organization.objects.filter(pk=organization.pk).update(premium_trial_deployments=deployments)
    audit_record(
        actor=actor,
        organization=organization,
        action=action,
        target=trial,
        summary={"deployments": deployments, "days": days, "ends_at": ends_at.isoformat(), "before": before},
    )
    return trial


# -- what deployments asks (hooks registered in IotConfig.ready) ------------------------------------------------------


def trial_deployment_record(*, deployment: Deployment) -> None:
    """deployments' creation hook: a Premium deployment made while the organization's trial runs is a trial
    deployment; after the trial ended none is made. An organization with no trial row (its grant field set by
    hand, before trials were recorded) keeps the old behaviour: nothing recorded."""
    if deployment.plan.code != Plan.Code.PREMIUM:
        return
    trial = PremiumTrial.objects.select_for_update().filter(organization_id=deployment.project.organization_id).first()
    if trial is None:
        return
    now = timezone.now()
    if trial.ends_at <= now:
        raise Conflict(
            f"Your organization's Premium trial ended on {_fmt(trial.ends_at)}: no more Premium deployments can be "
            "created. Ask us about Premium on the annual plan."
        )
    if trial.trial_deployments.count() >= trial.deployments:
        raise Conflict(f"Your organization has used its {trial.deployments} Premium trial deployment(s).")
    TrialDeployment.objects.create(trial=trial, deployment=deployment, started_at=deployment.created_at)


def _annual_started(deployment_id: int, since: datetime.datetime) -> datetime.datetime | None:
    """When the deployment's first annual plan since `since` started (a plan whose invoice was voided included:
    its term covered those hours)."""
    return AnnualSubscription.objects.filter(deployment_id=deployment_id, term_start__gte=since).aggregate(
        first=Min("term_start")
    )["first"]


def trial_start_guard(*, deployment: Deployment) -> None:
    """deployments' start hook: a trial deployment whose trial ended without its annual plan stays stopped."""
    trial_deployment = TrialDeployment.objects.select_related("trial").filter(deployment=deployment).first()
    if trial_deployment is None or trial_deployment.outcome == Outcome.CONVERTED:
        return
    trial = trial_deployment.trial
    if trial_deployment.outcome == Outcome.TRIAL and (
        trial.ends_at > timezone.now()
        or AnnualSubscription.objects.filter(deployment=deployment, status=SubscriptionStatus.ACTIVE).exists()
    ):
        return  # still on trial, or bought and about to be marked converted by the sweep
    delete_at = (trial_deployment.stopped_at or trial.ends_at) + RETENTION
    raise Conflict(
        f"The Premium trial of this deployment ended on {_fmt(trial.ends_at)} without an annual plan: it stays "
        f"stopped, and it is deleted with its data on {_fmt(delete_at)}."
    )


# -- coverage: what metering never bills by the hour ----------------------------------------------------------------


def _coverage_sql() -> str:
    qn = connection.ops.quote_name
    return f"""
        SELECT td.deployment_id, td.started_at AS term_start,
               COALESCE((SELECT MIN(a.term_start) FROM {qn(AnnualSubscription._meta.db_table)} a
                         WHERE a.deployment_id = td.deployment_id AND a.term_start >= td.started_at),
                        'infinity'::timestamptz) AS term_end
        FROM {qn(TrialDeployment._meta.db_table)} td
        WHERE td.started_at < %(end)s
    """


def _coverage_terms(deployment_ids, start, end) -> list[Term]:
    """The Python reference of `_coverage_sql`, in one query whatever the number of deployments."""
    first_annual = (
        AnnualSubscription.objects.filter(
            deployment_id=OuterRef("deployment_id"), term_start__gte=OuterRef("started_at")
        )
        .order_by("term_start")
        .values("term_start")[:1]
    )
    rows = TrialDeployment.objects.filter(deployment_id__in=deployment_ids, started_at__lt=end).annotate(
        annual=Subquery(first_annual)
    )
    terms = []
    for row in rows:
        term_end = row.annual or datetime.datetime.max.replace(tzinfo=datetime.UTC)
        if term_end > start:
            terms.append(Term(row.deployment_id, row.started_at, term_end, status="ended"))
    return terms


def coverage_source() -> CoverageSource:
    """A trial deployment is covered from its creation until its annual plan starts. Never bought, it is never
    billed by the hour at all: it is stopped at the end and deleted after the retention, so no term end can leave
    seconds that bill (stopped seconds included). A trial is free: the traffic it moves is not counted either."""
    return CoverageSource(sql=_coverage_sql(), terms=_coverage_terms, waives_traffic=True)


# -- the sweep ----------------------------------------------------------------------------------------------------


def _notify_reminder(trial: PremiumTrial, days: int, now: datetime.datetime) -> None:
    deployments = list(TrialDeployment.objects.filter(trial=trial, outcome=Outcome.TRIAL).select_related("deployment"))
    names = ", ".join(f"{td.deployment.name} ({td.deployment.public_id})" for td in deployments) or "none yet"
    left = "1 day" if days == 1 else f"{days} days"
    platform_event_notify(
        organization=trial.organization,
        kind=PlatformEvent.Kind.PREMIUM_TRIAL_REMINDER,
        subject=trial.public_id,
        message=(
            f"Your Premium trial ends in {left}, on {_fmt(trial.ends_at)}.\n"
            f"Trial deployments: {names}.\n"
            "Switch each one you keep to the Premium annual plan before then (its billing page: ask for a quote, "
            "accept it) and it keeps running without interruption. The others are stopped at the end, their data "
            f"kept {RETENTION.days} days, then deleted."
        ),
        severity="warning",
        dedup_key=f"premium-trial:{trial.public_id}:{trial.ends_at.isoformat()}:reminder-{days}d",
    )
    field = f"reminded_{days}d_at"
    setattr(trial, field, now)
    trial.save(update_fields=[field])
    audit_record(
        actor=None,
        organization=trial.organization,
        action="premium_trial.reminder",
        target=trial,
        summary={"days_before_end": days, "ends_at": trial.ends_at.isoformat()},
    )


def _settle(trial_deployment: TrialDeployment, now: datetime.datetime) -> bool:
    """At the trial's end: converted if its annual plan was bought, else stopped. False when it cannot be settled
    now (an operation in flight): the next sweep tries again."""
    # The deployment's row lock orders this against a quote being accepted (annual_quote_accept takes it): bought
    # first, it is seen here; stopped first, the acceptance finds it stopped and refuses.
    deployment = (
        Deployment.objects.select_for_update(of=("self",))
        .select_related("project__organization")
        .get(pk=trial_deployment.deployment_id)
    )
    organization = deployment.project.organization
    annual = _annual_started(deployment.pk, trial_deployment.started_at)
    if annual is not None:
        trial_deployment.outcome, trial_deployment.converted_at = Outcome.CONVERTED, annual
        trial_deployment.save(update_fields=["outcome", "converted_at"])
        audit_record(
            actor=None,
            organization=organization,
            action="premium_trial.convert",
            target=deployment,
            summary={"trial": trial_deployment.trial.public_id, "annual_since": annual.isoformat()},
        )
        return True
    if deployment.desired_state == DesiredState.DELETED:
        trial_deployment.outcome, trial_deployment.deleted_at = Outcome.DELETED, deployment.deleted_at or now
        trial_deployment.save(update_fields=["outcome", "deleted_at"])
        audit_record(
            actor=None,
            organization=organization,
            action="premium_trial.delete",
            target=deployment,
            # Deleted by the organization during its trial (its own deployment.delete row says who).
            summary={"trial": trial_deployment.trial.public_id, "deleted_at": _iso(trial_deployment.deleted_at)},
        )
        return True
    if deployment.desired_state == DesiredState.RUNNING:
        try:
            deployment_services.deployment_stop(deployment=deployment, actor=None, reason=STOP_REASON)
        except DomainError as exc:
            logger.warning("cannot stop %s at its trial's end yet: %s", deployment.public_id, exc)
            return False
    trial_deployment.outcome, trial_deployment.stopped_at = Outcome.STOPPED, now
    trial_deployment.save(update_fields=["outcome", "stopped_at"])
    audit_record(
        actor=None,
        organization=organization,
        action="premium_trial.stop",
        target=deployment,
        summary={"trial": trial_deployment.trial.public_id, "delete_at": (now + RETENTION).isoformat()},
    )
    return True


def _notify_ended(trial: PremiumTrial, settled: list[TrialDeployment]) -> None:
    lines = []
    for td in settled:
        d = td.deployment
        if td.outcome == Outcome.CONVERTED:
            lines.append(f"- {d.name} ({d.public_id}): on the Premium annual plan, keeps running.")
        elif td.outcome == Outcome.STOPPED and td.stopped_at is not None:
            lines.append(
                f"- {d.name} ({d.public_id}): stopped; its data is kept until {_fmt(td.stopped_at + RETENTION)}, "
                "then deleted."
            )
        else:
            lines.append(f"- {d.name} ({d.public_id}): deleted.")
    platform_event_notify(
        organization=trial.organization,
        kind=PlatformEvent.Kind.PREMIUM_TRIAL_ENDED,
        subject=trial.public_id,
        message=f"Your Premium trial ended on {_fmt(trial.ends_at)}.\n" + ("\n".join(lines) or "No trial deployment."),
        severity="warning",
        dedup_key=f"premium-trial:{trial.public_id}:ended",
    )


def _sweep_trial(trial_id: int, now: datetime.datetime, counts: dict) -> None:
    with transaction.atomic():
        if not xact_try_lock(LockSpace.PREMIUM_TRIAL, trial_id):
            return  # another sweep is at this trial now; it does what is due
        # The row lock orders this against a grant moving the end: one moved first is seen here.
        trial = PremiumTrial.objects.select_for_update(of=("self",)).select_related("organization").get(pk=trial_id)
        if trial.organization.closed_at is not None:
            return  # closed since it was found due
        if now < trial.ends_at:
            for days in REMINDER_DAYS:  # the latest reminder due, once; an earlier one it overtook is skipped
                if now >= trial.ends_at - datetime.timedelta(days=days):
                    if getattr(trial, f"reminded_{days}d_at") is None and (days == 1 or trial.reminded_1d_at is None):
                        _notify_reminder(trial, days, now)
                        counts["reminders"] += 1
                    break
            return
        if trial.ended_at is None:
            pending = list(TrialDeployment.objects.filter(trial=trial, outcome=Outcome.TRIAL))
            done = True
            for trial_deployment in pending:
                trial_deployment.trial = trial
                if _settle(trial_deployment, now):
                    counts[str(trial_deployment.outcome)] += 1
                else:
                    done = False
            if done:
                trial.ended_at = now
                trial.save(update_fields=["ended_at"])
                audit_record(
                    actor=None,
                    organization=trial.organization,
                    action="premium_trial.end",
                    target=trial,
                    summary={"ends_at": trial.ends_at.isoformat()},
                )
                _notify_ended(trial, list(trial.trial_deployments.select_related("deployment")))
        for trial_deployment in TrialDeployment.objects.filter(
            trial=trial, outcome=Outcome.STOPPED, stopped_at__lte=now - RETENTION
        ).select_related("deployment__project__organization"):
            deployment = trial_deployment.deployment
            if deployment.desired_state != DesiredState.DELETED:
                deployment_services.deployment_delete(deployment=deployment, actor=None, force=True)
            trial_deployment.outcome, trial_deployment.deleted_at = Outcome.DELETED, now
            trial_deployment.save(update_fields=["outcome", "deleted_at"])
            audit_record(
                actor=None,
                organization=trial.organization,
                action="premium_trial.delete",
                target=deployment,
                summary={"trial": trial.public_id, "stopped_at": _iso(trial_deployment.stopped_at)},
            )
            counts["deleted"] += 1


def premium_trials_sweep(*, now: datetime.datetime | None = None) -> dict:
    """Everything due for every trial at `now`: reminders, the end (convert or stop), deletions after retention.
    Each trial in its own transaction under its advisory lock; safe to run any number of times, also at once."""
    now = now or timezone.now()
    counts = {"reminders": 0, "converted": 0, "stopped": 0, "deleted": 0}
    horizon = now + datetime.timedelta(days=max(REMINDER_DAYS))
    # A deleted (closed) organization has nobody left to remind and no deployment left to settle (its deletion
    # waited for every one to be deleted): its trial is left as it was.
    open_trials = PremiumTrial.objects.filter(organization__closed_at__isnull=True)
    due = set(open_trials.filter(ended_at__isnull=True, ends_at__lte=horizon).values_list("pk", flat=True)) | set(
        TrialDeployment.objects.filter(
            trial__in=open_trials, outcome=Outcome.STOPPED, stopped_at__lte=now - RETENTION
        ).values_list("trial_id", flat=True)
    )
    for trial_id in sorted(due):
        _sweep_trial(trial_id, now, counts)
    return counts


# -- reads ----------------------------------------------------------------------------------------------------------


def premium_trial_summary(
    *, organization: Organization, projects: QuerySet[Project], now: datetime.datetime | None = None
) -> dict:
    """What the organization sees of its trial: none, active (with its end) or ended, and its trial deployments in
    `projects` (those the caller may read: the others' names and ids are not the caller's to see; `used` still
    counts them, as the limit does)."""
    now = now or timezone.now()
    trial = PremiumTrial.objects.filter(organization=organization).first()
    if trial is None:
        return {
            "status": "none",
            "deployments": 0,
            "used": 0,
            "starts_at": None,
            "ends_at": None,
            "trial_deployments": [],
        }
    rows = TrialDeployment.objects.filter(trial=trial, deployment__project__in=projects).select_related("deployment")
    return {
        "status": "ended" if trial.ended_at is not None or now >= trial.ends_at else "active",
        "deployments": trial.deployments,
        "used": premium_deployments_used(organization),
        "starts_at": trial.starts_at,
        "ends_at": trial.ends_at,
        "trial_deployments": [
            {
                "deployment": td.deployment.public_id,
                "name": td.deployment.name,
                "outcome": td.outcome,
                "delete_at": td.stopped_at + RETENTION if td.stopped_at and td.outcome == Outcome.STOPPED else None,
            }
            for td in rows
        ],
    }
