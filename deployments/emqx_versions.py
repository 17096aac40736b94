"""Which EMQX versions the Kubernetes driver runs, the image each runs from, and what differs between them.

Facts only, each with the EMQX or operator source it was read from; never talks to a cluster. A version is supported
exactly when deployments/emqx_schema/ holds the schema extract of its source (scripts/emqx_schema_extract.py), so
nothing is rendered for a version whose configuration keys we have not checked.
"""

from __future__ import annotations

import functools
import json
import pathlib
import re

SCHEMA_DIR = pathlib.Path(__file__).resolve().parent / "emqx_schema"
DEFAULT_VERSION = "5.8.6"

# emqx-operator 2.2.x serves apps.emqx.io/v2beta1 for EMQX 5.1.1 and later only (its README.md at 2.2.29, "EMQX and
# EMQX Operator compatibility"; 5.0.x needs v2alpha1), and 5.0's limiter layout is not one we render. Older releases
# are refused outright.
MINIMUM_VERSION = (5, 1, 1)

# The operator evacuates a node's clients to the new nodes before scaling it down only when the node's
# /api/v5/nodes answer says edition "Enterprise" (emqx-operator 2.2.29 controllers/apps/v2beta1/sync_pods.go,
# canBeScaleDownSts); the open-source image answers "Opensource" and its in-memory sessions die with the node.
# emqx/emqx-enterprise answers "Enterprise" on every version (emqx/emqx e5.9.0 apps/emqx/src/emqx_release.erl
# edition_longstr/0), so every deployment runs it.
IMAGE_REPOSITORY = "emqx/emqx-enterprise"

# The node-wide limiter roots `limiter.max_conn_rate|messages_rate|bytes_rate` exist from 5.0.25 to 5.8
# (emqx/emqx v5.8.6 apps/emqx/src/emqx_limiter/src/emqx_limiter_schema.erl short_paths_fields/1, applied per
# node by emqx_limiter_utils:get_node_opts/1). 5.9 replaced them with zone limiters `mqtt.limiter.*_rate`, shared
# by every client of the zone on one node (e5.9.0 emqx_limiter.erl create_limiters_for_zone/2, group `shared`).
ZONE_LIMITER_FROM = (5, 9, 0)
# Durable sessions as a `durable_sessions` root with the builtin_raft backend (v5.8.6 apps/emqx/src/emqx_schema.erl
# fields("durable_sessions"), apps/emqx/src/emqx_ds_schema.erl).
DURABLE_SESSIONS_FROM = (5, 8, 0)


class UnsupportedVersion(ValueError):
    """A version string the driver will not render for; the message says why and what is accepted."""


def parse(version: str) -> tuple[int, int, int]:
    match = re.fullmatch(r"(\d{1,3})\.(\d{1,3})\.(\d{1,3})", version or "")
    if not match:
        raise UnsupportedVersion(f"{version!r} is not an EMQX release number of the form 5.8.6")
    return int(match[1]), int(match[2]), int(match[3])


@functools.cache
def _extracts() -> dict[str, dict]:
    found = {}
    for path in sorted(SCHEMA_DIR.glob("*.json")):
        extract = json.loads(path.read_text())
        found[extract["version"]] = extract
    return found


def supported_versions() -> list[str]:
    return sorted(_extracts(), key=parse)


def schema_extract(version: str) -> dict:
    return _extracts()[check(version)]


def check(version: str) -> str:
    """The version if the driver can render it; UnsupportedVersion with the reason otherwise."""
    parsed = parse(version)
    if parsed < MINIMUM_VERSION:
        raise UnsupportedVersion(
            f"EMQX {version} is too old: the EMQX Operator's apps.emqx.io/v2beta1 API needs EMQX 5.1.1 or later "
            f"(its bootstrap API key file), and 5.0's configuration layout is not one the driver renders. "
            f"Choose one of {', '.join(supported_versions())}."
        )
    if version not in _extracts():
        raise UnsupportedVersion(
            f"EMQX {version} is not offered: its configuration schema has not been checked. "
            f"Choose one of {', '.join(supported_versions())}."
        )
    return version


def image(version: str) -> str:
    return f"{IMAGE_REPOSITORY}:{check(version)}"


def has_zone_limiter(version: str) -> bool:
    return parse(version) >= ZONE_LIMITER_FROM


def has_durable_sessions(version: str) -> bool:
    return parse(version) >= DURABLE_SESSIONS_FROM
