"""Customers' payload schemas (Protobuf, Avro, JSON Schema): compiling and checking a source, telling whether a new
version is backward compatible with the previous one, and decoding/encoding payloads with a compiled version.

Pure apart from protoc, which runs in a child process in an empty temporary directory with a timeout and resource
limits, seeing only the customer's one file and protobuf's well-known types. Nothing here touches the database or
a broker; errors are SchemaInvalid / CodecFailed with a message meant for the customer.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import math
import os
import re
import resource
import subprocess
import sys
import tempfile
from functools import lru_cache
from typing import Any

import orjson

PROTOBUF, AVRO, JSON_SCHEMA = "protobuf", "avro", "json_schema"
TYPES = (PROTOBUF, AVRO, JSON_SCHEMA)
MAX_SOURCE_BYTES = 64 * 1024
MAX_PAYLOAD_BYTES = 256 * 1024
PROTOC_TIMEOUT = 10.0
PROTOC_MEMORY = 512 * 1024 * 1024
PROTOC_OUTPUT = 4 * 1024 * 1024
PROTO_FILE = "schema.proto"
# What a customer's .proto may import: protobuf's well-known types, shipped inside grpcio-tools. Nothing else is
# on protoc's path, so no other file can be read whatever the source says.
WELL_KNOWN = frozenset(
    f"google/protobuf/{name}.proto"
    for name in (
        "any",
        "api",
        "duration",
        "empty",
        "field_mask",
        "source_context",
        "struct",
        "timestamp",
        "type",
        "wrappers",
    )
)
_IMPORT_RE = re.compile(r'^\s*import\s+(?:public\s+|weak\s+)?"([^"]*)"\s*;', re.MULTILINE)
_MESSAGE_NAME_RE = re.compile(r"^\.?[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*\Z")


class SchemaInvalid(ValueError):
    """A source that does not compile, or a version that breaks compatibility. `field` names the request's input to
    blame (source, message_type)."""

    def __init__(self, message: str, field: str = "source") -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class CodecFailed(ValueError):
    """A payload that does not decode (or a value that does not encode) with a schema version; the message says
    why, for the error topic and the try-it call."""


@dataclasses.dataclass(frozen=True)
class Compiled:
    """What is stored with a version: for Protobuf the FileDescriptorSet protoc produced and the resolved message
    type; for Avro and JSON Schema the parsed document."""

    type: str
    message_type: str = ""
    descriptor_set: bytes = b""
    document: Any = None


# -- compiling ------------------------------------------------------------------------------------------------------


def compile_source(type_: str, source: str, message_type: str = "") -> Compiled:
    if type_ not in TYPES:
        raise SchemaInvalid(f"One of {', '.join(TYPES)}.", "type")
    if not isinstance(source, str) or not source.strip():
        raise SchemaInvalid("The schema's source is required.")
    if len(source.encode("utf-8")) > MAX_SOURCE_BYTES:
        raise SchemaInvalid(f"At most {MAX_SOURCE_BYTES // 1024} KiB.")
    if "\x00" in source:
        raise SchemaInvalid("Must not contain NUL characters.")
    if type_ == PROTOBUF:
        return _compile_protobuf(source, message_type)
    if message_type:
        raise SchemaInvalid("Only a Protobuf schema names a message type.", "message_type")
    document = _json_document(source)
    if type_ == AVRO:
        _avro_parse(document)
        return Compiled(AVRO, document=document)
    _json_schema_validator(json.dumps(document, sort_keys=True))
    _json_schema_references(document)
    return Compiled(JSON_SCHEMA, document=document)


def _json_document(source: str) -> Any:
    try:
        return json.loads(source)
    except ValueError as exc:
        raise SchemaInvalid(f"Not JSON: {exc}.") from None
    except RecursionError:
        raise SchemaInvalid("Not JSON: it nests too deeply.") from None


def _limits() -> None:  # pragma: no cover - runs in the child before exec
    resource.setrlimit(resource.RLIMIT_AS, (PROTOC_MEMORY, PROTOC_MEMORY))
    resource.setrlimit(resource.RLIMIT_CPU, (int(PROTOC_TIMEOUT), int(PROTOC_TIMEOUT) + 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (PROTOC_OUTPUT, PROTOC_OUTPUT))
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))


@lru_cache(maxsize=1)
def _well_known_dir() -> str:
    import grpc_tools

    return os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")


def _compile_protobuf(source: str, message_type: str) -> Compiled:
    if not message_type:
        raise SchemaInvalid("A Protobuf schema names the message type to decode and encode.", "message_type")
    if not isinstance(message_type, str) or len(message_type) > 256 or not _MESSAGE_NAME_RE.match(message_type):
        raise SchemaInvalid("A message name such as Reading or sensors.v1.Reading.", "message_type")
    for imported in _IMPORT_RE.findall(source):
        if imported not in WELL_KNOWN:
            raise SchemaInvalid(
                f"import {imported!r}: only protobuf's well-known types (google/protobuf/*.proto) may be imported."
            )
    with tempfile.TemporaryDirectory(prefix="protoc-") as work:
        with open(os.path.join(work, PROTO_FILE), "w", encoding="utf-8") as handle:
            handle.write(source)
        out = os.path.join(work, "out.pb")
        try:
            done = subprocess.run(
                [
                    sys.executable,
                    "-I",  # isolated: no user site, no PYTHON* variables
                    "-m",
                    "grpc_tools.protoc",
                    f"--proto_path={work}",
                    f"--proto_path={_well_known_dir()}",
                    f"--descriptor_set_out={out}",
                    "--include_imports",
                    PROTO_FILE,
                ],
                cwd=work,
                env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=PROTOC_TIMEOUT,
                preexec_fn=_limits,  # noqa: PLW1509 - no threads are started between fork and exec here
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise SchemaInvalid(f"protoc did not finish within {PROTOC_TIMEOUT:.0f} s.") from None
        if done.returncode != 0:
            message = done.stderr.decode("utf-8", "replace").replace(work + os.sep, "").strip()
            raise SchemaInvalid(f"protoc: {message[:2000] or 'exit status ' + str(done.returncode)}")
        with open(out, "rb") as handle:
            descriptor_set = handle.read()
    files = _file_set(descriptor_set)
    for file in files.file:
        if file.name != PROTO_FILE and file.name not in WELL_KNOWN:
            raise SchemaInvalid(f"import {file.name!r} is not allowed.")
    resolved = _resolve_message(files, message_type)
    return Compiled(PROTOBUF, message_type=resolved, descriptor_set=descriptor_set)


def _file_set(descriptor_set: bytes):
    from google.protobuf import descriptor_pb2

    files = descriptor_pb2.FileDescriptorSet()
    files.ParseFromString(descriptor_set)
    return files


def _messages(files) -> dict[str, Any]:
    """Every message of the customer's file, by full name (nested ones too)."""
    out: dict[str, Any] = {}

    def walk(prefix: str, messages) -> None:
        for message in messages:
            name = f"{prefix}.{message.name}" if prefix else message.name
            out[name] = message
            walk(name, message.nested_type)

    for file in files.file:
        if file.name == PROTO_FILE:
            walk(file.package, file.message_type)
    return out


def _resolve_message(files, message_type: str) -> str:
    wanted = message_type.lstrip(".")
    messages = _messages(files)
    if wanted in messages:
        return wanted
    matches = [name for name in messages if name.rsplit(".", 1)[-1] == wanted]
    if len(matches) == 1:
        return matches[0]
    known = ", ".join(sorted(messages)[:20]) or "none"
    if len(matches) > 1:
        raise SchemaInvalid(f"{message_type!r} is ambiguous: {', '.join(sorted(matches))}.", "message_type")
    raise SchemaInvalid(f"No message {message_type!r} in the schema; it defines: {known}.", "message_type")


def _avro_required(schema: Any, depth: int = 0) -> None:
    """What the Avro specification requires and fastavro does not check: a record's fields, an enum's symbols, a
    fixed's size."""
    if depth > 64:
        raise SchemaInvalid("Not a valid Avro schema: it nests too deeply.")
    if isinstance(schema, list):
        for branch in schema:
            _avro_required(branch, depth + 1)
    elif isinstance(schema, dict):
        kind = schema.get("type")
        if kind in ("record", "error"):
            fields = schema.get("fields")
            if not isinstance(fields, list):
                raise SchemaInvalid(f"Not a valid Avro schema: record {schema.get('name')!r} has no list of fields.")
            for field in fields:
                if not isinstance(field, dict) or not isinstance(field.get("name"), str) or "type" not in field:
                    raise SchemaInvalid(
                        f"Not a valid Avro schema: a field of {schema.get('name')!r} needs a name and a type."
                    )
                _avro_required(field["type"], depth + 1)
        elif kind == "enum" and not isinstance(schema.get("symbols"), list):
            raise SchemaInvalid(f"Not a valid Avro schema: enum {schema.get('name')!r} has no list of symbols.")
        elif kind == "fixed" and (not isinstance(schema.get("size"), int) or isinstance(schema.get("size"), bool)):
            raise SchemaInvalid(f"Not a valid Avro schema: fixed {schema.get('name')!r} has no size.")
        elif kind == "array":
            _avro_required(schema.get("items"), depth + 1)
        elif kind == "map":
            _avro_required(schema.get("values"), depth + 1)
        elif isinstance(kind, dict | list):
            _avro_required(kind, depth + 1)


def _avro_min_bytes(schema: Any, named: dict[str, Any], depth: int = 0) -> int:
    """The fewest bytes a datum of `schema` takes in Avro's binary encoding."""
    if depth > 64:
        return 1
    kind, value = _avro_kind(schema, named)
    if kind in ("null",):
        return 0
    if kind == "float":
        return 4
    if kind == "double":
        return 8
    if kind == "fixed":
        return int(value.get("size") or 0)
    if kind in ("record", "error"):
        return sum(_avro_min_bytes(f.get("type"), named, depth + 1) for f in value.get("fields", []))
    return 1  # boolean, int, long, bytes, string, enum, union (a branch index), array and map (a block count)


def _avro_no_free_items(schema: Any, named: dict[str, Any], depth: int = 0) -> None:
    """Refuse arrays of items that take no bytes: a few payload bytes could then claim billions of them, which the
    agent would build one by one."""
    if depth > 64:
        return
    if isinstance(schema, list):
        for branch in schema:
            _avro_no_free_items(branch, named, depth + 1)
    elif isinstance(schema, dict):
        kind = schema.get("type")
        if kind == "array":
            if _avro_min_bytes(schema.get("items"), named) == 0:
                raise SchemaInvalid(
                    "Not accepted: an array of items that take no bytes (null, a record of nulls) lets a short "
                    "payload claim billions of items."
                )
            _avro_no_free_items(schema.get("items"), named, depth + 1)
        elif kind == "map":
            _avro_no_free_items(schema.get("values"), named, depth + 1)
        elif kind in ("record", "error"):
            for field in schema.get("fields", []):
                _avro_no_free_items(field.get("type"), named, depth + 1)
        elif isinstance(kind, dict | list):
            _avro_no_free_items(kind, named, depth + 1)


def _avro_parse(document: Any):
    import fastavro
    from fastavro.schema import SchemaParseException, UnknownType

    _avro_required(document)
    _avro_no_free_items(document, _avro_named(document))
    try:
        return fastavro.parse_schema(document, _write_hint=False)
    except (SchemaParseException, UnknownType, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise SchemaInvalid(f"Not a valid Avro schema: {exc}") from None
    except RecursionError:
        raise SchemaInvalid("Not a valid Avro schema: it nests too deeply.") from None


# A customer's regular expression (a JSON Schema's pattern, patternProperties) runs in the try-it request and in the
# agent, which holds the GIL for every deployment it serves. A quantified group that itself holds a quantifier ((a+)+,
# (a|aa)*) is refused when registered; no static check finds every pattern that backtracks for ever ((a|a)* does), so
# each match also runs under a time bound in the `regex` module, and one that runs out fails the payload, saying so.
_NESTED_QUANTIFIER = re.compile(r"\((?:[^()\\]|\\.)*[+*}](?:[^()\\]|\\.)*\)\s*[+*{]")
PATTERN_TIMEOUT = 0.1  # seconds for one match: a sane pattern on a payload's text takes microseconds


@lru_cache(maxsize=1024)
def _bounded_pattern(pattern: str):
    import regex

    return regex.compile(pattern)


def _pattern_search(pattern: str, text: str) -> bool:
    try:
        return _bounded_pattern(pattern).search(text, timeout=PATTERN_TIMEOUT) is not None
    except TimeoutError:
        raise CodecFailed(
            f"matching pattern {pattern!r} took more than {PATTERN_TIMEOUT} s (it backtracks without end on this "
            "text): register a version whose pattern cannot"
        ) from None


def _pattern_keyword(validator, pattern, instance, schema):
    from jsonschema.exceptions import ValidationError

    if validator.is_type(instance, "string") and not _pattern_search(pattern, instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


def _pattern_properties_keyword(validator, patterns, instance, schema):
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        for key, value in instance.items():
            if _pattern_search(pattern, key):
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


def _additional_properties_keyword(validator, additional, instance, schema):
    """jsonschema's own, but for the patterns' matching, which it does with `re` (unbounded)."""
    from jsonschema import _keywords
    from jsonschema.exceptions import ValidationError

    patterns = schema.get("patternProperties") or {}
    if not patterns or not validator.is_type(instance, "object"):
        yield from _keywords.additionalProperties(validator, additional, instance, schema)
        return
    properties = schema.get("properties", {})
    extras = [key for key in instance if key not in properties and not any(_pattern_search(p, key) for p in patterns)]
    if validator.is_type(additional, "object"):
        for extra in extras:
            yield from validator.descend(instance[extra], additional, path=extra)
    elif not additional and extras:
        joined = ", ".join(repr(each) for each in sorted(extras))
        verb = "does" if len(extras) == 1 else "do"
        yield ValidationError(f"{joined} {verb} not match any of the regexes: {', '.join(map(repr, sorted(patterns)))}")


_BOUNDED_KEYWORDS = {
    "pattern": _pattern_keyword,
    "patternProperties": _pattern_properties_keyword,
    "additionalProperties": _additional_properties_keyword,
}


def _patterns(document: Any):
    if isinstance(document, dict):
        for key, value in document.items():
            if key == "pattern" and isinstance(value, str):
                yield value
            elif key == "patternProperties" and isinstance(value, dict):
                yield from value
            yield from _patterns(value)
    elif isinstance(document, list):
        for item in document:
            yield from _patterns(item)


@lru_cache(maxsize=256)
def _json_schema_validator(text: str):
    """`text`: the document as JSON with its keys sorted (json.dumps(..., sort_keys=True)), which also keys the cache.
    jsonschema applies a schema's keywords in the document's order, so sorted, a schema's bounded patternProperties
    (and the allOf, anyOf, $ref... that lead to one) run before its unevaluatedProperties, which matches the same
    patterns on the same keys with `re`, unbounded: a pattern that runs out of time has failed the payload by then."""
    import jsonschema
    from jsonschema.exceptions import SchemaError

    document = json.loads(text)
    if not isinstance(document, dict | bool):
        raise SchemaInvalid("A JSON Schema is a JSON object (or true/false).")
    for pattern in _patterns(document):
        if _NESTED_QUANTIFIER.search(pattern):
            raise SchemaInvalid(f"pattern {pattern!r}: nested quantifiers are refused (they can backtrack for ever).")
        try:
            re.compile(pattern)  # what jsonschema itself matches with where no bounded keyword stands in
            _bounded_pattern(pattern)
        except (re.error, _regex_error()) as exc:
            raise SchemaInvalid(f"pattern {pattern!r} is not a regular expression: {exc}.") from None
    cls = jsonschema.validators.validator_for(document, default=jsonschema.Draft202012Validator)
    try:
        cls.check_schema(document)  # type: ignore[arg-type] # a boolean schema is a valid schema too
    except SchemaError as exc:
        where = "/".join(str(p) for p in exc.path)
        raise SchemaInvalid(f"Not a valid JSON Schema{f' at {where}' if where else ''}: {exc.message}") from None
    return _bounded_validator(cls)(document)


def _regex_error() -> type[Exception]:
    import regex

    return regex.error


@lru_cache(maxsize=8)
def _bounded_validator(cls):
    """The draft's validator class with the keywords that match patterns replaced by bounded ones."""
    import jsonschema

    return jsonschema.validators.extend(cls, _BOUNDED_KEYWORDS)


# Keywords whose subschemas apply to the same value: a cycle of references through only these never ends.
_IN_PLACE = ("allOf", "anyOf", "oneOf", "not", "if", "then", "else")
_REFERENCES = ("$ref", "$dynamicRef", "$recursiveRef")
_NOT_SCHEMAS = ("const", "enum", "examples", "default")  # data, whatever they hold


def _json_schema_references(document: Any) -> None:
    """SchemaInvalid unless every reference of the schema can be followed when a payload is checked: only references
    inside the schema (nothing is ever fetched), each pointing to something, and no cycle of references that comes
    back to the same value without descending into it ({"$ref": "#"}: it would recurse for ever)."""
    import jsonschema
    from referencing import Registry
    from referencing.exceptions import Unresolvable
    from referencing.jsonschema import specification_with

    if not isinstance(document, dict):
        return
    cls = jsonschema.validators.validator_for(document, default=jsonschema.Draft202012Validator)
    resource = specification_with(cls.META_SCHEMA["$schema"]).create_resource(document)
    base = resource.id() or ""
    resolver = Registry().with_resource(base, resource).resolver(base_uri=base)
    in_place: dict[int, list[dict]] = {}

    def walk(schema: Any, where: str) -> None:
        if isinstance(schema, list):
            for index, item in enumerate(schema):
                walk(item, f"{where}/{index}")
            return
        if not isinstance(schema, dict):
            return
        targets = in_place.setdefault(id(schema), [])
        for keyword in _REFERENCES:
            ref = schema.get(keyword)
            if not isinstance(ref, str):
                continue
            if not ref.startswith("#"):
                raise SchemaInvalid(
                    f"{keyword} {ref!r} at {where or '/'}: only references inside the schema (starting with #) are "
                    "followed; nothing is fetched."
                )
            try:
                target = resolver.lookup(ref).contents
            except Unresolvable:
                raise SchemaInvalid(f"{keyword} {ref!r} at {where or '/'} points to nothing in the schema.") from None
            if isinstance(target, dict):
                targets.append(target)
        for keyword, value in schema.items():
            if keyword in _NOT_SCHEMAS:
                continue
            if keyword in _IN_PLACE:
                targets.extend(v for v in (value if isinstance(value, list) else [value]) if isinstance(v, dict))
            walk(value, f"{where}/{keyword}")

    try:
        walk(document, "")
    except RecursionError:
        raise SchemaInvalid("Not a valid JSON Schema: it nests too deeply.") from None
    _refuse_reference_cycle(in_place)


def _refuse_reference_cycle(in_place: dict[int, list[dict]]) -> None:
    """A depth-first search for a cycle in the graph of subschemas applied to the same value."""
    done: set[int] = set()
    for start in in_place:
        if start in done:
            continue
        on_path = {start}
        stack = [(start, iter(in_place[start]))]
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop()
                on_path.discard(node)
                done.add(node)
                continue
            key = id(child)
            if key in on_path:
                raise SchemaInvalid(
                    'A reference leads back to itself without descending into the value (as {"$ref": "#"} '
                    "does): checking a payload would never end."
                )
            if key not in done:
                on_path.add(key)
                stack.append((key, iter(in_place.get(key, ()))))


# -- backward compatibility ----------------------------------------------------------------------------------------


def check_compatible(previous: Compiled, new: Compiled) -> None:
    """SchemaInvalid naming the field that breaks it, unless data written with `previous` reads with `new`.
    JSON Schema versions are not compared (any document may replace another)."""
    if previous.type != new.type:
        raise SchemaInvalid(f"A {previous.type} schema's versions stay {previous.type}.", "type")
    if new.type == AVRO:
        problem = _avro_readable(
            _avro_named(previous.document), previous.document, _avro_named(new.document), new.document, ""
        )
        if problem:
            raise SchemaInvalid(f"Not backward compatible with the previous version: {problem}")
    elif new.type == PROTOBUF:
        problem = _protobuf_compatible(previous, new)
        if problem:
            raise SchemaInvalid(f"Not backward compatible with the previous version: {problem}")


# Protobuf types that share a wire encoding (a reader of one reads the other's bytes): protobuf's own guide to
# updating a message type.
_WIRE_GROUPS = [
    {"int32", "uint32", "int64", "uint64", "bool", "enum"},
    {"sint32", "sint64"},
    {"fixed32", "sfixed32"},
    {"fixed64", "sfixed64"},
    {"string", "bytes"},
]


def _proto_type(field) -> str:
    from google.protobuf import descriptor_pb2

    name = descriptor_pb2.FieldDescriptorProto.Type.Name(field.type)
    return name.removeprefix("TYPE_").lower()


def _protobuf_compatible(previous: Compiled, new: Compiled) -> str | None:
    from google.protobuf import descriptor_pb2

    repeated = descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED
    required = descriptor_pb2.FieldDescriptorProto.LABEL_REQUIRED
    old_messages = _messages(_file_set(previous.descriptor_set))
    new_messages = _messages(_file_set(new.descriptor_set))
    if previous.message_type != new.message_type:
        return f"message type {previous.message_type} became {new.message_type}"
    for name, old in sorted(old_messages.items()):
        current = new_messages.get(name)
        if current is None:
            if name == new.message_type:
                return f"message {name} was removed"
            continue
        fields = {f.number: f for f in current.field}
        old_numbers = {f.number for f in old.field}
        for field in old.field:
            now = fields.get(field.number)
            where = f"field {name}.{field.name} (number {field.number})"
            if now is None:
                if field.label == required:
                    return f"{where}: a required field was removed"
                continue
            before, after = _proto_type(field), _proto_type(now)
            if before in ("message", "group") or after in ("message", "group"):
                if before != after or field.type_name != now.type_name:
                    return f"{where}: type {field.type_name or before} became {now.type_name or after}"
            elif before != after and not any(before in g and after in g for g in _WIRE_GROUPS):
                return f"{where}: type {before} became {after}"
            if (field.label == repeated) != (now.label == repeated):
                return f"{where}: {'repeated' if field.label == repeated else 'singular'} became " + (
                    "repeated" if now.label == repeated else "singular"
                )
        for field in current.field:
            if field.number not in old_numbers and field.label == required:
                return f"field {name}.{field.name} (number {field.number}): a new field cannot be required"
    return None


_AVRO_PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}
_AVRO_PROMOTIONS = {
    "int": {"long", "float", "double"},
    "long": {"float", "double"},
    "float": {"double"},
    "string": {"bytes"},
    "bytes": {"string"},
}


def _avro_named(document: Any) -> dict[str, Any]:
    """Named types (records, enums, fixed) of a schema by full name, so a reference can be followed."""
    named: dict[str, Any] = {}

    def walk(schema: Any, namespace: str) -> None:
        if isinstance(schema, list):
            for branch in schema:
                walk(branch, namespace)
        elif isinstance(schema, dict):
            kind = schema.get("type")
            if kind in ("record", "error", "enum", "fixed") and isinstance(schema.get("name"), str):
                name = schema["name"]
                space = schema.get("namespace", namespace) if "." not in name else name.rsplit(".", 1)[0]
                full = name if "." in name else (f"{space}.{name}" if space else name)
                named[full] = schema
                named.setdefault(name.rsplit(".", 1)[-1], schema)
                for field in schema.get("fields") or []:
                    if isinstance(field, dict):
                        walk(field.get("type"), space)
            elif kind == "array":
                walk(schema.get("items"), namespace)
            elif kind == "map":
                walk(schema.get("values"), namespace)
            elif isinstance(kind, dict | list):
                walk(kind, namespace)

    walk(document, "")
    return named


def _avro_kind(schema: Any, named: dict[str, Any]) -> tuple[Any, Any]:
    if isinstance(schema, list):
        return "union", schema
    if isinstance(schema, dict):
        kind = schema.get("type")
        if isinstance(kind, dict | list):
            return _avro_kind(kind, named)
        if kind in _AVRO_PRIMITIVES:
            return kind, schema
        return kind, schema
    if isinstance(schema, str):
        if schema in _AVRO_PRIMITIVES:
            return schema, schema
        target = named.get(schema) or named.get(schema.rsplit(".", 1)[-1])
        if target is not None:
            return target.get("type"), target
    return str(schema), schema


def _avro_readable(wnamed, writer: Any, rnamed, reader: Any, path: str, depth: int = 0) -> str | None:
    """Why data written with `writer` cannot be read with `reader` (Avro's schema resolution), or None."""
    if depth > 64:
        return None  # a recursive type already compared at this level
    wkind, w = _avro_kind(writer, wnamed)
    rkind, r = _avro_kind(reader, rnamed)
    where = f"field {path}" if path else "the top-level type"
    if wkind == "union":
        for branch in w:
            problem = _avro_readable(wnamed, branch, rnamed, reader, path, depth + 1)
            if problem:
                return problem
        return None
    if rkind == "union":
        for branch in r:
            if _avro_readable(wnamed, writer, rnamed, branch, path, depth + 1) is None:
                return None
        return f"{where}: {wkind} is not among the new union's types"
    if wkind != rkind:
        if rkind in _AVRO_PROMOTIONS.get(wkind, ()):
            return None
        return f"{where}: type {wkind} became {rkind}"
    if wkind == "record":
        if w is r:
            return None
        wfields = {f["name"]: f for f in w.get("fields", []) if isinstance(f, dict)}
        for field in r.get("fields", []):
            name = field.get("name")
            sub = f"{path}.{name}" if path else name
            source = wfields.get(name) or next((wfields[a] for a in field.get("aliases") or [] if a in wfields), None)
            if source is None:
                if "default" not in field:
                    return f"field {sub}: added without a default"
                continue
            problem = _avro_readable(wnamed, source["type"], rnamed, field["type"], sub, depth + 1)
            if problem:
                return problem
        return None
    if wkind == "enum":
        missing = [s for s in w.get("symbols", []) if s not in r.get("symbols", [])]
        if missing and "default" not in r:
            return f"{where}: enum symbol {missing[0]!r} was removed"
        return None
    if wkind == "fixed":
        if w.get("size") != r.get("size"):
            return f"{where}: fixed size {w.get('size')} became {r.get('size')}"
        return None
    if wkind == "array":
        return _avro_readable(wnamed, w.get("items"), rnamed, r.get("items"), f"{path}[]", depth + 1)
    if wkind == "map":
        return _avro_readable(wnamed, w.get("values"), rnamed, r.get("values"), f"{path}{{}}", depth + 1)
    return None


# -- decoding and encoding -----------------------------------------------------------------------------------------


class Codec:
    """One schema version ready to decode and encode. Build once per version (`codec_for`), use many times."""

    def __init__(self, compiled: Compiled) -> None:
        self.type = compiled.type
        self.message_type = compiled.message_type
        if compiled.type == PROTOBUF:
            from google.protobuf import descriptor_pool, json_format, message_factory
            from google.protobuf.message import DecodeError

            pool = descriptor_pool.DescriptorPool()
            for file in _file_set(compiled.descriptor_set).file:
                pool.Add(file)
            self._message = message_factory.GetMessageClass(pool.FindMessageTypeByName(compiled.message_type))
            # Resolved once: the agent decodes thousands of messages a second with one Codec.
            self._to_dict = json_format.MessageToDict
            self._decode_errors: tuple[type[BaseException], ...] = (DecodeError, RuntimeError, ValueError)
        elif compiled.type == AVRO:
            self._avro = _avro_parse(compiled.document)
        else:
            self._validator = _json_schema_validator(json.dumps(compiled.document, sort_keys=True))

    def decode(self, payload: bytes) -> Any:
        """The payload as JSON-ready data; CodecFailed says why it is not a message of this schema."""
        if len(payload) > MAX_PAYLOAD_BYTES:
            raise CodecFailed(f"the payload is larger than {MAX_PAYLOAD_BYTES} bytes")
        if self.type == PROTOBUF:
            message = self._message()
            try:
                message.ParseFromString(payload)
            except self._decode_errors as exc:
                raise CodecFailed(f"not a {self.message_type} message: {exc or 'malformed'}") from None
            return self._to_dict(message, preserving_proto_field_name=True)
        if self.type == AVRO:
            import fastavro

            stream = io.BytesIO(payload)
            try:
                value = fastavro.schemaless_reader(stream, self._avro, None)
            except (EOFError, ValueError, TypeError, IndexError, KeyError, OverflowError, MemoryError) as exc:
                raise CodecFailed(f"not an Avro record of this schema: {type(exc).__name__}: {exc}") from None
            left = len(payload) - stream.tell()
            if left:
                raise CodecFailed(f"not an Avro record of this schema: {left} bytes left after the record")
            return _json_ready(value)
        value = _json_payload(payload)
        self._validate(value)
        return value

    def decode_json(self, payload: bytes) -> bytes:
        """decode() written as compact UTF-8 JSON: what a decode rule republishes."""
        return json_bytes(self.decode(payload))

    def encode(self, value: Any) -> bytes:
        if self.type == PROTOBUF:
            from google.protobuf import json_format

            try:
                return json_format.ParseDict(value, self._message()).SerializeToString()
            except (json_format.ParseError, TypeError, ValueError, AttributeError) as exc:
                raise CodecFailed(f"not a {self.message_type}: {exc}") from None
        if self.type == AVRO:
            import fastavro

            out = io.BytesIO()
            try:
                fastavro.schemaless_writer(out, self._avro, value)
            except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
                raise CodecFailed(f"not a record of this Avro schema: {type(exc).__name__}: {exc}") from None
            return out.getvalue()
        self._validate(value)
        try:
            # allow_nan=False: a payload's NaN, Infinity or 1e400 reads as a float JSON cannot carry, and what is
            # written here must be JSON.
            return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
        except UnicodeEncodeError:
            raise CodecFailed("text that is not valid Unicode (a lone surrogate) cannot be encoded") from None
        except ValueError:
            raise CodecFailed(NOT_FINITE) from None

    def _validate(self, value: Any) -> None:
        from referencing.exceptions import Unresolvable

        try:
            error = next(iter(self._validator.iter_errors(value)), None)
        except Unresolvable as exc:  # a version stored before references were checked when registered
            raise CodecFailed(f"the JSON Schema cannot be applied: a reference cannot be followed ({exc})") from None
        except RecursionError:
            raise CodecFailed(
                "the JSON Schema cannot be applied: its references recurse without end, or the payload nests deeper "
                "than they can follow"
            ) from None
        if error is not None:
            where = "/".join(str(p) for p in error.absolute_path)
            raise CodecFailed(f"does not match the JSON Schema{f' at {where}' if where else ''}: {error.message}")


def json_bytes(value: Any) -> bytes:
    """Compact UTF-8 JSON of decoded data. orjson writes it (a tenth of json.dumps's time); what orjson refuses (an
    integer beyond 64 bits, nesting deeper than 255) the standard library writes. NaN and infinities (an Avro
    double's; a JSON payload holding them fails to decode earlier, in _json_payload), which JSON cannot express,
    become null; text that is not valid Unicode (a lone surrogate) is a CodecFailed."""
    try:
        return orjson.dumps(value)
    except TypeError:
        pass
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (ValueError, TypeError, RecursionError) as exc:
        raise CodecFailed(f"the decoded value cannot be written as JSON: {exc}") from None


# Only a \\u escape can make a surrogate (UTF-8 cannot encode one): D800-DFFF, a pair's halves or a lone one.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


NOT_FINITE = "not JSON: a number is NaN or infinite (NaN, Infinity, or too large for a double, such as 1e400)"


def _not_finite(name: str) -> float:
    raise CodecFailed(NOT_FINITE)


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise CodecFailed(NOT_FINITE)
    return value


def _json_payload(payload: bytes) -> Any:
    """A payload's JSON. Python's json also reads NaN, Infinity and numbers beyond a double (1e400, as inf), which
    JSON cannot carry: they fail here, so that neither a decode (whose output would say null) nor an encode is
    handed a value the device did not send."""
    try:
        value = json.loads(payload.decode("utf-8"), parse_constant=_not_finite, parse_float=_finite)
        if _SURROGATE_ESCAPE.search(payload):
            json.dumps(value, ensure_ascii=False).encode("utf-8")  # a pair is one character; a lone half fails
        return value
    except CodecFailed:
        raise
    except UnicodeEncodeError:
        raise CodecFailed("not JSON: it holds text that is not valid Unicode (a lone surrogate)") from None
    except UnicodeDecodeError:
        raise CodecFailed("not JSON: the payload is not UTF-8") from None
    except ValueError as exc:
        raise CodecFailed(f"not JSON: {exc}") from None
    except RecursionError:
        raise CodecFailed("not JSON: it nests too deeply") from None


def _json_ready(value: Any) -> Any:
    """Avro values as JSON: bytes as in Avro's own JSON encoding (one code point per byte), the rest as text."""
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def codec_for(compiled: Compiled) -> Codec:
    return Codec(compiled)


def b64decode(text: Any) -> bytes:
    if not isinstance(text, str):
        raise ValueError("Base64 text.")
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError):
        raise ValueError("Not valid base64.") from None
