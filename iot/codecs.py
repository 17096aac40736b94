"""Every write of Premium codecs (schemas, their versions, codec rules) and the reads the agent, the try-it calls and
the metric collector make of them.

A change commits with its audit row, wakes the deployment's agent (NOTIFY on commit) and, on an EMQX region,
enqueues the push of schemas and rules to EMQX's schema registry and rule engine. A schema source is compiled
before any row is locked; nothing half-made is ever stored. Nothing here talks to a broker.
"""

from __future__ import annotations

import datetime
import re
import threading
from collections import OrderedDict
from typing import Any

from django.db import IntegrityError, models, transaction
from django.db.models import F
from django.utils import timezone

from audit.services import audit_record
from controlplane.errors import Conflict, NotFound, ValidationFailed
from controlplane.validators import control_character_message, find_control_character
from deployments.models import Deployment
from iot import codec_topics, schemas
from iot.codec_models import CodecCounter, CodecRule, Schema, SchemaVersion
from iot.services import _locked_deployment, _notify, deployment_check_premium

SCHEMA_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")
SCHEMA_NAME_RULE = "1 to 64 characters among A-Z, a-z, 0-9, _ and -"
MAX_SCHEMAS = 100
MAX_RULES = 100


def _text(value: Any, field: str, max_length: int, *, blank: bool = True) -> str:
    if not isinstance(value, str):
        raise ValidationFailed({field: "Must be a string."})
    if not blank and not value:
        raise ValidationFailed({field: "Required."})
    if len(value) > max_length:
        raise ValidationFailed({field: f"At most {max_length} characters."})
    if (found := find_control_character(value)) is not None:
        raise ValidationFailed({field: control_character_message(*found)})
    return value


def _compile(type_: str, source: Any, message_type: Any) -> schemas.Compiled:
    if type_ not in schemas.TYPES:
        raise ValidationFailed({"type": f"One of {', '.join(schemas.TYPES)}."})
    if not isinstance(source, str):
        raise ValidationFailed({"source": "The schema's text (a string)."})
    if message_type is not None and not isinstance(message_type, str):
        raise ValidationFailed({"message_type": "A message name (a string)."})
    try:
        return schemas.compile_source(type_, source, message_type or "")
    except schemas.SchemaInvalid as exc:
        raise ValidationFailed({exc.field: exc.message}) from None


def _compiled(version: SchemaVersion) -> schemas.Compiled:
    import json

    type_ = version.schema.type
    if type_ == schemas.PROTOBUF:
        return schemas.Compiled(type_, message_type=version.message_type, descriptor_set=bytes(version.descriptor_set))
    return schemas.Compiled(type_, document=json.loads(version.source))


def _changed(deployment: Deployment) -> None:
    """Inside the change's transaction: wake the agent on commit, and push to EMQX where the region runs it."""
    _notify(deployment.pk)
    if deployment.region.driver == "kubernetes":
        from controlplane.tasks import enqueue_on_commit
        from iot.tasks import sync_codecs_emqx

        # A push lost to a broker outage is repaired by the iot.sweep_codecs_emqx sweep.
        enqueue_on_commit(sync_codecs_emqx, deployment.pk)


# -- schemas --------------------------------------------------------------------------------------------------------


def schema_create(
    *, deployment: Deployment, actor, name: Any, type: Any, source: Any, message_type: Any = None, description: Any = ""
) -> Schema:
    """A schema and its version 1; the source is compiled first (protoc's message answers a bad .proto)."""
    deployment_check_premium(deployment)
    if not isinstance(name, str) or not SCHEMA_NAME_RE.match(name):
        raise ValidationFailed({"name": f"A schema name is {SCHEMA_NAME_RULE}."})
    description = _text(description, "description", 500)
    compiled = _compile(type, source, message_type)
    with transaction.atomic():
        deployment = _locked_deployment(deployment)
        if Schema.objects.filter(deployment=deployment).count() >= MAX_SCHEMAS:
            raise Conflict(f"A deployment holds at most {MAX_SCHEMAS} schemas.")
        if Schema.objects.filter(deployment=deployment, name=name).exists():
            raise Conflict(fields={"name": f"A schema {name!r} exists on this deployment; add a version to it."})
        try:
            with transaction.atomic():
                schema = Schema.objects.create(deployment=deployment, name=name, type=type, description=description)
        except IntegrityError:
            raise Conflict(fields={"name": f"A schema {name!r} exists on this deployment."}) from None
        SchemaVersion.objects.create(
            schema=schema,
            version=1,
            source=source,
            message_type=compiled.message_type,
            descriptor_set=compiled.descriptor_set,
        )
        audit_record(
            actor=actor,
            organization=deployment.project.organization,
            action="codec.schema.create",
            target=schema,
            summary={"deployment": deployment.public_id, "schema": name, "type": type, "version": 1},
        )
    return schema


def schema_version_add(*, schema: Schema, actor, source: Any, message_type: Any = None) -> SchemaVersion:
    """The schema's next version, refused unless data of the latest version reads with it (Avro, Protobuf)."""
    deployment = schema.deployment
    deployment_check_premium(deployment)
    if message_type is None and schema.type == schemas.PROTOBUF:
        message_type = schema.versions.order_by("-version").values_list("message_type", flat=True).first()
    compiled = _compile(schema.type, source, message_type)
    with transaction.atomic():
        deployment = _locked_deployment(deployment)
        schema = Schema.objects.select_for_update().get(pk=schema.pk)
        previous = schema.versions.select_related("schema").get(version=schema.latest_version)
        try:
            schemas.check_compatible(_compiled(previous), compiled)
        except schemas.SchemaInvalid as exc:
            raise ValidationFailed({exc.field: exc.message}) from None
        schema.latest_version += 1
        schema.updated_at = timezone.now()
        schema.save(update_fields=["latest_version", "updated_at"])
        version = SchemaVersion.objects.create(
            schema=schema,
            version=schema.latest_version,
            source=source,
            message_type=compiled.message_type,
            descriptor_set=compiled.descriptor_set,
        )
        audit_record(
            actor=actor,
            organization=deployment.project.organization,
            action="codec.schema.version",
            target=schema,
            summary={"deployment": deployment.public_id, "schema": schema.name, "version": version.version},
        )
    return version


@transaction.atomic
def schema_delete(*, schema: Schema, actor) -> None:
    deployment = _locked_deployment(schema.deployment)
    used = list(CodecRule.objects.filter(schema_version__schema=schema).values_list("public_id", flat=True)[:5])
    if used:
        raise Conflict(f"Codec rules use this schema ({', '.join(used)}); delete or change them first.")
    name = schema.name
    Schema.objects.filter(pk=schema.pk).delete()
    audit_record(
        actor=actor,
        organization=deployment.project.organization,
        action="codec.schema.delete",
        target=schema,
        summary={"deployment": deployment.public_id, "schema": name},
    )
    _changed(deployment)


def schema_version_get(*, schema: Schema, version: Any = None) -> SchemaVersion:
    if version in (None, ""):
        version = schema.latest_version
    try:
        number = int(version)
    except (TypeError, ValueError):
        raise ValidationFailed({"version": "A version number."}) from None
    found = schema.versions.select_related("schema").filter(version=number).first()
    if found is None:
        raise NotFound(f"Schema {schema.name!r} has no version {number}.")
    return found


# -- try it ---------------------------------------------------------------------------------------------------------

_codec_cache: OrderedDict[int, schemas.Codec] = OrderedDict()
_codec_lock = threading.Lock()


def codec_of(version: SchemaVersion) -> schemas.Codec:
    """The ready codec of a version (versions never change, so it is cached by id)."""
    with _codec_lock:
        codec = _codec_cache.get(version.pk)
        if codec is not None:
            _codec_cache.move_to_end(version.pk)
            return codec
    codec = schemas.codec_for(_compiled(version))
    with _codec_lock:
        _codec_cache[version.pk] = codec
        while len(_codec_cache) > 512:
            _codec_cache.popitem(last=False)
    return codec


def schema_decode(*, schema: Schema, payload_base64: Any, version: Any = None) -> Any:
    try:
        payload = schemas.b64decode(payload_base64)
    except ValueError as exc:
        raise ValidationFailed({"payload_base64": str(exc)}) from None
    if len(payload) > schemas.MAX_PAYLOAD_BYTES:
        raise ValidationFailed({"payload_base64": f"At most {schemas.MAX_PAYLOAD_BYTES} bytes once decoded."})
    try:
        return codec_of(schema_version_get(schema=schema, version=version)).decode(payload)
    except schemas.CodecFailed as exc:
        raise ValidationFailed({"payload_base64": str(exc)}, code="decode-failed") from None


def schema_encode(*, schema: Schema, payload: Any, version: Any = None) -> bytes:
    try:
        return codec_of(schema_version_get(schema=schema, version=version)).encode(payload)
    except schemas.CodecFailed as exc:
        raise ValidationFailed({"payload": str(exc)}, code="encode-failed") from None


# -- codec rules ----------------------------------------------------------------------------------------------------


def _rule_fields(deployment: Deployment, values: dict) -> dict:
    """Check a rule's inputs together (the template depends on the filter, the version on the schema)."""
    errors: dict[str, str] = {}
    out: dict[str, Any] = {}
    if "name" in values:
        try:
            out["name"] = _text(values["name"], "name", 128)
        except ValidationFailed as exc:
            errors["name"] = exc.errors[0].message
    if "direction" in values:
        if values["direction"] not in CodecRule.Direction.values:
            errors["direction"] = "decode (binary to JSON) or encode (JSON to binary)."
        else:
            out["direction"] = values["direction"]
    topic_filter = values.get("topic_filter")
    try:
        out["topic_filter"] = codec_topics.check_filter(topic_filter)
    except ValueError as exc:
        errors["topic_filter"] = str(exc)
    if "topic_filter" in out:
        try:
            codec_topics.parse_template(values.get("topic_template"), topic_filter=out["topic_filter"])
            out["topic_template"] = values["topic_template"]
        except ValueError as exc:
            errors["topic_template"] = str(exc)
    if "enabled" in values:
        if not isinstance(values["enabled"], bool):
            errors["enabled"] = "Must be true or false."
        else:
            out["enabled"] = values["enabled"]
    schema_name = values.get("schema")
    schema = (
        Schema.objects.filter(deployment=deployment, name=schema_name).first() if isinstance(schema_name, str) else None
    )
    if schema is None:
        errors["schema"] = "The name of a schema of this deployment."
    else:
        wanted = values.get("schema_version")
        if wanted is None:
            wanted = schema.latest_version
        if isinstance(wanted, bool) or not isinstance(wanted, int):
            errors["schema_version"] = "A version number of the schema (omit it for the latest)."
        else:
            version = schema.versions.select_related("schema").filter(version=wanted).first()
            if version is None:
                errors["schema_version"] = f"Schema {schema.name!r} has versions 1 to {schema.latest_version}."
            else:
                out["schema_version"] = version
    if errors:
        raise ValidationFailed(errors)
    return out


def _rule_summary(rule: CodecRule) -> dict:
    return {
        "deployment": rule.deployment.public_id,
        "rule": rule.public_id,
        "topic_filter": rule.topic_filter,
        "direction": rule.direction,
        "schema": rule.schema_version.schema.name,
        "schema_version": rule.schema_version.version,
        "topic_template": rule.topic_template,
        "enabled": rule.enabled,
    }


@transaction.atomic
def codec_rule_create(*, deployment: Deployment, actor, **values) -> CodecRule:
    deployment = _locked_deployment(deployment)
    values.setdefault("enabled", True)
    values.setdefault("name", "")
    fields = _rule_fields(deployment, values)
    if "direction" not in fields:
        raise ValidationFailed({"direction": "decode (binary to JSON) or encode (JSON to binary)."})
    if CodecRule.objects.filter(deployment=deployment).count() >= MAX_RULES:
        raise Conflict(f"A deployment holds at most {MAX_RULES} codec rules.")
    rule = CodecRule.objects.create(deployment=deployment, **fields)
    CodecCounter.objects.create(rule=rule, deployment=deployment)
    audit_record(
        actor=actor,
        organization=deployment.project.organization,
        action="codec.rule.create",
        target=rule,
        summary=_rule_summary(rule),
    )
    _changed(deployment)
    return rule


@transaction.atomic
def codec_rule_update(*, rule: CodecRule, actor, **changes) -> CodecRule:
    deployment = _locked_deployment(rule.deployment)
    rule = CodecRule.objects.select_for_update().select_related("schema_version__schema").get(pk=rule.pk)
    rule.deployment = deployment
    current = {
        "name": rule.name,
        "direction": rule.direction,
        "topic_filter": rule.topic_filter,
        "topic_template": rule.topic_template,
        "enabled": rule.enabled,
        "schema": rule.schema_version.schema.name,
        "schema_version": rule.schema_version.version,
    }
    if "schema" in changes and "schema_version" not in changes:
        current["schema_version"] = None  # another schema: its latest version unless one is named
    fields = _rule_fields(deployment, {**current, **changes})
    changed = [name for name, value in fields.items() if getattr(rule, name) != value]
    for name in changed:
        setattr(rule, name, fields[name])
    rule.updated_at = timezone.now()
    rule.save()
    audit_record(
        actor=actor,
        organization=deployment.project.organization,
        action="codec.rule.update",
        target=rule,
        summary={**_rule_summary(rule), "changed": changed},
    )
    _changed(deployment)
    return rule


@transaction.atomic
def codec_rule_delete(*, rule: CodecRule, actor) -> None:
    deployment = _locked_deployment(rule.deployment)
    summary = _rule_summary(rule)
    CodecRule.objects.filter(pk=rule.pk).delete()
    audit_record(
        actor=actor,
        organization=deployment.project.organization,
        action="codec.rule.delete",
        target=rule,
        summary=summary,
    )
    _changed(deployment)


# -- the agent and the collector ------------------------------------------------------------------------------------


def codec_rules_for_agent(*, deployment_id: int) -> list[CodecRule]:
    """The enabled rules the agent applies, with their versions loaded."""
    return list(
        CodecRule.objects.filter(deployment_id=deployment_id, enabled=True)
        .select_related("schema_version__schema")
        .order_by("id")
    )


def codec_counters_add(*, counts: dict[int, tuple[int, int, str]], at: datetime.datetime) -> None:
    """Add the agent's counts {rule pk: (processed, failures, last failure reason)}; a deleted rule's are dropped."""
    for rule_id, (processed, failures, reason) in sorted(counts.items()):
        update: dict[str, Any] = {"processed": F("processed") + processed}
        if failures:
            update |= {"failures": F("failures") + failures, "last_failure": reason[:2000], "last_failure_at": at}
        CodecCounter.objects.filter(rule_id=rule_id).update(**update)


def codec_failures_sample(deployment, now: datetime.datetime) -> dict[str, float]:
    """alerts' sample source: the failures counted since the previous collection, for a Premium deployment.
    Runs inside the collection's transaction, so what it marks collected commits with the sample."""
    if deployment.plan.code != "premium":
        return {}
    counters = list(CodecCounter.objects.select_for_update().filter(deployment=deployment).order_by("pk"))
    new = sum(max(0, c.failures - c.failures_collected) for c in counters)
    for counter in counters:
        if counter.failures != counter.failures_collected:
            CodecCounter.objects.filter(pk=counter.pk).update(failures_collected=counter.failures)
    return {"codec_failures": float(new)}


def codecs_push_emqx(*, deployment_id: int) -> dict[str, int] | None:
    """Push the deployment's codec rules to its EMQX cluster (schema registry and rule engine); None when it is not
    an EMQX deployment or its management API is not known yet (the next change, or the reconcile, pushes)."""
    from controlplane import crypto
    from deployments.emqx_api import EmqxApi
    from deployments.reconcile import API_KEY_NAME
    from iot import codecs_emqx

    deployment = Deployment.objects.select_related("region").filter(pk=deployment_id).first()
    if deployment is None or deployment.region.driver != "kubernetes":
        return None
    base_url = (deployment.observed_details or {}).get("management_url")
    if not base_url or not deployment.api_secret_encrypted:
        return None
    rules = list(
        CodecRule.objects.filter(deployment=deployment).select_related("schema_version__schema").order_by("id")
    )
    api = EmqxApi(base_url, API_KEY_NAME, crypto.decrypt_str(deployment.api_secret_encrypted))
    return codecs_emqx.codecs_sync(api, rules, version=deployment.emqx_version)


def emqx_deployments_with_codecs() -> list[int]:
    """Running Premium deployments on an EMQX region that have (or had: a sweep removes what remains) codec rules."""
    from iot.selectors import servable_deployments

    return list(
        servable_deployments()
        .filter(region__driver="kubernetes")
        .filter(models.Q(codec_rules__isnull=False) | models.Q(codec_schemas__isnull=False))
        .values_list("pk", flat=True)
        .distinct()
    )
