"""A percent threshold so large that limit * threshold overflows a float8 stopped every rule's evaluation."""

import datetime as dt

import pytest
from django.utils import timezone

from alerts import collection, evaluate, rules
from alerts.models import Alert, AlertRule
from controlplane.errors import ValidationFailed
from tests.alerts.test_tasks import make_deployment, rule_for


def test_huge_percent_threshold_is_refused_naming_threshold_and_evaluation_goes_on(owner_org):
    deployment = make_deployment(owner_org.default_project)  # 1k tier: a connections limit of 1000
    with pytest.raises(ValidationFailed) as refused:
        rule_for(deployment, name="Huge", operator="<", threshold=1e307, threshold_unit="percent_of_tier_limit")
    assert "threshold" in refused.value.message_dict()
    # The same through an update: an absolute threshold of 1e307 made a percent one.
    huge = rule_for(deployment, name="Huge", operator="<", threshold=1e307)
    with pytest.raises(ValidationFailed) as refused:
        rules.alert_rule_update(rule=huge, actor=None, threshold_unit="percent_of_tier_limit")
    assert "threshold" in refused.value.message_dict()
    assert AlertRule.objects.get(pk=huge.pk).threshold_unit == "absolute"
    other = rule_for(deployment, name="Too many connections")
    t0 = timezone.now()
    collection.samples_store(rows=[(deployment.pk, "connections", t0, 5.0)])
    evaluate.rules_evaluate(now=t0 + dt.timedelta(seconds=1), deployment_ids=[deployment.pk])
    assert Alert.objects.filter(rule=other, status="firing").exists()


def test_percent_threshold_of_a_million_percent_is_still_accepted(owner_org):
    deployment = make_deployment(owner_org.default_project)
    rule = rule_for(deployment, operator="<", threshold=1_000_000, threshold_unit="percent_of_tier_limit")
    assert rule.threshold == 1_000_000
