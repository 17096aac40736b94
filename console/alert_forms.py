"""Forms of the alerting pages: alert rules (threshold and budget), silences, acknowledgements, notification channels.

They shape what a person types into what the API's input serializers take (the same checks, the same messages);
the services enforce the rest. A number is a number here, never a string passed on for someone else to refuse.
"""

from __future__ import annotations

import datetime as dt

from django import forms
from django.utils import timezone
from rest_framework import serializers

from alerts.api import AlertRuleCreateSerializer, AlertRuleUpdateSerializer
from alerts.metrics import METRICS, TIER_LIMIT_FIELDS
from alerts.models import AlertRule, Severity, Silence
from console.forms import ApiForm, ConsoleForm

MINUTE = 60
DURATIONS = [
    (0, "at once"),
    (60, "1 minute"),
    (120, "2 minutes"),
    (300, "5 minutes"),
    (600, "10 minutes"),
    (900, "15 minutes"),
    (1800, "30 minutes"),
    (3600, "1 hour"),
    (6 * 3600, "6 hours"),
    (86400, "24 hours"),
]
WINDOWS = [(seconds, label) for seconds, label in DURATIONS if seconds >= MINUTE and seconds <= 86400]
REPEATS = [(0, "never: once when it fires, once when it resolves")] + [
    (seconds, f"every {label}") for seconds, label in DURATIONS if seconds >= 300
]
ACKNOWLEDGE_FOR = [(3600, "1 hour"), (4 * 3600, "4 hours"), (86400, "24 hours"), (7 * 86400, "7 days")]
NUMBER_MESSAGE = "Enter a number, such as 80 or 2.5."


def _duration_choices(base, current: int | None):
    """The usual durations, plus the rule's own when it was set to something else (through the API)."""
    choices = list(base)
    if current is not None and current not in dict(choices):
        choices.append((current, f"{current} seconds"))
        choices.sort()
    return choices


def _choice(form: forms.Form, name: str) -> forms.ChoiceField:
    field = form.fields[name]
    assert isinstance(field, forms.ChoiceField), name
    return field


def metric_label(name: str) -> str:
    """ "connections", "messages received rate (messages/s)": the unit only where the name does not say it."""
    metric = METRICS[name]
    words = name.replace("_", " ")
    return words if metric.unit == words else f"{words} ({metric.unit})"


class ThresholdRuleForm(ApiForm):
    serializer_class: type[serializers.Serializer] | None = AlertRuleCreateSerializer

    name = forms.CharField(label="Name", max_length=100)
    deployment = forms.ChoiceField(label="Deployment", required=False)
    metric = forms.ChoiceField(label="Metric", choices=[(name, metric_label(name)) for name in METRICS])
    aggregation = forms.ChoiceField(label="Aggregation", choices=AlertRule.Aggregation.choices, initial="avg")
    window_seconds = forms.TypedChoiceField(label="Over a window of", coerce=int, choices=WINDOWS, initial=300)
    operator = forms.ChoiceField(label="Fires when the value is", choices=AlertRule.Operator.choices, initial=">")
    threshold = forms.FloatField(
        label="Threshold",
        widget=forms.TextInput(attrs={"inputmode": "decimal", "autocomplete": "off"}),
        error_messages={"invalid": NUMBER_MESSAGE, "required": "Enter the threshold, a number."},
    )
    threshold_unit = forms.ChoiceField(
        label="The threshold is",
        widget=forms.RadioSelect,
        choices=[
            ("absolute", "in the metric's unit"),
            ("percent_of_tier_limit", f"a percent of the tier's limit ({', '.join(TIER_LIMIT_FIELDS)})"),
        ],
        initial="absolute",
    )
    for_seconds = forms.TypedChoiceField(
        label="For at least", coerce=int, choices=DURATIONS, initial=0, help_text="How long it must hold to fire."
    )
    severity = forms.ChoiceField(label="Severity", choices=Severity.choices, initial="warning")
    channels = forms.MultipleChoiceField(
        label="Notify",
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="None ticked: the organization's default channels.",
    )
    repeat_interval_seconds = forms.TypedChoiceField(
        label="While it fires, notify again", coerce=int, choices=REPEATS, initial=3600
    )
    enabled = forms.BooleanField(label="Enabled", required=False, initial=True)

    def __init__(self, *args, deployments=(), channels=(), rule: AlertRule | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.rule = rule
        if "deployment" in self.fields:
            _choice(self, "deployment").choices = [("", "Every deployment of the project")] + [
                (d.public_id, d.name) for d in deployments
            ]
        _choice(self, "channels").choices = [(c.public_id, f"{c.name} ({c.get_type_display()})") for c in channels]
        current = rule or AlertRule()
        _choice(self, "window_seconds").choices = _duration_choices(WINDOWS, current.window_seconds if rule else None)
        _choice(self, "for_seconds").choices = _duration_choices(DURATIONS, current.for_seconds if rule else None)
        _choice(self, "repeat_interval_seconds").choices = _duration_choices(
            REPEATS, current.repeat_interval_seconds if rule else None
        )

    def serializer_data(self) -> dict:
        data = dict(self.cleaned_data)
        data["kind"] = AlertRule.Kind.METRIC
        data["deployment"] = data.get("deployment") or None
        data["repeat_interval_seconds"] = data.get("repeat_interval_seconds") or None
        data["channels"] = list(data.get("channels") or [])
        return data

    @classmethod
    def initial_from(cls, rule: AlertRule) -> dict:
        return {
            "name": rule.name,
            "deployment": rule.deployment.public_id if rule.deployment is not None else "",
            "metric": rule.metric,
            "aggregation": rule.aggregation,
            "window_seconds": rule.window_seconds,
            "operator": rule.operator,
            "threshold": rule.threshold,
            "threshold_unit": rule.threshold_unit,
            "for_seconds": rule.for_seconds,
            "severity": rule.severity,
            "channels": [c.public_id for c in rule.channels.all()],
            "repeat_interval_seconds": rule.repeat_interval_seconds or 0,
            "enabled": rule.enabled,
        }


class ThresholdRuleEditForm(ThresholdRuleForm):
    """A rule's deployment is fixed once created (the API's update takes none)."""

    serializer_class = AlertRuleUpdateSerializer

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        del self.fields["deployment"]

    def serializer_data(self) -> dict:
        data = super().serializer_data()
        data.pop("kind"), data.pop("deployment")
        return data


class BudgetRuleForm(ApiForm):
    serializer_class: type[serializers.Serializer] | None = AlertRuleCreateSerializer

    name = forms.CharField(label="Name", max_length=100, initial="Monthly budget")
    metric = forms.ChoiceField(
        label="Tell me when",
        widget=forms.RadioSelect,
        choices=[
            ("spend_month_to_date", "this month's spend so far passes the budget"),
            ("spend_forecast", "this month's forecast spend passes the budget"),
        ],
        initial="spend_month_to_date",
    )
    budget_amount = forms.CharField(
        label="Budget",
        max_length=40,
        widget=forms.TextInput(attrs={"inputmode": "decimal", "autocomplete": "off"}),
        help_text="Before tax and credits.",
    )
    budget_scope = forms.ChoiceField(
        label="Spend of",
        widget=forms.RadioSelect,
        choices=AlertRule.BudgetScope.choices,
        initial=AlertRule.BudgetScope.PROJECT,
    )
    severity = forms.ChoiceField(label="Severity", choices=Severity.choices, initial="warning")
    channels = forms.MultipleChoiceField(
        label="Notify",
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="None ticked: the organization's default channels.",
    )
    enabled = forms.BooleanField(label="Enabled", required=False, initial=True)

    def __init__(self, *args, channels=(), currency="USD", rule=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.rule = rule
        self.fields["budget_amount"].label = f"Budget ({currency})"
        self.fields["budget_amount"].help_text = f"In {currency}, such as 250.00; before tax and credits."
        self.fields["channels"].choices = [(c.public_id, f"{c.name} ({c.get_type_display()})") for c in channels]

    def clean_budget_amount(self):
        # People type "1,000" and " 250 ": the API takes a plain decimal string.
        return self.cleaned_data["budget_amount"].strip().replace(",", "")

    def serializer_data(self) -> dict:
        data = dict(self.cleaned_data)
        data.update(kind=AlertRule.Kind.BUDGET, operator=">=", repeat_interval_seconds=86400)
        data["channels"] = list(data.get("channels") or [])
        return data

    @classmethod
    def initial_from(cls, rule: AlertRule) -> dict:
        from billing.money import to_decimal

        return {
            "name": rule.name,
            "metric": rule.metric,
            "budget_amount": str(to_decimal(rule.budget_minor, rule.budget_currency)) if rule.budget_minor else "",
            "budget_scope": rule.budget_scope,
            "severity": rule.severity,
            "channels": [c.public_id for c in rule.channels.all()],
            "enabled": rule.enabled,
        }


class BudgetRuleEditForm(BudgetRuleForm):
    serializer_class = AlertRuleUpdateSerializer

    def serializer_data(self) -> dict:
        data = super().serializer_data()
        for field in ("kind", "operator", "repeat_interval_seconds"):
            data.pop(field)
        return data


class SilenceForm(ConsoleForm):
    starts_at = forms.DateTimeField(
        label="Starts",
        required=False,
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}),
        help_text="UTC. Empty: now.",
    )
    ends_at = forms.DateTimeField(
        label="Ends",
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}),
        help_text="UTC. A silence always ends.",
        error_messages={"required": "Enter when the silence ends."},
    )
    deployment = forms.ChoiceField(label="Deployment", required=False)
    rule = forms.ChoiceField(label="Rule", required=False)
    metric = forms.ChoiceField(
        label="Metric", required=False, choices=[("", "Any metric")] + [(n, metric_label(n)) for n in METRICS]
    )
    severity = forms.ChoiceField(label="Severity", required=False, choices=[("", "Any severity"), *Severity.choices])
    comment = forms.CharField(label="Comment", required=False, max_length=500)

    def __init__(self, *args, deployments=(), rules=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["deployment"].choices = [("", "Any deployment")] + [(d.public_id, d.name) for d in deployments]
        self.fields["rule"].choices = [("", "Any rule")] + [(r.public_id, r.name) for r in rules]

    def clean(self):
        cleaned = super().clean()
        starts, ends = cleaned.get("starts_at"), cleaned.get("ends_at")
        if ends is not None and ends <= (starts or timezone.now()):
            self.add_error("ends_at", "The silence must end after it starts.")
        return cleaned

    def matchers(self) -> dict:
        return {key: self.cleaned_data[key] for key in Silence.MATCHER_KEYS if self.cleaned_data.get(key)}


class AcknowledgeForm(ConsoleForm):
    comment = forms.CharField(
        label="Comment",
        max_length=500,
        error_messages={"required": "Say what you are doing about it: the comment is shown to everyone."},
    )
    duration = forms.TypedChoiceField(
        label="Withhold repeat notifications for", coerce=int, choices=ACKNOWLEDGE_FOR, initial=4 * 3600
    )

    def until(self) -> dt.datetime:
        return timezone.now() + dt.timedelta(seconds=self.cleaned_data["duration"])


class ChannelForm(ConsoleForm):
    """One form for the four kinds; only the chosen kind's fields are read."""

    TYPES = [("email", "Email"), ("webhook", "Webhook"), ("slack", "Slack"), ("pagerduty", "PagerDuty")]

    name = forms.CharField(label="Name", max_length=100)
    type = forms.ChoiceField(label="Kind", widget=forms.RadioSelect, choices=TYPES, initial="email")
    addresses = forms.CharField(
        label="Email addresses",
        required=False,
        widget=forms.Textarea(attrs={"rows": 2}),
        help_text="One per line or separated by commas; up to 20.",
    )
    webhook_url = forms.CharField(
        label="Webhook URL",
        required=False,
        max_length=2000,
        widget=forms.URLInput(attrs={"autocomplete": "off"}),
        help_text="HTTPS on a public address. Each request is signed with HMAC-SHA256 (the X-Signature header).",
    )
    headers = forms.CharField(
        label="Extra headers",
        required=False,
        widget=forms.Textarea(attrs={"rows": 2}),
        help_text="One per line, as Name: value. Their values are stored encrypted and never shown again.",
    )
    slack_url = forms.CharField(
        label="Slack incoming-webhook URL",
        required=False,
        max_length=2000,
        widget=forms.URLInput(attrs={"autocomplete": "off"}),
        help_text="https://hooks.slack.com/services/…",
    )
    routing_key = forms.CharField(
        label="PagerDuty routing key",
        required=False,
        max_length=64,
        widget=forms.PasswordInput(attrs={"autocomplete": "off"}),
        help_text="The Events API v2 integration key (32 characters). Stored encrypted.",
    )
    is_default = forms.BooleanField(label="Default channel: receives alerts of rules that name none", required=False)
    platform_events = forms.BooleanField(
        label="Also receives platform events (failed deployments, payment problems, maintenance)", required=False
    )

    def config(self) -> dict:
        kind = self.cleaned_data["type"]
        if kind == "email":
            raw = self.cleaned_data.get("addresses") or ""
            return {"addresses": [a.strip() for a in raw.replace(",", "\n").splitlines() if a.strip()]}
        if kind == "webhook":
            return {"url": self.cleaned_data.get("webhook_url") or "", "headers": self._headers()}
        if kind == "slack":
            return {"url": self.cleaned_data.get("slack_url") or ""}
        return {"routing_key": self.cleaned_data.get("routing_key") or ""}

    def _headers(self) -> dict:
        headers = {}
        for line in (self.cleaned_data.get("headers") or "").splitlines():
            if not line.strip():
                continue
            name, sep, value = line.partition(":")
            if not sep or not name.strip():
                self.add_error("headers", f"“{line.strip()}” is not Name: value.")
                continue
            headers[name.strip()] = value.strip()
        return headers

    def field_aliases(self) -> dict[str, str]:
        """Where the service's config errors go: beside the field of the chosen kind."""
        kind = self.cleaned_data.get("type")
        return {
            "config.addresses": "addresses",
            "config.url": "slack_url" if kind == "slack" else "webhook_url",
            "config.headers": "headers",
            "config.routing_key": "routing_key",
            "config": {"email": "addresses", "webhook": "webhook_url", "slack": "slack_url"}.get(
                str(kind), "routing_key"
            ),
        }
