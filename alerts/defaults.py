"""The default alert rules every deployment has: EMQX Cloud's fixed alert events, as rules the user may edit.

They are created inside the deployment's own creating transaction (deployments calls the hook alerts registers in
AppConfig.ready(): deployments never imports alerts), and a default added by a later release reaches existing
deployments at their next evaluation. Each default is created once per deployment: one the user deleted stays deleted.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from django.db import transaction

from alerts.models import AlertRule, CollectorState

GIB = 1024**3


@dataclasses.dataclass(frozen=True)
class DefaultRule:
    key: str
    name: str
    kind: str = AlertRule.Kind.METRIC
    metric: str = ""
    aggregation: str = "max"
    window_seconds: int = 300
    operator: str = ">"
    threshold: float = 0
    threshold_unit: str = AlertRule.ThresholdUnit.ABSOLUTE
    for_seconds: int = 0
    severity: str = "warning"
    repeat_interval_seconds: int | None = 3600
    plans: tuple[str, ...] = ()  # the plans (codes) whose deployments get it; empty: every deployment


# EMQX Cloud's fixed alert events, as editable rules on every deployment. Append only: a key is the
# identity of a default in every deployment's record of what it was given.
DEFAULT_RULES: tuple[DefaultRule, ...] = (
    DefaultRule(
        "connections_high",
        "Connections above 80% of the tier's limit",
        metric="connections",
        threshold=80,
        threshold_unit=AlertRule.ThresholdUnit.PERCENT_OF_TIER_LIMIT,
        for_seconds=300,
    ),
    DefaultRule(
        "traffic_daily",
        "Traffic above 100 GiB in 24 hours",
        metric="traffic_bytes",
        aggregation="sum",
        window_seconds=86400,
        threshold=100 * GIB,
        repeat_interval_seconds=86400,
    ),
    DefaultRule(
        "certificate_expiring",
        "TLS certificate expiring within 30 days",
        kind=AlertRule.Kind.CERTIFICATE_EXPIRY,
        aggregation="min",
        window_seconds=86400,
        operator="<",
        threshold=30,
        repeat_interval_seconds=86400,
    ),
    DefaultRule("auth_failures", "Authentication failures", metric="auth_failure_rate", threshold=0.1),
    DefaultRule("acl_denied", "ACL denials", metric="acl_denied_rate", threshold=0.1),
    DefaultRule("messages_dropped", "Messages dropped", metric="messages_dropped_rate", aggregation="avg", threshold=1),
    DefaultRule(
        "rate_limit",
        "Message rate at the tier's limit",
        metric="messages_received_rate",
        operator=">=",
        threshold=100,
        threshold_unit=AlertRule.ThresholdUnit.PERCENT_OF_TIER_LIMIT,
        for_seconds=120,
    ),
    DefaultRule(
        "vpc_peering_abnormal",
        "VPC peering abnormal",
        metric="vpc_peering_abnormal",  # fed every minute and on every change by networking
        aggregation="last",
        threshold=0,
        severity="critical",
    ),
    DefaultRule(
        "rule_resource_down",
        "Rule-engine resource down",
        metric="rule_resource_down",
        threshold=0,
        for_seconds=120,
        severity="critical",
    ),
    DefaultRule("rule_failures", "Rule-engine failures", metric="rule_failed_rate", aggregation="avg", threshold=0),
    # Premium codec rules: a message that did not decode or encode (fed by the iot app; iot's migration 0002 gave
    # it to the Premium deployments that existed before it).
    DefaultRule(
        "codec_failures",
        "Rule-engine failures (codecs)",
        metric="codec_failures",
        aggregation="sum",
        threshold=0,
        plans=("premium",),
    ),
    # Fires while the broker is down and being restored (status `degraded`), or failed after it had run; resolves
    # when it runs again.
    DefaultRule(
        "deployment_unavailable",
        "Deployment unavailable",
        kind=AlertRule.Kind.DEPLOYMENT_UNAVAILABLE,
        threshold=0,
        severity="critical",
    ),
)
DEFAULT_KEYS: tuple[str, ...] = tuple(d.key for d in DEFAULT_RULES)


def keys_for(plan_code: str) -> tuple[str, ...]:
    """The defaults a deployment of this plan is given (DEFAULT_KEYS is every default, the record's vocabulary)."""
    return tuple(d.key for d in DEFAULT_RULES if not d.plans or plan_code in d.plans)


def _rows(deployment, keys) -> list[AlertRule]:
    return [
        AlertRule(
            organization_id=deployment.project.organization_id,
            project_id=deployment.project_id,
            deployment=deployment,
            name=d.name,
            kind=d.kind,
            metric=d.metric,
            aggregation=d.aggregation,
            window_seconds=d.window_seconds,
            operator=d.operator,
            threshold=d.threshold,
            threshold_unit=d.threshold_unit,
            for_seconds=d.for_seconds,
            severity=d.severity,
            repeat_interval_seconds=d.repeat_interval_seconds,
            default_key=d.key,
        )
        for d in DEFAULT_RULES
        if d.key in keys and (not d.plans or deployment.plan.code in d.plans)
    ]


@transaction.atomic
def create_default_rules(*, deployment) -> int:
    """Give a deployment the defaults it was never given; later calls (and rules the user since deleted) change
    nothing. Returns the number of rules created."""
    state, _ = CollectorState.objects.get_or_create(deployment=deployment)
    state = CollectorState.objects.select_for_update().get(pk=state.pk)
    given = set(state.default_rule_keys or [])
    missing = [key for key in DEFAULT_KEYS if key not in given]
    if not missing:
        return 0
    rows = _rows(deployment, missing)
    # The unique constraint (deployment, default_key) keeps a default once even if the record above was lost.
    AlertRule.objects.bulk_create(rows, ignore_conflicts=True)
    state.default_rule_keys = sorted(given | set(missing))
    state.save(update_fields=["default_rule_keys"])
    return len(rows)


def deployment_created(*, deployment) -> None:
    """The hook deployments calls inside deployment_create's transaction (registered in AlertsConfig.ready())."""
    create_default_rules(deployment=deployment)


def default_rules_ensure(*, deployment_ids: Sequence[int] | None = None) -> int:
    """Give every listed (or every) live deployment the defaults it lacks, set-based; returns how many deployments
    got some. The common case, nothing missing, is one query."""
    from deployments.models import Deployment, DesiredState

    qs = Deployment.objects.exclude(desired_state=DesiredState.DELETED).select_related("project", "plan")
    if deployment_ids is not None:
        qs = qs.filter(pk__in=deployment_ids)
    complete = CollectorState.objects.filter(default_rule_keys__contains=list(DEFAULT_KEYS))
    missing = list(qs.exclude(pk__in=complete.values("deployment_id")))
    if not missing:
        return 0
    with transaction.atomic():
        states = {
            s.deployment_id: s
            for s in CollectorState.objects.filter(deployment__in=missing).order_by("pk").select_for_update()
        }
        rows: list[AlertRule] = []
        new_states: list[CollectorState] = []
        for deployment in missing:
            state = states.get(deployment.pk)
            given = set(state.default_rule_keys if state else [])
            rows += _rows(deployment, [key for key in DEFAULT_KEYS if key not in given])
            if state is None:
                new_states.append(CollectorState(deployment=deployment, default_rule_keys=list(DEFAULT_KEYS)))
            else:
                state.default_rule_keys = sorted(given | set(DEFAULT_KEYS))
        AlertRule.objects.bulk_create(rows, ignore_conflicts=True, batch_size=5000)
        CollectorState.objects.bulk_create(new_states, ignore_conflicts=True, batch_size=5000)
        CollectorState.objects.bulk_update(list(states.values()), ["default_rule_keys"], batch_size=5000)
    return len(missing)
