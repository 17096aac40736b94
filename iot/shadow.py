"""Device shadow documents with the semantics of AWS IoT's classic shadow: parse and check a request, merge it,
compute the delta, and build every answer (accepted, rejected, delta, documents, get).

Pure: no database, no broker. iot.services stores what this computes; the agent and the REST API publish it.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import re
from typing import Any

MAX_DOCUMENT_BYTES = 8 * 1024
MAX_DEPTH = 6
MAX_CLIENT_TOKEN = 64
MAX_VERSION = 2**63 - 1  # the version column is a PostgreSQL bigint
DEVICE_ID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}\Z")
SECTIONS = ("desired", "reported")
_MISSING = object()


class ShadowRejected(Exception):
    """A request the shadow refuses, with AWS IoT's code: 400 bad request, 404 no shadow, 409 version conflict,
    413 too large. `field` names the part of the request at fault where one is."""

    def __init__(self, code: int, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field


@dataclasses.dataclass
class Document:
    """A shadow as stored: `present` False before the first update and after a delete."""

    present: bool = False
    version: int = 0
    desired: dict = dataclasses.field(default_factory=dict)
    reported: dict = dataclasses.field(default_factory=dict)
    desired_metadata: dict = dataclasses.field(default_factory=dict)
    reported_metadata: dict = dataclasses.field(default_factory=dict)

    def copy(self) -> Document:
        return copy.deepcopy(self)


@dataclasses.dataclass(frozen=True)
class UpdateRequest:
    """A checked update: a section is None when the request sets it to null (clear it), absent when not given."""

    state: dict  # {"desired": {...} | None, "reported": {...} | None}, only the sections given
    version: int | None
    client_token: str


@dataclasses.dataclass(frozen=True)
class UpdateResult:
    document: Document
    accepted: dict
    documents: dict
    delta: dict | None  # the delta message, when the update set desired and desired still differs from reported


# -- checking ---------------------------------------------------------------------------------------------------------


def _reject_constant(name: str):
    raise ShadowRejected(400, f"Invalid JSON: {name} is not a JSON number")


def decode_json(payload: bytes | str) -> Any:
    """The JSON value of an MQTT payload, or ShadowRejected(400)."""
    if isinstance(payload, bytes):
        try:
            payload = payload.decode("utf-8")
        except UnicodeDecodeError:
            raise ShadowRejected(400, "Invalid JSON: the payload is not UTF-8") from None
    try:
        return json.loads(payload, parse_constant=_reject_constant)
    except ShadowRejected:
        raise
    except (ValueError, RecursionError):
        raise ShadowRejected(400, "Invalid JSON") from None


def _check_value(value: Any, path: str, level: int) -> None:
    """Depth (objects and arrays each count as a level), and strings PostgreSQL's jsonb can hold."""
    if isinstance(value, dict):
        if level > MAX_DEPTH:
            raise ShadowRejected(
                400, f"{path} nests more than {MAX_DEPTH} levels: a section may be at most {MAX_DEPTH} deep", field=path
            )
        for key, item in value.items():
            _check_string(key, path)
            _check_value(item, f"{path}.{key}", level + 1)
    elif isinstance(value, list):
        if level > MAX_DEPTH:
            raise ShadowRejected(
                400, f"{path} nests more than {MAX_DEPTH} levels: a section may be at most {MAX_DEPTH} deep", field=path
            )
        for index, item in enumerate(value):
            _check_value(item, f"{path}.{index}", level + 1)
    elif isinstance(value, str):
        _check_string(value, path)
    elif isinstance(value, float) and not math.isfinite(value):
        raise ShadowRejected(400, f"{path} is not a finite number", field=path)


def _check_string(value: str, path: str) -> None:
    if "\x00" in value:
        raise ShadowRejected(400, f"{path}: strings may not contain the NUL character", field=path)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ShadowRejected(400, f"{path}: strings must be valid Unicode (no lone surrogates)", field=path) from None


def compact(value: Any) -> bytes:
    # surrogatepass: a size is measured before the strings are checked; a checked document never holds one.
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "surrogatepass")


def parse_update(body: Any, *, sections: tuple[str, ...] = SECTIONS, size: int | None = None) -> UpdateRequest:
    """Check an update request `{"state": {"desired": …, "reported": …}, "version": n, "clientToken": "…"}`
    (already decoded from JSON). `sections` are those the caller may set (the REST API sets desired only); `size`
    is the request's size in bytes when the caller has it (an MQTT payload), else it is measured."""
    if not isinstance(body, dict):
        raise ShadowRejected(400, "The shadow document must be a JSON object")
    unknown = sorted(set(body) - {"state", "version", "clientToken"})
    if unknown:
        raise ShadowRejected(400, f"Unknown field: {unknown[0]}", field=unknown[0])
    client_token = _client_token(body)
    if (size if size is not None else len(compact(body))) > MAX_DOCUMENT_BYTES:
        raise ShadowRejected(413, f"The request is larger than {MAX_DOCUMENT_BYTES} bytes")
    version = body.get("version")
    if version is not None and (type(version) is not int or not 0 <= version <= MAX_VERSION):
        raise ShadowRejected(400, f"version must be an integer from 0 to {MAX_VERSION}", field="version")
    if "state" not in body:
        raise ShadowRejected(400, "Missing required node: state", field="state")
    state = body["state"]
    if not isinstance(state, dict):
        raise ShadowRejected(400, "state must be a JSON object", field="state")
    for name in state:
        if name not in SECTIONS:
            raise ShadowRejected(400, f"state may hold only desired and reported, not {name!r}", field=f"state.{name}")
        if name not in sections:
            raise ShadowRejected(
                400, f"state.{name} cannot be set here: reported state comes from the device", field=f"state.{name}"
            )
    if not state:
        raise ShadowRejected(400, "state must hold desired or reported", field="state")
    for name, section in state.items():
        if section is not None and not isinstance(section, dict):
            raise ShadowRejected(400, f"state.{name} must be a JSON object or null", field=f"state.{name}")
        if section is not None:
            _check_value(section, f"state.{name}", 1)
    return UpdateRequest(state=dict(state), version=version, client_token=client_token)


def parse_get(payload: bytes) -> str:
    """The clientToken of a get request (an empty payload, or `{"clientToken": "…"}`)."""
    if not payload.strip():
        return ""
    body = decode_json(payload)
    if not isinstance(body, dict):
        raise ShadowRejected(400, "A get request must be empty or a JSON object")
    unknown = sorted(set(body) - {"clientToken"})
    if unknown:
        raise ShadowRejected(400, f"Unknown field: {unknown[0]}", field=unknown[0])
    return _client_token(body)


def _client_token(body: dict) -> str:
    token = body.get("clientToken", "")
    if not isinstance(token, str) or len(token) > MAX_CLIENT_TOKEN:
        raise ShadowRejected(400, f"clientToken must be a string of at most {MAX_CLIENT_TOKEN} characters")
    _check_string(token, "clientToken")
    return token


def client_token_of(payload: bytes) -> str:
    """The clientToken of a payload however bad the rest is, so a rejection can still be matched by the device."""
    try:
        body = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return ""
    token = body.get("clientToken") if isinstance(body, dict) else None
    if isinstance(token, str) and len(token) <= MAX_CLIENT_TOKEN and "\x00" not in token:
        try:
            token.encode("utf-8")
        except UnicodeEncodeError:
            return ""
        return token
    return ""


# -- merging -----------------------------------------------------------------------------------------------------------


def _without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    return value


def _stamp(value: Any, timestamp: int) -> Any:
    """Metadata mirroring `value`: every leaf (an array counts as one) becomes {"timestamp": t}."""
    if isinstance(value, dict):
        return {k: _stamp(v, timestamp) for k, v in value.items()}
    return {"timestamp": timestamp}


def _is_leaf_metadata(meta: Any) -> bool:
    """Whether `meta` is a field's own {"timestamp": t}, not an object's metadata (whose values are all objects): an
    object with a field named "timestamp" has {"timestamp": {"timestamp": t}}."""
    return isinstance(meta, dict) and type(meta.get("timestamp")) is int


def _merged(target: dict, metadata: dict, patch: dict, timestamp: int) -> tuple[dict, dict]:
    """`target` and its `metadata` with `patch` merged in: objects merge key by key, anything else replaces, null
    removes. The inputs are never changed: what the patch touches is copied, the rest is shared (documents are
    immutable values here, so sharing is safe and saves copying a whole shadow per update)."""
    target, metadata = dict(target), dict(metadata)
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
            metadata.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            sub_meta = metadata.get(key)
            if not isinstance(sub_meta, dict) or _is_leaf_metadata(sub_meta):
                sub_meta = {}
            target[key], metadata[key] = _merged(target[key], sub_meta, value, timestamp)
        else:
            target[key] = _without_nulls(value)
            metadata[key] = _stamp(target[key], timestamp)
    return target, metadata


def _patch_metadata(patch: dict, timestamp: int) -> dict:
    """The metadata an accepted answer carries: a timestamp for every field the request touched (nulls included)."""
    return {
        k: _patch_metadata(v, timestamp) if isinstance(v, dict) else {"timestamp": timestamp} for k, v in patch.items()
    }


def _same(a: Any, b: Any) -> bool:
    """JSON equality: true is not 1, 1 is 1.0, objects by keys, arrays in order."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def delta(desired: dict, reported: dict) -> dict:
    """What desired has that reported does not (or has otherwise), recursively through objects."""
    out = {}
    for key, want in desired.items():
        if key not in reported:
            out[key] = want
        elif isinstance(want, dict) and isinstance(reported[key], dict):
            sub = delta(want, reported[key])
            if sub:
                out[key] = sub
        elif not _same(want, reported[key]):
            out[key] = want
    return out


def _metadata_for(value: dict, metadata: dict) -> dict:
    """The part of `metadata` that describes the keys of `value`."""
    out = {}
    for key, item in value.items():
        meta = metadata.get(key, {})
        if isinstance(item, dict) and isinstance(meta, dict) and not _is_leaf_metadata(meta):
            out[key] = _metadata_for(item, meta)
        else:
            out[key] = meta
    return out


# -- answers -------------------------------------------------------------------------------------------------------


def _with_token(body: dict, client_token: str) -> dict:
    if client_token:
        body["clientToken"] = client_token
    return body


def state_of(document: Document) -> dict:
    """The stored document as AWS IoT shows it in `documents` and `get`: sections only when non-empty. It shares the
    document's dicts: apply_update never changes a document it is given, only the copy it returns."""
    state, metadata = {}, {}
    if document.desired:
        state["desired"] = document.desired
        metadata["desired"] = document.desired_metadata
    if document.reported:
        state["reported"] = document.reported
        metadata["reported"] = document.reported_metadata
    return {"state": state, "metadata": metadata, "version": document.version}


def apply_update(document: Document, request: UpdateRequest, *, timestamp: int) -> UpdateResult:
    """The document after `request`, and the answers to publish; ShadowRejected (409, 413) leaves it unchanged."""
    if request.version is not None and request.version != document.version:
        raise ShadowRejected(
            409,
            f"Version conflict: the shadow is at version {document.version}, not {request.version}",
            field="version",
        )
    previous = document  # never changed: documents are values, and `after` shares what the update leaves alone
    after = dataclasses.replace(document)
    for name in SECTIONS:
        if name not in request.state:
            continue
        section = request.state[name]
        merged: dict
        metadata: dict
        if section is None:
            merged, metadata = {}, {}
        else:
            merged, metadata = _merged(getattr(after, name), getattr(after, f"{name}_metadata"), section, timestamp)
        setattr(after, name, merged)
        setattr(after, f"{name}_metadata", metadata)
    size = len(compact({"desired": after.desired, "reported": after.reported}))
    if size > MAX_DOCUMENT_BYTES:
        raise ShadowRejected(
            413, f"The shadow would be {size} bytes; a shadow's state may be at most {MAX_DOCUMENT_BYTES} bytes"
        )
    after.present = True
    after.version = document.version + 1
    accepted = _with_token(
        {
            "state": request.state,
            "metadata": {
                name: _patch_metadata(section, timestamp) if section is not None else {"timestamp": timestamp}
                for name, section in request.state.items()
            },
            "version": after.version,
            "timestamp": timestamp,
        },
        request.client_token,
    )
    documents = _with_token(
        {
            "previous": state_of(previous) if previous.present else None,
            "current": state_of(after),
            "timestamp": timestamp,
        },
        request.client_token,
    )
    delta_message = None
    if request.state.get("desired"):
        difference = delta(after.desired, after.reported)
        if difference:
            delta_message = delta_body(after, difference, timestamp=timestamp, client_token=request.client_token)
    return UpdateResult(document=after, accepted=accepted, documents=documents, delta=delta_message)


def delta_body(document: Document, difference: dict, *, timestamp: int, client_token: str = "") -> dict:
    return _with_token(
        {
            "state": difference,
            "metadata": _metadata_for(difference, document.desired_metadata),
            "version": document.version,
            "timestamp": timestamp,
        },
        client_token,
    )


def get_body(document: Document, *, timestamp: int, client_token: str = "") -> dict:
    """The whole shadow, with its delta; ShadowRejected(404) when there is none."""
    if not document.present:
        raise ShadowRejected(404, "No shadow exists for this device")
    body = state_of(document)
    difference = delta(document.desired, document.reported)
    if difference:
        body["state"]["delta"] = difference
    body["timestamp"] = timestamp
    return _with_token(body, client_token)


def rejected_body(error: ShadowRejected, *, timestamp: int, client_token: str = "") -> dict:
    return _with_token({"code": error.code, "message": error.message, "timestamp": timestamp}, client_token)


def delete_document(document: Document) -> Document:
    """The document after a delete: empty, absent, one version further."""
    return Document(present=False, version=document.version + 1)
