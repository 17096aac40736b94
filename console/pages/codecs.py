"""The Premium deployment's Schemas and Codec rules tabs: schemas and their versions (a version's source to read, a
new version refused with the compiler's or the compatibility check's words beside the source), codec rules (create,
edit, enable/disable, delete after a confirmation, with their error topic and failure counts), and try-it forms.

Every write and every decode goes through iot.codecs, the API's services, after the API's input serializer and the
scope check the API's viewsets make (device:read, device:write). Nothing here compiles a schema or judges a rule.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import json
from typing import Any

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db.models import Sum
from django.http import Http404
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from alerts.models import MetricSample
from console import errors, tenancy
from console.forms import ApiForm, ConsoleForm
from console.once import once
from console.once import posted as _posted
from controlplane.api.serializers import InputSerializer
from deployments.models import DesiredState, Plan
from iot import codecs, schemas
from iot import services as iot_services
from iot.codec_api import (
    MAX_VERSION,
    CodecRuleCreateSerializer,
    CodecRuleUpdateSerializer,
    SchemaCreateSerializer,
    SchemaVersionCreateSerializer,
)
from iot.codec_models import CodecCounter, CodecRule, Schema, SchemaVersion
from iot.codec_topics import error_topic

SOURCE_ATTRS = {"rows": 12, "spellcheck": "false", "autocomplete": "off", "class": "mono"}
PAYLOAD_ATTRS = {"rows": 4, "spellcheck": "false", "autocomplete": "off", "class": "mono"}
# How far back the rules tab sums the deployment's codec_failures samples (they are kept 48 hours).
FAILURE_WINDOW = datetime.timedelta(hours=24)


# -- the tab's tenancy ----------------------------------------------------------------------------------------------


def premium_console(request, org_id, project_id, dep_id, *, label: str, page: str):
    """The deployment's console for a Premium tab: a deployment on another plan has no such tab (404), a role without
    device:read is refused as the API refuses it (403)."""
    console = tenancy.for_deployment(request, org_id, project_id, dep_id)
    deployment = console.deployment
    if deployment is None or deployment.plan.code != Plan.Code.PREMIUM:
        raise Http404("No such page on this deployment.")
    console.require_in_project("device:read")
    console.crumb(label, tenancy.deployment_url(deployment, page))
    return console


def can_write(console) -> bool:
    return console.can_in_project("device:write") and console.deployment.desired_state != DesiredState.DELETED


def require_write(console) -> None:
    """The API's scope check before a write: 403 without device:write."""
    console.require_in_project("device:write")


def check_writable(console) -> None:
    """The API's other check before a write, inside the caller's refusal handling: a Conflict once the deployment
    is being deleted."""
    iot_services.deployment_check_premium(console.deployment)


def _url(console, name: str, *extra) -> str:
    return reverse(
        f"console:{name}",
        args=[console.organization.public_id, console.project.public_id, console.deployment.public_id, *extra],
    )


def _is_htmx(request) -> bool:
    return bool(request.headers.get("HX-Request"))


# -- forms ----------------------------------------------------------------------------------------------------------


class SchemaCreateForm(ApiForm):
    serializer_class = SchemaCreateSerializer

    name = forms.CharField(
        label="Schema name",
        strip=False,
        widget=forms.TextInput(attrs={"autocomplete": "off", "spellcheck": "false"}),
        help_text=f"{codecs.SCHEMA_NAME_RULE}. Codec rules name it.",
    )
    type = forms.ChoiceField(label="Format", choices=Schema.Type.choices)
    message_type = forms.CharField(
        label="Message type",
        required=False,
        widget=forms.TextInput(attrs={"autocomplete": "off", "spellcheck": "false"}),
        help_text="Protobuf only: the message to decode and encode, such as sensors.Reading.",
    )
    description = forms.CharField(label="Description", required=False, strip=False)
    source = forms.CharField(
        label="Source",
        strip=False,
        widget=forms.Textarea(attrs=SOURCE_ATTRS),
        help_text="The .proto text, the Avro schema (JSON) or the JSON Schema (JSON); at most 64 KiB.",
    )


class SchemaVersionForm(ApiForm):
    serializer_class = SchemaVersionCreateSerializer

    source = forms.CharField(
        label="Source of the new version",
        strip=False,
        widget=forms.Textarea(attrs=SOURCE_ATTRS),
        help_text="Refused unless data written with the latest version still reads with it (Avro, Protobuf).",
    )
    message_type = forms.CharField(
        label="Message type",
        required=False,
        widget=forms.TextInput(attrs={"autocomplete": "off", "spellcheck": "false"}),
        help_text="Protobuf only; empty keeps the latest version's.",
    )

    def serializer_data(self) -> dict:
        data = super().serializer_data()
        if not data.get("message_type"):
            data.pop("message_type", None)  # the service then keeps the previous version's
        return data


class TryForm(ConsoleForm):
    """Try a schema version on a payload: binary (hex or base64) to decode, or JSON to encode."""

    FORMATS = [("hex", "Hex"), ("base64", "Base64")]

    direction = forms.ChoiceField(
        label="Try",
        choices=[("decode", "Decode: binary to JSON"), ("encode", "Encode: JSON to binary")],
        initial="decode",
    )
    version = forms.IntegerField(
        label="Version",
        required=False,
        min_value=1,
        max_value=MAX_VERSION,
        help_text="Empty: the latest.",
    )
    payload_format = forms.ChoiceField(
        label="Payload written as",
        choices=FORMATS,
        initial="hex",
        required=False,  # encoding reads JSON
        help_text="For decoding; encoding takes JSON.",
    )
    payload = forms.CharField(
        label="Payload",
        strip=False,
        widget=forms.Textarea(attrs=PAYLOAD_ATTRS),
        help_text=f"Hex or base64 bytes to decode, or a JSON value to encode; at most {schemas.MAX_PAYLOAD_BYTES:,} "
        "bytes.",
    )

    def __init__(self, *args, fixed_direction: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.fixed_direction = fixed_direction
        if fixed_direction is not None:  # a rule's try-it: its own direction and pinned version
            del self.fields["direction"]
            del self.fields["version"]
            if fixed_direction == CodecRule.Direction.ENCODE:
                del self.fields["payload_format"]

    @property
    def chosen_direction(self) -> str:
        return self.fixed_direction or self.cleaned_data.get("direction") or "decode"


def try_payload(form: TryForm, *, schema: Schema, version: Any) -> dict | None:
    """Run the API's try-it service on the form's payload; the result for the page, or None with the refusal on the
    form."""
    direction = form.chosen_direction
    text = form.cleaned_data["payload"]
    try:
        if direction == "decode":
            if form.cleaned_data.get("payload_format") in ("hex", "", None):
                try:
                    raw = bytes.fromhex("".join(text.split()))
                except ValueError:
                    form.add_error("payload", "Not hex: pairs of 0-9 and a-f, spaces allowed.")
                    return None
                payload_base64 = base64.b64encode(raw).decode("ascii")
            else:
                payload_base64 = "".join(text.split())
            result = codecs.schema_decode(schema=schema, payload_base64=payload_base64, version=version)
            return {"direction": "decode", "json": json.dumps(result, indent=2, ensure_ascii=False)}
        try:
            value = json.loads(text)
        except ValueError as exc:
            form.add_error("payload", f"Not JSON: {exc}.")
            return None
        except RecursionError:
            form.add_error("payload", "Not JSON: it nests too deeply.")
            return None
        encoded = codecs.schema_encode(schema=schema, payload=value, version=version)
        return {
            "direction": "encode",
            "hex": encoded.hex(" "),
            "base64": base64.b64encode(encoded).decode("ascii"),
            "size": len(encoded),
        }
    except errors.REFUSALS as exc:
        errors.to_form(form, exc, aliases={"payload_base64": "payload"})
        return None
    except RecursionError:  # a value nested deeper than a recursive schema's checker can follow
        form.add_error("payload", "The payload nests too deeply.")
        return None


class CodecRuleForm(ApiForm):
    serializer_class: type[InputSerializer] = CodecRuleCreateSerializer

    name = forms.CharField(label="Rule name", required=False, strip=False, help_text="Optional, for you.")
    topic_filter = forms.CharField(
        label="Topic filter",
        strip=False,
        widget=forms.TextInput(attrs={"autocomplete": "off", "spellcheck": "false"}),
        help_text="The messages the rule reads, such as devices/+/telemetry.",
    )
    direction = forms.ChoiceField(label="Direction", choices=CodecRule.Direction.choices)
    schema = forms.ChoiceField(label="Schema")
    schema_version = forms.IntegerField(
        label="Schema version", required=False, min_value=1, max_value=MAX_VERSION, help_text="Empty: the latest."
    )
    topic_template = forms.CharField(
        label="Output topic",
        strip=False,
        widget=forms.TextInput(attrs={"autocomplete": "off", "spellcheck": "false"}),
        help_text="Where the result is published: text with {topic}, {topic[N]} (level N of the input topic, from "
        "0) and {device_id} (level 1 of devices/{device_id}/…).",
    )
    enabled = forms.BooleanField(label="Enabled", required=False, initial=True)

    def __init__(self, *args, schema_names=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["schema"].choices = [(name, name) for name in schema_names]


class CodecRuleEditForm(CodecRuleForm):
    serializer_class = CodecRuleUpdateSerializer


# -- reads ------------------------------------------------------------------------------------------------------------


def _schemas(deployment) -> list[Schema]:
    found = list(Schema.objects.filter(deployment=deployment).prefetch_related("versions").order_by("name"))
    for schema in found:
        schema.deployment = deployment
    return found


def _schema(console, name: str) -> Schema:
    found = Schema.objects.filter(deployment=console.deployment, name=name).first()
    if found is None:
        raise Http404("No such schema.")
    found.deployment = console.deployment
    return found


@dataclasses.dataclass
class ShownRule:
    """A codec rule as the pages show it: the row (read through to it in templates), its error topic and counts."""

    rule: CodecRule
    error_topic: str
    counts: CodecCounter | None

    def __getattr__(self, name):
        if name.startswith("__") or name == "rule":  # copy and pickle probe before `rule` is set
            raise AttributeError(name)
        return getattr(self.rule, name)


def _shown(rule: CodecRule) -> ShownRule:
    try:
        counts: CodecCounter | None = rule.counter
    except CodecCounter.DoesNotExist:
        counts = None
    return ShownRule(rule=rule, error_topic=error_topic(rule.public_id), counts=counts)


def _rules(deployment) -> list[ShownRule]:
    found = list(
        CodecRule.objects.filter(deployment=deployment)
        .select_related("schema_version__schema", "counter")
        .order_by("created_at", "id")
    )
    for rule in found:
        rule.deployment = deployment
    return [_shown(rule) for rule in found]


def _rule(console, rule_id: str) -> CodecRule:
    found = (
        CodecRule.objects.filter(deployment=console.deployment, public_id=rule_id)
        .select_related("schema_version__schema", "counter")
        .first()
    )
    if found is None:
        raise Http404("No such codec rule.")
    found.deployment = console.deployment
    found.schema_version.schema.deployment = console.deployment
    return found


def _recent_failures(deployment) -> int:
    """The deployment's codec_failures samples over the window: what an alert rule on that metric sees."""
    since = timezone.now() - FAILURE_WINDOW
    total = MetricSample.objects.filter(deployment_id=deployment.pk, name="codec_failures", ts__gte=since).aggregate(
        total=Sum("value")
    )["total"]
    return int(total or 0)


# -- schemas --------------------------------------------------------------------------------------------------------


@login_required
@require_http_methods(["GET", "POST"])
@once
def schema_list(request, org_id, project_id, dep_id):
    """GET: the deployment's schemas and the form for a new one. POST: register it (its version 1)."""
    console = premium_console(request, org_id, project_id, dep_id, label="Schemas", page="deployment-schemas")
    form = SchemaCreateForm(_posted(request), prefix="new")
    status = 200
    if request.method == "POST":
        require_write(console)
        status = 400
        if form.is_valid():
            try:
                check_writable(console)
                schema = codecs.schema_create(deployment=console.deployment, actor=console.principal, **form.validated)
            except errors.REFUSALS as exc:
                status = errors.to_form(form, exc)
            else:
                messages.success(request, f"Schema {schema.name} registered (version 1).")
                return redirect(_url(console, "deployment-schema", schema.name))
    context = {
        "console": console,
        "deployment": console.deployment,
        "schemas": _schemas(console.deployment),
        "form": form,
        "can_write": can_write(console),
        "tab": "schemas",
    }
    return render(request, "console/codecs/schemas.html", context, status=status)


def _schema_context(console, schema: Schema, **extra) -> dict:
    versions = list(schema.versions.order_by("-version"))
    return {
        "console": console,
        "deployment": console.deployment,
        "schema": schema,
        "versions": versions,
        "rules": [r for r in _rules(console.deployment) if r.schema_version.schema_id == schema.pk],
        "version_form": extra.pop("version_form", None) or SchemaVersionForm(prefix="version"),
        "try_form": extra.pop("try_form", None) or TryForm(prefix="try"),
        "try_url": _url(console, "deployment-schema-try", schema.name),
        "can_write": can_write(console),
        "tab": "schemas",
        **extra,
    }


@login_required
@require_http_methods(["GET", "POST"])
@once
def schema_detail(request, org_id, project_id, dep_id, schema_name):
    """GET: a schema's versions, the rules that use it, try-it, and the form for a new version. POST: add it."""
    console = premium_console(request, org_id, project_id, dep_id, label="Schemas", page="deployment-schemas")
    schema = _schema(console, schema_name)
    console.crumb(schema.name)
    if request.method == "GET":
        return render(request, "console/codecs/schema.html", _schema_context(console, schema))
    require_write(console)
    form = SchemaVersionForm(request.POST, prefix="version")
    status = 400
    if form.is_valid():
        try:
            check_writable(console)
            version = codecs.schema_version_add(schema=schema, actor=console.principal, **form.validated)
        except errors.REFUSALS as exc:
            status = errors.to_form(form, exc)
        else:
            messages.success(request, f"Version {version.version} of {schema.name} added.")
            return redirect(_url(console, "deployment-schema", schema.name))
    schema.refresh_from_db()
    schema.deployment = console.deployment
    return render(
        request, "console/codecs/schema.html", _schema_context(console, schema, version_form=form), status=status
    )


@login_required
@require_GET
def schema_version(request, org_id, project_id, dep_id, schema_name, version):
    """One version's source, as it was compiled."""
    console = premium_console(request, org_id, project_id, dep_id, label="Schemas", page="deployment-schemas")
    schema = _schema(console, schema_name)
    # The URL's digits can exceed the integer column: such a version does not exist either.
    found = SchemaVersion.objects.filter(schema=schema, version=version).first() if version <= MAX_VERSION else None
    if found is None:
        raise Http404("No such version.")
    console.crumb(schema.name, _url(console, "deployment-schema", schema.name))
    console.crumb(f"Version {found.version}")
    context = {
        "console": console,
        "deployment": console.deployment,
        "schema": schema,
        "version": found,
        "tab": "schemas",
    }
    return render(request, "console/codecs/version.html", context)


@login_required
@require_POST
def schema_try(request, org_id, project_id, dep_id, schema_name):
    """Try it on a schema: decode or encode a payload with one of its versions. Nothing is stored (the API's try-it
    is a read, device:read). With htmx the answer is the try-it card alone, refusals beside the payload."""
    console = premium_console(request, org_id, project_id, dep_id, label="Schemas", page="deployment-schemas")
    schema = _schema(console, schema_name)
    form = TryForm(request.POST, prefix="try")
    result = None
    if form.is_valid():
        result = try_payload(form, schema=schema, version=form.cleaned_data.get("version"))
    status = 200 if result is not None else 400
    context = {"form": form, "result": result, "try_url": _url(console, "deployment-schema-try", schema.name)}
    if _is_htmx(request):
        # htmx swaps only a 2xx answer: a refused payload is an answer to show too.
        return render(request, "console/codecs/_try.html", {**context, "console": console}, status=200)
    console.crumb(schema.name)
    page = _schema_context(console, schema, try_form=form, try_result=result)
    return render(request, "console/codecs/schema.html", page, status=status)


@login_required
@require_http_methods(["GET", "POST"])
@once
def schema_delete(request, org_id, project_id, dep_id, schema_name):
    """GET: what deleting the schema removes, and a confirm button. POST: delete it (refused while a rule uses it)."""
    console = premium_console(request, org_id, project_id, dep_id, label="Schemas", page="deployment-schemas")
    require_write(console)
    schema = _schema(console, schema_name)
    if request.method == "POST":
        try:
            check_writable(console)
            codecs.schema_delete(schema=schema, actor=console.principal)
        except errors.REFUSALS as exc:
            errors.to_page(request, exc)
            return redirect(_url(console, "deployment-schema", schema.name))
        messages.success(request, f"Schema {schema_name} and its versions deleted.")
        return redirect(_url(console, "deployment-schemas"))
    console.crumb(schema.name, _url(console, "deployment-schema", schema.name))
    console.crumb("Delete")
    context = {
        "console": console,
        "deployment": console.deployment,
        "schema": schema,
        "versions": schema.versions.count(),
        "action": _url(console, "deployment-schema-delete", schema.name),
        "back": _url(console, "deployment-schema", schema.name),
        "tab": "schemas",
    }
    return render(request, "console/codecs/schema_delete.html", context)


# -- codec rules ------------------------------------------------------------------------------------------------------


def _rule_initial(rule: CodecRule) -> dict:
    return {
        "name": rule.name,
        "topic_filter": rule.topic_filter,
        "direction": rule.direction,
        "schema": rule.schema_version.schema.name,
        "schema_version": rule.schema_version.version,
        "topic_template": rule.topic_template,
        "enabled": rule.enabled,
    }


@login_required
@require_http_methods(["GET", "POST"])
@once
def rule_list(request, org_id, project_id, dep_id):
    """GET: the codec rules with their counts and the form for a new one. POST: add it."""
    console = premium_console(request, org_id, project_id, dep_id, label="Codec rules", page="deployment-codec-rules")
    names = [s.name for s in _schemas(console.deployment)]
    form = CodecRuleForm(_posted(request), schema_names=names, prefix="rule")
    status = 200
    if request.method == "POST":
        require_write(console)
        status = 400
        if form.is_valid():
            try:
                check_writable(console)
                rule = codecs.codec_rule_create(
                    deployment=console.deployment, actor=console.principal, **form.validated
                )
            except errors.REFUSALS as exc:
                status = errors.to_form(form, exc)
            else:
                messages.success(request, f"Codec rule {rule.public_id} added: the platform agent applies it now.")
                return redirect(_url(console, "deployment-codec-rule", rule.public_id))
    context = {
        "console": console,
        "deployment": console.deployment,
        "rules": _rules(console.deployment),
        "schema_names": names,
        "recent_failures": _recent_failures(console.deployment),
        "failure_window_hours": int(FAILURE_WINDOW.total_seconds() // 3600),
        "form": form,
        "can_write": can_write(console),
        "tab": "codec-rules",
    }
    return render(request, "console/codecs/rules.html", context, status=status)


def _rule_context(console, rule: CodecRule, **extra) -> dict:
    names = [s.name for s in _schemas(console.deployment)]
    return {
        "console": console,
        "deployment": console.deployment,
        "rule": _shown(rule),
        "form": extra.pop("form", None) or CodecRuleEditForm(initial=_rule_initial(rule), schema_names=names),
        "try_form": extra.pop("try_form", None) or TryForm(prefix="try", fixed_direction=rule.direction),
        "try_url": _url(console, "deployment-codec-rule-try", rule.public_id),
        "can_write": can_write(console),
        "tab": "codec-rules",
        **extra,
    }


@login_required
@require_http_methods(["GET", "POST"])
@once
def rule_detail(request, org_id, project_id, dep_id, rule_id):
    """GET: a rule's settings, counts, error topic and try-it. POST: change it."""
    console = premium_console(request, org_id, project_id, dep_id, label="Codec rules", page="deployment-codec-rules")
    rule = _rule(console, rule_id)
    console.crumb(rule.name or rule.public_id)
    if request.method == "GET":
        return render(request, "console/codecs/rule.html", _rule_context(console, rule))
    require_write(console)
    names = [s.name for s in _schemas(console.deployment)]
    form = CodecRuleEditForm(request.POST, schema_names=names)
    status = 400
    if form.is_valid():
        try:
            check_writable(console)
            codecs.codec_rule_update(rule=rule, actor=console.principal, **form.validated)
        except errors.REFUSALS as exc:
            status = errors.to_form(form, exc)
        else:
            messages.success(request, f"Codec rule {rule.public_id} saved.")
            return redirect(_url(console, "deployment-codec-rule", rule.public_id))
    return render(request, "console/codecs/rule.html", _rule_context(console, rule, form=form), status=status)


@login_required
@require_POST
@once
def rule_toggle(request, org_id, project_id, dep_id, rule_id):
    """Enable or disable a rule (the agent subscribes or unsubscribes)."""
    console = premium_console(request, org_id, project_id, dep_id, label="Codec rules", page="deployment-codec-rules")
    require_write(console)
    rule = _rule(console, rule_id)
    enable = request.POST.get("enabled") == "true"
    try:
        check_writable(console)
        codecs.codec_rule_update(rule=rule, actor=console.principal, enabled=enable)
    except errors.REFUSALS as exc:
        errors.to_page(request, exc)
    else:
        messages.success(request, f"Codec rule {rule.public_id} {'enabled' if enable else 'disabled'}.")
    if request.POST.get("next") == "rule":
        return redirect(_url(console, "deployment-codec-rule", rule.public_id))
    return redirect(_url(console, "deployment-codec-rules"))


@login_required
@require_http_methods(["GET", "POST"])
@once
def rule_delete(request, org_id, project_id, dep_id, rule_id):
    """GET: the rule and a confirm button. POST: delete it."""
    console = premium_console(request, org_id, project_id, dep_id, label="Codec rules", page="deployment-codec-rules")
    require_write(console)
    rule = _rule(console, rule_id)
    if request.method == "POST":
        try:
            check_writable(console)
            codecs.codec_rule_delete(rule=rule, actor=console.principal)
        except errors.REFUSALS as exc:
            errors.to_page(request, exc)
            return redirect(_url(console, "deployment-codec-rule", rule.public_id))
        messages.success(request, f"Codec rule {rule.public_id} deleted.")
        return redirect(_url(console, "deployment-codec-rules"))
    console.crumb(rule.name or rule.public_id, _url(console, "deployment-codec-rule", rule.public_id))
    console.crumb("Delete")
    context = {
        "console": console,
        "deployment": console.deployment,
        "rule": rule,
        "action": _url(console, "deployment-codec-rule-delete", rule.public_id),
        "back": _url(console, "deployment-codec-rule", rule.public_id),
        "tab": "codec-rules",
    }
    return render(request, "console/codecs/rule_delete.html", context)


@login_required
@require_POST
def rule_try(request, org_id, project_id, dep_id, rule_id):
    """Try it on a rule: what the rule would publish for a payload (its direction, its pinned schema version)."""
    console = premium_console(request, org_id, project_id, dep_id, label="Codec rules", page="deployment-codec-rules")
    rule = _rule(console, rule_id)
    form = TryForm(request.POST, prefix="try", fixed_direction=rule.direction)
    result = None
    if form.is_valid():
        result = try_payload(form, schema=rule.schema_version.schema, version=rule.schema_version.version)
    try_url = _url(console, "deployment-codec-rule-try", rule.public_id)
    if _is_htmx(request):
        context = {"console": console, "form": form, "result": result, "try_url": try_url}
        return render(request, "console/codecs/_try.html", context)
    console.crumb(rule.name or rule.public_id)
    page = _rule_context(console, rule, try_form=form, try_result=result)
    return render(request, "console/codecs/rule.html", page, status=200 if result is not None else 400)
