"""REST API for monitoring and alerting: metric series, alert rules, alerts, silences.

Thin: strict input serializers, ScopedViewSet resolves the tenant and checks the scope, one service call, serialize.
Another organization's rule, alert or silence is a 404 like a missing one. Channels are notifications.api's.
"""

import datetime as dt

from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django_filters import rest_framework as filters
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiParameter,
    extend_schema,
    extend_schema_field,
    extend_schema_serializer,
)
from rest_framework import exceptions, mixins, serializers, status
from rest_framework.response import Response

from alerts import rules, selectors
from alerts.collection import ROLLUP_RETENTION, collect_interval_seconds
from alerts.metrics import BUDGET_METRICS, METRIC_NAMES, validate_metric_name
from alerts.models import Alert, AlertRule, Severity, Silence
from alerts.notify import budget_of
from billing.money import to_decimal
from controlplane.api.serializers import InputSerializer, PlainTextField, StrictCharField
from controlplane.api.views import ScopedViewSet
from controlplane.validators import whole_number
from deployments.models import Deployment
from deployments.selectors import deployment_queryset
from notifications.api import StrictBooleanField
from notifications.models import NotificationChannel
from organizations import access

METRICS_TAG = ["monitoring"]
ALERTS_TAG = ["alerts"]
CHANNELS_TAG = ["notification channels"]
MAX_SERIES_POINTS = selectors.MAX_POINTS


class StrictFloatField(serializers.FloatField):
    """A number, never a numeric string or a boolean."""

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, (int, float)):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictIntegerField(serializers.IntegerField):
    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid")
        return super().to_internal_value(data)


def _metric(value: str) -> str:
    try:
        return validate_metric_name(value)
    except ValueError as exc:
        raise serializers.ValidationError(str(exc)) from exc


# --- Metrics ------------------------------------------------------------------------------------------------------


class MetricSeriesValuesSerializer(serializers.Serializer):
    name = serializers.CharField()
    unit = serializers.CharField()
    kind = serializers.CharField()
    values = serializers.ListField(child=serializers.FloatField(allow_null=True))


class MetricsConditionSerializer(serializers.Serializer):
    type = serializers.CharField()
    status = serializers.BooleanField()
    reason = serializers.CharField()
    message = serializers.CharField()
    since = serializers.DateTimeField(allow_null=True)


@extend_schema_serializer(
    examples=[
        OpenApiExample(
            "Series",
            value={
                "deployment": "dep_7f3k2m9q4x8c1v5b6n0z",
                "from": "2026-11-01T09:00:00Z",
                "to": "2026-11-01T09:03:00Z",
                "step": 60,
                "source": "raw",
                "timestamps": ["2026-11-01T09:00:00Z", "2026-11-01T09:01:00Z", "2026-11-01T09:02:00Z"],
                "series": [{"name": "connections", "unit": "connections", "kind": "gauge", "values": [3.0, None, 5.0]}],
                "conditions": [],
            },
            response_only=True,
        )
    ]
)
class MetricSeriesResponseSerializer(serializers.Serializer):
    deployment = serializers.CharField()
    step = serializers.IntegerField()
    source = serializers.ChoiceField(choices=["raw", "rollup"])
    timestamps = serializers.ListField(child=serializers.DateTimeField())
    series = MetricSeriesValuesSerializer(many=True)
    conditions = MetricsConditionSerializer(many=True)

    def get_fields(self):
        # `from` and `to` (Python keywords, so declared here) are the result's start and end; the schema names them
        # as the answer does.
        declared = super().get_fields()
        fields = {"deployment": declared.pop("deployment")}
        fields["from"] = serializers.DateTimeField(source="start")
        fields["to"] = serializers.DateTimeField(source="end")
        fields.update(declared)
        return fields


class CurrentMetricSerializer(serializers.Serializer):
    name = serializers.CharField()
    unit = serializers.CharField()
    value = serializers.FloatField(allow_null=True)
    at = serializers.DateTimeField(allow_null=True)
    limit = serializers.IntegerField(allow_null=True, help_text="The tier's limit for this metric, if it has one.")
    percent_of_limit = serializers.FloatField(allow_null=True)


@extend_schema_serializer(
    examples=[
        OpenApiExample(
            "Current",
            value={
                "metrics": [
                    {
                        "name": "connections",
                        "unit": "connections",
                        "value": 812.0,
                        "at": "2026-11-01T09:02:00Z",
                        "limit": 1000,
                        "percent_of_limit": 81.2,
                    }
                ],
                "conditions": [],
            },
            response_only=True,
        )
    ]
)
class CurrentMetricsSerializer(serializers.Serializer):
    metrics = CurrentMetricSerializer(many=True)
    conditions = MetricsConditionSerializer(many=True)


def _parse_time(name: str, raw: str | None, default: dt.datetime) -> dt.datetime:
    if raw in (None, ""):
        return default
    value = None
    try:
        value = parse_datetime(raw)
    except ValueError:
        pass
    if value is None:
        try:
            value = dt.datetime.fromtimestamp(float(raw), tz=dt.UTC)
        except (ValueError, OverflowError):
            raise exceptions.ValidationError({name: ["Expected an ISO 8601 time or unix seconds."]}) from None
    if timezone.is_naive(value):
        value = timezone.make_aware(value, dt.UTC)
    return value


class DeploymentMetricsViewSet(ScopedViewSet):
    queryset = Deployment.objects.none()  # read through the deployment in the URL
    tenant_field = "project"
    scope_level = "project"
    required_scopes = {"series": "deployment:read", "current": "deployment:read"}

    def _deployment(self) -> Deployment:
        found = deployment_queryset().filter(project=self.project, public_id=self.kwargs["dep"]).first()
        if found is None:
            raise exceptions.NotFound("No such deployment.")
        return found

    @extend_schema(
        summary="Metric series of a deployment, aligned to a step",
        tags=METRICS_TAG,
        parameters=[
            OpenApiParameter(
                "names",
                OpenApiTypes.STR,
                OpenApiParameter.QUERY,
                description=f"Comma-separated metric names (default all): {', '.join(METRIC_NAMES)}.",
            ),
            OpenApiParameter(
                "from",
                OpenApiTypes.DATETIME,
                OpenApiParameter.QUERY,
                description="Start (ISO 8601 or unix seconds); default one hour ago.",
            ),
            OpenApiParameter("to", OpenApiTypes.DATETIME, OpenApiParameter.QUERY, description="End; default now."),
            OpenApiParameter(
                "step",
                OpenApiTypes.INT,
                OpenApiParameter.QUERY,
                description=f"Seconds per point, at least the collection interval; at most "
                f"{MAX_SERIES_POINTS} points. Default 60.",
            ),
        ],
        responses={200: MetricSeriesResponseSerializer},
    )
    def series(self, request, *args, **kwargs):
        deployment = self._deployment()
        params = request.query_params
        raw_names = [n.strip() for n in params.get("names", "").split(",") if n.strip()] or list(METRIC_NAMES)
        names, errors = [], []
        for name in raw_names:
            try:
                canonical = validate_metric_name(name)
            except ValueError as exc:
                errors.append(str(exc))
                continue
            if canonical not in names:
                names.append(canonical)
        if errors:
            raise exceptions.ValidationError({"names": errors})
        now = timezone.now()
        end = _parse_time("to", params.get("to"), now)
        start = _parse_time("from", params.get("from"), end - dt.timedelta(hours=1))
        raw_step = params.get("step", str(collect_interval_seconds()))
        step = whole_number(raw_step)
        if step is None:
            raise exceptions.ValidationError({"step": ["Expected a whole number of seconds."]})
        if step < collect_interval_seconds():
            raise exceptions.ValidationError(
                {"step": [f"The step must be at least the collection interval ({collect_interval_seconds()} s)."]}
            )
        if end <= start:
            raise exceptions.ValidationError({"to": ["`to` must be after `from`."]})
        if (end - start).total_seconds() / step > MAX_SERIES_POINTS:
            raise exceptions.ValidationError(
                {"step": [f"At most {MAX_SERIES_POINTS} points per series: use a larger step or a shorter range."]}
            )
        if start < now - ROLLUP_RETENTION:
            raise exceptions.ValidationError({"from": ["Metrics are kept for 30 days."]})
        result = selectors.metric_series(deployment=deployment, names=names, start=start, end=end, step=step, now=now)
        data = {
            "deployment": deployment.public_id,
            "start": result.start,
            "end": result.end,
            "step": result.step,
            "source": result.source,
            "timestamps": result.timestamps,
            "series": [vars(s) for s in result.series],
            "conditions": result.conditions,
        }
        return Response(MetricSeriesResponseSerializer(data).data)

    @extend_schema(
        summary="Current metric values against the tier's limits",
        tags=METRICS_TAG,
        responses={200: CurrentMetricsSerializer},
    )
    def current(self, request, *args, **kwargs):
        return Response(CurrentMetricsSerializer(selectors.current_metrics(deployment=self._deployment())).data)


# --- Alert rules --------------------------------------------------------------------------------------------------

_RULE_EXAMPLE = {
    "id": "rule_7f3k2m9q4x8c1v5b6n0z",
    "name": "Connections above 80% of the tier's limit",
    "kind": "metric",
    "deployment": "dep_7f3k2m9q4x8c1v5b6n0z",
    "metric": "connections",
    "aggregation": "max",
    "window_seconds": 300,
    "operator": ">",
    "threshold": 80.0,
    "threshold_unit": "percent_of_tier_limit",
    "for_seconds": 300,
    "severity": "warning",
    "enabled": True,
    "repeat_interval_seconds": 3600,
    "channels": [],
    "default_key": "connections_high",
    "budget_scope": None,
    "budget_amount": None,
    "budget_currency": None,
    "created_at": "2026-11-01T09:30:00Z",
    "updated_at": "2026-11-01T09:30:00Z",
}
_BUDGET_RULE_EXAMPLE = {
    **_RULE_EXAMPLE,
    "id": "rule_2b8d4f6h1j3k5m7n9p0q",
    "name": "Budget",
    "kind": "budget",
    "deployment": None,
    "metric": "spend_month_to_date",
    "aggregation": "avg",
    "operator": ">=",
    "threshold": 250.0,
    "threshold_unit": "absolute",
    "for_seconds": 0,
    "repeat_interval_seconds": 86400,
    "default_key": "",
    "budget_scope": "project",
    "budget_amount": "250.00",
    "budget_currency": "USD",
}

_BUDGET_SCOPE_HELP = (
    "Budget rules only: whose spend is watched. `project` (the default): the spend of this project's deployments; "
    "`organization`: the whole organization's spend, every project included. Null for other kinds."
)
_BUDGET_AMOUNT_HELP = (
    'Budget rules only: the budget as a decimal string in the billing account\'s currency, such as "250.00", with '
    "at most the currency's minor-unit digits (2 for USD and EUR, 0 for JPY); never a JSON number. Stored exactly."
)
_BUDGET_METRIC_NAMES = ", ".join(BUDGET_METRICS)


@extend_schema_serializer(
    examples=[
        OpenApiExample("Alert rule", value=_RULE_EXAMPLE, response_only=True),
        OpenApiExample("Budget rule", value=_BUDGET_RULE_EXAMPLE, response_only=True),
    ]
)
class AlertRuleSerializer(serializers.ModelSerializer):
    id = serializers.CharField(source="public_id", read_only=True)
    deployment = serializers.SlugRelatedField(slug_field="public_id", read_only=True, allow_null=True)
    channels = serializers.SlugRelatedField(slug_field="public_id", many=True, read_only=True)
    threshold = serializers.FloatField(
        read_only=True,
        help_text=(
            "The threshold in the metric's unit; for a budget rule the budget in major units, for display only "
            "(`budget_amount` is the exact amount)."
        ),
    )
    budget_scope = serializers.SerializerMethodField(help_text=_BUDGET_SCOPE_HELP)
    budget_amount = serializers.SerializerMethodField(help_text="Budget rules only: the budget, a decimal string.")
    budget_currency = serializers.SerializerMethodField(help_text="Budget rules only: ISO 4217 code of the budget.")

    class Meta:
        model = AlertRule
        fields = [
            "id",
            "name",
            "kind",
            "deployment",
            "metric",
            "aggregation",
            "window_seconds",
            "operator",
            "threshold",
            "threshold_unit",
            "for_seconds",
            "severity",
            "enabled",
            "repeat_interval_seconds",
            "channels",
            "default_key",
            "budget_scope",
            "budget_amount",
            "budget_currency",
            "created_at",
            "updated_at",
        ]

    @extend_schema_field(serializers.ChoiceField(choices=AlertRule.BudgetScope.choices, allow_null=True))
    def get_budget_scope(self, obj):
        return obj.budget_scope or None

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_budget_amount(self, obj):
        return None if obj.budget_minor is None else str(to_decimal(obj.budget_minor, obj.budget_currency))

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_budget_currency(self, obj):
        return obj.budget_currency or None


@extend_schema_serializer(
    examples=[
        OpenApiExample(
            "Budget rule",
            request_only=True,
            value={
                "name": "Budget",
                "kind": "budget",
                "metric": "spend_month_to_date",
                "operator": ">=",
                "budget_amount": "250.00",
                "budget_scope": "project",
                "repeat_interval_seconds": 86400,
            },
        )
    ]
)
class AlertRuleCreateSerializer(InputSerializer):
    name = PlainTextField(max_length=100)
    deployment = StrictCharField(
        required=False,
        allow_null=True,
        default=None,
        help_text="A deployment of this project (`dep_…`); omitted: every deployment. A budget rule names none.",
    )
    kind = serializers.ChoiceField(choices=AlertRule.Kind.choices, default=AlertRule.Kind.METRIC)
    metric = StrictCharField(
        required=False,
        default="",
        allow_blank=True,
        help_text=f"One of {', '.join(METRIC_NAMES)}; for a budget rule one of {_BUDGET_METRIC_NAMES}.",
    )
    aggregation = serializers.ChoiceField(choices=AlertRule.Aggregation.choices, default="avg")
    window_seconds = StrictIntegerField(min_value=1, max_value=2**31 - 1, default=300)
    operator = serializers.ChoiceField(
        choices=AlertRule.Operator.choices, default=">", help_text="A budget rule takes `>` or `>=`."
    )
    threshold = StrictFloatField(
        required=False,
        allow_null=True,
        default=None,
        help_text="Required, except for a budget rule (which takes `budget_amount`).",
    )
    threshold_unit = serializers.ChoiceField(choices=AlertRule.ThresholdUnit.choices, default="absolute")
    for_seconds = StrictIntegerField(min_value=0, max_value=2**31 - 1, default=0)
    severity = serializers.ChoiceField(choices=Severity.choices, default="warning")
    enabled = StrictBooleanField(default=True)
    repeat_interval_seconds = StrictIntegerField(min_value=1, max_value=2**31 - 1, allow_null=True, default=3600)
    channels = serializers.ListField(child=StrictCharField(), required=False, default=list, max_length=20)
    budget_scope = serializers.ChoiceField(
        choices=AlertRule.BudgetScope.choices,
        required=False,
        allow_null=True,
        default=None,
        help_text=_BUDGET_SCOPE_HELP,
    )
    budget_amount = StrictCharField(
        required=False, allow_null=True, default=None, max_length=40, help_text=_BUDGET_AMOUNT_HELP
    )

    def validate(self, attrs):
        errors: dict[str, list[str]] = {}
        metric = attrs.get("metric") or ""
        if attrs.get("kind") == AlertRule.Kind.BUDGET:
            if metric not in BUDGET_METRICS:
                errors["metric"] = [f"A budget rule watches one of: {_BUDGET_METRIC_NAMES}."]
            if attrs.get("deployment"):
                errors["deployment"] = [
                    "A budget rule watches the spend of the project or the organization "
                    "(budget_scope), never one deployment."
                ]
            if attrs.get("budget_amount") is None:
                errors["budget_amount"] = ['A budget rule needs its amount, a decimal string such as "250.00".']
            if attrs.get("threshold") is not None:
                errors["threshold"] = ["A budget rule is set with budget_amount, not a threshold."]
        else:
            if metric:
                try:
                    attrs["metric"] = validate_metric_name(metric)
                except ValueError as exc:
                    errors["metric"] = [str(exc)]
            if attrs.get("threshold") is None:
                errors["threshold"] = ["This field is required."]
            for field in ("budget_amount", "budget_scope"):
                if attrs.get(field) is not None:
                    errors[field] = ["Only a budget rule (kind budget) has this field."]
        if errors:
            raise serializers.ValidationError(errors)
        return attrs


class AlertRuleUpdateSerializer(InputSerializer):
    name = PlainTextField(max_length=100, required=False)
    metric = StrictCharField(required=False)
    aggregation = serializers.ChoiceField(choices=AlertRule.Aggregation.choices, required=False)
    window_seconds = StrictIntegerField(min_value=1, max_value=2**31 - 1, required=False)
    operator = serializers.ChoiceField(choices=AlertRule.Operator.choices, required=False)
    threshold = StrictFloatField(required=False)
    threshold_unit = serializers.ChoiceField(choices=AlertRule.ThresholdUnit.choices, required=False)
    for_seconds = StrictIntegerField(min_value=0, max_value=2**31 - 1, required=False)
    severity = serializers.ChoiceField(choices=Severity.choices, required=False)
    enabled = StrictBooleanField(required=False)
    repeat_interval_seconds = StrictIntegerField(min_value=1, max_value=2**31 - 1, allow_null=True, required=False)
    channels = serializers.ListField(child=StrictCharField(), required=False, max_length=20)
    budget_scope = serializers.ChoiceField(
        choices=AlertRule.BudgetScope.choices, required=False, help_text=_BUDGET_SCOPE_HELP
    )
    budget_amount = StrictCharField(required=False, max_length=40, help_text=_BUDGET_AMOUNT_HELP)

    def validate_metric(self, value):
        # Whether a budget name suits this rule's kind is the service's to say (it knows the kind).
        return value if value in BUDGET_METRICS else _metric(value)


def _channels_of(organization, ids: list[str]) -> list[NotificationChannel]:
    found = {c.public_id: c for c in NotificationChannel.objects.filter(organization=organization, public_id__in=ids)}
    missing = [i for i in ids if i not in found]
    if missing:
        raise exceptions.ValidationError({"channels": [f"No such notification channel: {', '.join(missing)}."]})
    return [found[i] for i in dict.fromkeys(ids)]


class AlertRuleViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, ScopedViewSet):
    queryset = AlertRule.objects.select_related("deployment").prefetch_related("channels")
    tenant_field = "project"
    scope_level = "project"
    lookup_url_kwarg = "rule"
    serializer_class = AlertRuleSerializer
    required_scopes = {
        "list": "alert:read",
        "retrieve": "alert:read",
        "create": "deployment:configure",
        "partial_update": "deployment:configure",
        "destroy": "deployment:configure",
    }

    def _deployment(self, public_id: str, field: str) -> Deployment:
        found = Deployment.objects.filter(project=self.project, public_id=public_id).first()
        if found is None:
            raise exceptions.ValidationError({field: ["No such deployment in this project."]})
        return found

    def narrow_queryset(self, queryset):
        if self.action == "list" and self.request.query_params.get("deployment"):
            return queryset.filter(deployment__public_id=self.request.query_params["deployment"])
        return queryset

    def _check_channel_scope(self, ids: list[str], current: set[str] | None = None):
        # Routing a rule to channels reads the organization's channels: without channel:read (a Project User) a rule
        # keeps the default routing. Checked before the ids are looked up, so an unknown id reveals nothing either.
        if set(ids) != (current or set()) and not access.has_scope(
            self.principal, "channel:read", organization=self.organization
        ):
            raise exceptions.PermissionDenied(
                "Routing a rule to notification channels needs the channel:read scope, which your role does not grant."
            )

    def _check_budget_scope(self):
        # A budget alert tells spend: setting one is for those who may read the organization's billing.
        if not access.has_scope(self.principal, "billing:read", organization=self.organization):
            raise exceptions.PermissionDenied(
                "A budget rule reveals spend: it also needs the billing:read scope, which your role does not grant."
            )

    @extend_schema(
        summary="List the project's alert rules, including those of its deployments",
        tags=ALERTS_TAG,
        parameters=[
            OpenApiParameter(
                "deployment",
                OpenApiTypes.STR,
                OpenApiParameter.QUERY,
                description="Only the rules scoped to this deployment (`dep_…`).",
            )
        ],
    )
    def list(self, request, *args, **kwargs):
        if request.query_params.get("deployment"):
            self._deployment(request.query_params["deployment"], "deployment")
        return super().list(request, *args, **kwargs)

    @extend_schema(summary="Describe an alert rule", tags=ALERTS_TAG)
    def retrieve(self, request, *args, **kwargs):
        return super().retrieve(request, *args, **kwargs)

    @extend_schema(
        summary="Create an alert rule for the project or one of its deployments",
        tags=ALERTS_TAG,
        request=AlertRuleCreateSerializer,
        responses={201: AlertRuleSerializer},
    )
    def create(self, request, *args, **kwargs):
        data = AlertRuleCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        fields = dict(data.validated_data)
        if fields["kind"] == AlertRule.Kind.BUDGET:
            self._check_budget_scope()
        else:
            # Only budget rules have these; the input serializer has refused them for any other kind.
            fields.pop("budget_scope"), fields.pop("budget_amount")
        deployment_id = fields.pop("deployment")
        deployment = self._deployment(deployment_id, "deployment") if deployment_id else None
        self._check_channel_scope(fields["channels"])
        channels = _channels_of(self.organization, fields.pop("channels"))
        rule = rules.alert_rule_create(
            project=self.project, actor=self.principal, deployment=deployment, channels=channels, **fields
        )
        return Response(AlertRuleSerializer(rule).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        summary="Change or disable an alert rule",
        tags=ALERTS_TAG,
        request=AlertRuleUpdateSerializer,
        responses={200: AlertRuleSerializer},
    )
    def partial_update(self, request, *args, **kwargs):
        data = AlertRuleUpdateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        fields = dict(data.validated_data)
        rule = self.get_object()
        if rule.kind == AlertRule.Kind.BUDGET:
            self._check_budget_scope()
        channels = fields.pop("channels", None)
        if channels is not None:
            self._check_channel_scope(channels, current={c.public_id for c in rule.channels.all()})
            channels = _channels_of(self.organization, channels)
        rule = rules.alert_rule_update(rule=rule, actor=self.principal, channels=channels, **fields)
        return Response(AlertRuleSerializer(rule).data)

    @extend_schema(summary="Delete an alert rule and its alerts", tags=ALERTS_TAG)
    def destroy(self, request, *args, **kwargs):
        rule = self.get_object()
        if rule.kind == AlertRule.Kind.BUDGET:
            self._check_budget_scope()  # as creating and changing one: deleting a budget is billing's say too
        rules.alert_rule_delete(rule=rule, actor=self.principal)
        return Response(status=status.HTTP_204_NO_CONTENT)


# --- Alerts -------------------------------------------------------------------------------------------------------

_ALERT_EXAMPLE = {
    "id": "alt_7f3k2m9q4x8c1v5b6n0z",
    "status": "firing",
    "severity": "warning",
    "rule": {
        "id": "rule_7f3k2m9q4x8c1v5b6n0z",
        "name": "Too many connections",
        "metric": "connections",
        "kind": "metric",
    },
    "project": "prj_7f3k2m9q4x8c1v5b6n0z",
    "deployment": "dep_7f3k2m9q4x8c1v5b6n0z",
    "subject": {"type": "deployment", "id": "dep_7f3k2m9q4x8c1v5b6n0z"},
    "budget": None,
    "since": "2026-11-01T09:31:00Z",
    "fired_at": "2026-11-01T09:31:00Z",
    "resolved_at": None,
    "value": 3.0,
    "threshold": 2.0,
    "summary": "Too many connections: connections = 3 (threshold > 2) on dep_7f3k2m9q4x8c1v5b6n0z",
    "last_notified_at": "2026-11-01T09:31:00Z",
    "acknowledged_until": None,
    "acknowledged_by": None,
    "acknowledgement_comment": "",
    "created_at": "2026-11-01T09:31:00Z",
}
_BUDGET_ALERT_EXAMPLE = {
    **_ALERT_EXAMPLE,
    "id": "alt_2b8d4f6h1j3k5m7n9p0q",
    "rule": {"id": "rule_2b8d4f6h1j3k5m7n9p0q", "name": "Budget", "metric": "spend_month_to_date", "kind": "budget"},
    "deployment": None,
    "subject": {"type": "project", "id": "prj_7f3k2m9q4x8c1v5b6n0z"},
    "budget": {
        "metric": "spend_month_to_date",
        "scope": "project",
        "currency": "USD",
        "spend": "312.40",
        "budget": "250.00",
    },
    "value": None,
    "threshold": None,
    "summary": "Budget: month-to-date spend 312.40 USD >= 250.00 USD on project Default",
}


class AlertRuleRefSerializer(serializers.Serializer):
    id = serializers.CharField(source="public_id")
    name = serializers.CharField()
    metric = serializers.CharField()
    kind = serializers.CharField()


class AlertSubjectSerializer(serializers.Serializer):
    # A plain string, not an enum: a second enum of fields named `type` would rename the channels' TypeEnum.
    type = serializers.CharField(help_text="`deployment`, `project` or `organization`.")
    id = serializers.CharField(help_text="Public id of the deployment, project or organization.")


class AlertBudgetSerializer(serializers.Serializer):
    metric = serializers.CharField()
    scope = serializers.CharField()
    currency = serializers.CharField()
    spend = serializers.CharField(help_text="The spend last compared, a decimal string in major units.")
    budget = serializers.CharField(help_text="The budget it was compared with, a decimal string in major units.")


@extend_schema_serializer(
    examples=[
        OpenApiExample("Alert", value=_ALERT_EXAMPLE, response_only=True),
        OpenApiExample("Budget alert", value=_BUDGET_ALERT_EXAMPLE, response_only=True),
    ]
)
class AlertSerializer(serializers.ModelSerializer):
    id = serializers.CharField(source="public_id", read_only=True)
    rule = AlertRuleRefSerializer(read_only=True)
    project = serializers.CharField(source="project.public_id", read_only=True)
    deployment = serializers.CharField(
        source="deployment.public_id",
        read_only=True,
        allow_null=True,
        default=None,
        help_text="Null for a budget alert: see `subject`.",
    )
    subject = serializers.SerializerMethodField(
        help_text=("What the alert is about: a deployment, or for a budget alert the project or the organization.")
    )
    budget = serializers.SerializerMethodField(help_text="Budget alerts only: the spend and the budget compared.")
    acknowledged_by = serializers.EmailField(
        source="acknowledged_by.email", read_only=True, allow_null=True, default=None
    )

    class Meta:
        model = Alert
        fields = [
            "id",
            "status",
            "severity",
            "rule",
            "project",
            "deployment",
            "subject",
            "budget",
            "since",
            "fired_at",
            "resolved_at",
            "value",
            "threshold",
            "summary",
            "last_notified_at",
            "acknowledged_until",
            "acknowledged_by",
            "acknowledgement_comment",
            "created_at",
        ]

    @extend_schema_field(AlertSubjectSerializer)
    def get_subject(self, obj):
        if obj.deployment_id is not None:
            return {"type": "deployment", "id": obj.deployment.public_id}
        if obj.rule.budget_scope == AlertRule.BudgetScope.ORGANIZATION:
            return {"type": "organization", "id": obj.organization.public_id}
        return {"type": "project", "id": obj.project.public_id}

    @extend_schema_field(AlertBudgetSerializer(allow_null=True))
    def get_budget(self, obj):
        return budget_of(obj, obj.rule)


class AlertEventSerializer(serializers.Serializer):
    kind = serializers.CharField()
    value = serializers.FloatField(allow_null=True)
    message = serializers.CharField()
    at = serializers.DateTimeField(source="created_at")


@extend_schema_serializer(
    examples=[
        OpenApiExample(
            "Alert with history",
            value={
                **_ALERT_EXAMPLE,
                "events": [
                    {"kind": "firing", "value": 3.0, "message": "condition met", "at": "2026-11-01T09:31:00Z"},
                    {"kind": "notified", "value": 3.0, "message": "fire notification", "at": "2026-11-01T09:31:00Z"},
                ],
            },
            response_only=True,
        )
    ]
)
class AlertDetailSerializer(AlertSerializer):
    events = serializers.SerializerMethodField()

    class Meta(AlertSerializer.Meta):
        fields = [*AlertSerializer.Meta.fields, "events"]

    @extend_schema_field(AlertEventSerializer(many=True))
    def get_events(self, obj):
        return AlertEventSerializer(selectors.alert_events(alert=obj), many=True).data


class AlertAcknowledgeSerializer(InputSerializer):
    until = serializers.DateTimeField(help_text="Repeat notifications are withheld until then.")
    comment = StrictCharField(max_length=500, required=False, default="", allow_blank=True)


class AlertFilter(filters.FilterSet):
    status = filters.ChoiceFilter(choices=Alert._meta.get_field("status").choices)
    severity = filters.ChoiceFilter(choices=Severity.choices)
    project = filters.CharFilter(field_name="project__public_id")
    deployment = filters.CharFilter(field_name="deployment__public_id")
    rule = filters.CharFilter(field_name="rule__public_id")

    class Meta:
        model = Alert
        fields = ["status", "severity", "project", "deployment", "rule"]


class AlertViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, ScopedViewSet):
    queryset = Alert.objects.select_related("rule", "organization", "project", "deployment", "acknowledged_by")
    lookup_url_kwarg = "alert"
    serializer_class = AlertSerializer
    filterset_class = AlertFilter
    # Organization-wide view: the scopes are checked at organization level (members with only project roles read
    # their alerts through the project's rules and deployments instead).
    required_scopes = {"list": "alert:read", "retrieve": "alert:read", "acknowledge": "deployment:configure"}

    @extend_schema(summary="List the organization's alerts", tags=ALERTS_TAG)
    def list(self, request, *args, **kwargs):
        return super().list(request, *args, **kwargs)

    @extend_schema(summary="Describe an alert and its history", tags=ALERTS_TAG, responses={200: AlertDetailSerializer})
    def retrieve(self, request, *args, **kwargs):
        return Response(AlertDetailSerializer(self.get_object()).data)

    @extend_schema(
        summary="Acknowledge a firing alert until a time, with a comment",
        tags=ALERTS_TAG,
        request=AlertAcknowledgeSerializer,
        responses={200: AlertDetailSerializer},
    )
    def acknowledge(self, request, *args, **kwargs):
        alert = self.get_object()
        data = AlertAcknowledgeSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        alert = rules.alert_acknowledge(alert=alert, actor=self.principal, **data.validated_data)
        return Response(
            AlertDetailSerializer(selectors.alert_list(organization=self.organization).get(pk=alert.pk)).data
        )


# --- Silences -----------------------------------------------------------------------------------------------------


@extend_schema_serializer(
    examples=[
        OpenApiExample(
            "Silence",
            value={
                "id": "sil_7f3k2m9q4x8c1v5b6n0z",
                "matchers": {"deployment": "dep_7f3k2m9q4x8c1v5b6n0z"},
                "starts_at": "2026-11-01T09:00:00Z",
                "ends_at": "2026-11-01T11:00:00Z",
                "comment": "load test",
                "active": True,
                "created_by": "ada@example.com",
                "created_at": "2026-11-01T08:59:00Z",
            },
            response_only=True,
        )
    ]
)
class SilenceSerializer(serializers.ModelSerializer):
    id = serializers.CharField(source="public_id", read_only=True)
    matchers = serializers.DictField(child=serializers.CharField())
    active = serializers.SerializerMethodField()
    created_by = serializers.EmailField(source="created_by.email", read_only=True, allow_null=True, default=None)

    class Meta:
        model = Silence
        fields = ["id", "matchers", "starts_at", "ends_at", "comment", "active", "created_by", "created_at"]

    def get_active(self, obj) -> bool:
        return obj.starts_at <= timezone.now() < obj.ends_at


class SilenceCreateSerializer(InputSerializer):
    matchers = serializers.DictField(
        child=StrictCharField(),
        required=False,
        default=dict,
        help_text="Any of deployment, rule, metric, severity; all must match.",
    )
    starts_at = serializers.DateTimeField(required=False, allow_null=True, default=None)
    ends_at = serializers.DateTimeField(help_text="Required: a silence always ends.")
    comment = StrictCharField(max_length=500, required=False, default="", allow_blank=True)


class SilenceViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, ScopedViewSet):
    queryset = Silence.objects.select_related("created_by")
    tenant_field = "project"
    scope_level = "project"
    lookup_url_kwarg = "silence"
    serializer_class = SilenceSerializer
    required_scopes = {
        "list": "alert:read",
        "retrieve": "alert:read",
        "create": "deployment:configure",
        "destroy": "deployment:configure",
    }

    @extend_schema(summary="List the project's silences", tags=ALERTS_TAG)
    def list(self, request, *args, **kwargs):
        return super().list(request, *args, **kwargs)

    @extend_schema(summary="Describe a silence", tags=ALERTS_TAG)
    def retrieve(self, request, *args, **kwargs):
        return super().retrieve(request, *args, **kwargs)

    @extend_schema(
        summary="Silence matching alerts for a time window",
        tags=ALERTS_TAG,
        request=SilenceCreateSerializer,
        responses={201: SilenceSerializer},
    )
    def create(self, request, *args, **kwargs):
        data = SilenceCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        silence = rules.silence_create(project=self.project, actor=self.principal, **data.validated_data)
        return Response(SilenceSerializer(silence).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        summary="End a silence now (it stays listed as history)", tags=ALERTS_TAG, responses={200: SilenceSerializer}
    )
    def destroy(self, request, *args, **kwargs):
        silence = rules.silence_expire(silence=self.get_object(), actor=self.principal)
        return Response(SilenceSerializer(silence).data)
