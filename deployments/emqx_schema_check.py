"""Checks a configuration tree against an EMQX schema extract (deployments/emqx_schema/<version>.json).

It answers the list of keys EMQX would reject as unknown, deprecated keys EMQX would drop, and values outside their
type, for the parts the extract covers (listeners, limiter, mqtt and zones' mqtt, ssl_options, durable sessions,
the CRL cache). It never reads
EMQX's source itself (scripts/emqx_schema_extract.py does) and never changes the tree.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

# Roots the driver renders whose schemas live in other EMQX applications and are not extracted: their content is
# not checked here (authentication and authorization are exercised against EMQX's API through the fakes instead).
UNCHECKED_ROOTS = frozenset({"authentication", "authorization", "dashboard"})
LISTENER_STRUCTS = {
    "tcp": "emqx_schema:mqtt_tcp_listener",
    "ssl": "emqx_schema:mqtt_ssl_listener",
    "ws": "emqx_schema:mqtt_ws_listener",
    "wss": "emqx_schema:mqtt_wss_listener",
}
ROOT_STRUCTS = {
    "mqtt": "emqx_schema:mqtt",
    "limiter": "emqx_limiter_schema:limiter",
    "durable_sessions": "emqx_schema:durable_sessions",
    "crl_cache": "emqx_schema:crl_cache",
}
# What a zone may set, as the extract covers it: a zone's roots are clones of the global ones without defaults
# (emqx/emqx v5.8.6 apps/emqx/src/emqx_zone_schema.erl fields/1).
ZONE_STRUCTS = {"mqtt": "emqx_schema:mqtt"}
DURABLE_BACKENDS = {"builtin_raft": "emqx_ds_schema:builtin_raft"}

# The rate grammar both limiter generations accept: `infinity`, or a quantity with an optional unit and an
# optional `/<n><time unit>` (v5.8.6 emqx_limiter_schema:to_rate/3, e5.9.0 emqx_limiter_schema:do_parse_rate/1).
_RATE = re.compile(r"infinity|[1-9]\d*(?:kb|mb|gb|b)?(?:/\d*(?:ms|s|m|h|d))?", re.IGNORECASE)
_DURATION = re.compile(r"(?:\d+(?:ms|s|m|h|d))+")
_BYTESIZE = re.compile(r"\d+(?:kb|mb|gb|b)?", re.IGNORECASE)
_IP_PORT = re.compile(r"(?:[0-9.]+|\[[0-9a-fA-F:]+\])?:?\d{1,5}")


def check_config(tree: Mapping, extract: Mapping) -> list[str]:
    """Problems EMQX would have with `tree`, one sentence each; an empty list means none the extract can see."""
    problems: list[str] = []
    structs = extract["structs"]
    roots = set(extract["roots"])
    for root, value in tree.items():
        if root in UNCHECKED_ROOTS:
            continue
        if root not in roots:
            problems.append(f"{root}: not a configuration root of EMQX {extract['version']}")
            continue
        if root == "listeners":
            _check_listeners(value, structs, problems)
        elif root == "zones":
            _check_zones(value, structs, problems)
        elif root == "durable_storage":
            _check_durable_storage(value, structs, problems)
        elif root in ROOT_STRUCTS:
            _check_struct(value, ROOT_STRUCTS[root], structs, root, problems)
        else:
            problems.append(f"{root}: rendered but not covered by the schema extract")
    return problems


def _check_listeners(value: object, structs: Mapping, problems: list[str]) -> None:
    if not isinstance(value, Mapping):
        problems.append("listeners: must be an object")
        return
    for listener_type, named in value.items():
        struct = LISTENER_STRUCTS.get(listener_type)
        if struct is None:
            problems.append(f"listeners.{listener_type}: not a listener type the extract covers")
            continue
        if not isinstance(named, Mapping):
            problems.append(f"listeners.{listener_type}: must be an object of named listeners")
            continue
        for name, listener in named.items():
            _check_struct(listener, struct, structs, f"listeners.{listener_type}.{name}", problems)


def _check_zones(value: object, structs: Mapping, problems: list[str]) -> None:
    if not isinstance(value, Mapping):
        problems.append("zones: must be an object of named zones")
        return
    for name, zone in value.items():
        if not isinstance(zone, Mapping):
            problems.append(f"zones.{name}: must be an object")
            continue
        for root, settings in zone.items():
            struct = ZONE_STRUCTS.get(root)
            if struct is None:
                problems.append(f"zones.{name}.{root}: not a zone setting the extract covers")
                continue
            _check_struct(settings, struct, structs, f"zones.{name}.{root}", problems)


def _check_durable_storage(value: object, structs: Mapping, problems: list[str]) -> None:
    if not isinstance(value, Mapping):
        problems.append("durable_storage: must be an object")
        return
    for db, settings in value.items():
        if db != "messages":
            problems.append(f"durable_storage.{db}: not a durable storage database the extract covers")
            continue
        backend = settings.get("backend") if isinstance(settings, Mapping) else None
        struct = DURABLE_BACKENDS.get(str(backend))
        if struct is None:
            problems.append(f"durable_storage.messages.backend: {backend!r} is not a backend the extract covers")
            continue
        _check_struct(settings, struct, structs, "durable_storage.messages", problems)


def _check_struct(value: object, struct: str, structs: Mapping, path: str, problems: list[str]) -> None:
    fields = structs.get(struct)
    if fields is None:
        problems.append(f"{path}: its schema ({struct}) is not in the extract for this version")
        return
    if not isinstance(value, Mapping):
        problems.append(f"{path}: must be an object")
        return
    by_name = {}
    for entry in fields:
        by_name[entry["name"]] = entry
        for alias in entry.get("aliases", ()):
            by_name.setdefault(alias, entry)
    for key, item in value.items():
        entry = by_name.get(key)
        where = f"{path}.{key}"
        if entry is None:
            problems.append(f"{where}: unknown key (EMQX rejects unknown fields)")
            continue
        if entry.get("deprecated"):
            problems.append(f"{where}: deprecated, EMQX ignores it")
            continue
        _check_value(item, entry["type"], structs, where, problems)


def _check_value(value: object, type_: Mapping, structs: Mapping, path: str, problems: list[str]) -> None:
    if not _value_fits(value, type_, structs, path, problems):
        problems.append(f"{path}: {_show(value)} is not a valid {_describe(type_)}")


def _show(value: object) -> str:
    text = str(value) if value.__class__.__name__ == "Infinity" else repr(value)
    return text[:60]


def _describe(type_: Mapping) -> str:
    kind = type_.get("kind")
    if kind == "integer":
        bounds = [f">= {type_['min']}" if "min" in type_ else "", f"<= {type_['max']}" if "max" in type_ else ""]
        return "integer " + " and ".join(b for b in bounds if b) if any(bounds) else "integer"
    if kind == "enum":
        return "one of " + ", ".join(type_["values"])
    if kind == "union":
        return " or ".join(_describe(m) for m in type_["members"])
    if kind == "bytesize" and "max" in type_:
        return f"byte size of at most {type_['max']}"
    return str(kind)


def _word(value: object) -> str | None:
    if value.__class__.__name__ == "Infinity":
        return "infinity"
    if isinstance(value, bool):
        # HOCON's true/false parse to the atoms an enum such as enable_authn's ([true, false, quick_deny_anonymous])
        # lists, and an enum takes an atom as it is (emqx/hocon src/hocon_tconf.erl check_enum_symbol/2).
        return "true" if value else "false"
    return value if isinstance(value, str) else None


def _value_fits(value: object, type_: Mapping, structs: Mapping, path: str, problems: list[str]) -> bool:
    kind = type_.get("kind")
    word = _word(value)
    if kind == "integer":
        if isinstance(value, bool) or not isinstance(value, int):
            return False
        return type_.get("min", value) <= value <= type_.get("max", value)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "string":
        return isinstance(value, str)
    if kind == "enum":
        return word is not None and word in type_["values"]
    if kind == "union":
        return any(_value_fits(value, member, structs, path, []) for member in type_["members"])
    if kind == "rate":
        return word is not None and bool(_RATE.fullmatch(word.strip()))
    if kind == "duration":
        return word is not None and bool(_DURATION.fullmatch(word))
    if kind == "bytesize":
        if isinstance(value, int) and not isinstance(value, bool):
            return type_.get("min", value) <= value <= type_.get("max", value)
        return word is not None and bool(_BYTESIZE.fullmatch(word)) and "max" not in type_
    if kind == "ip_port":
        if isinstance(value, int) and not isinstance(value, bool):
            return 0 < value < 65536
        return word is not None and bool(_IP_PORT.fullmatch(word)) and 0 < int(word.rsplit(":", 1)[-1]) < 65536
    if kind == "struct":
        _check_struct(value, type_["ref"], structs, path, problems)
        return True
    if kind == "array":
        return isinstance(value, list) and all(_value_fits(v, type_["of"], structs, path, []) for v in value)
    problems.append(f"{path}: the extract does not know this field's type ({type_.get('text', kind)})")
    return True
