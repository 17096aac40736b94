"""Extension points through which apps deployments may not import (billing, alerts, networking, iot) add to a
broker's desired state: a spec contributor adds broker users to a deployment's BrokerSpec; a device CA source gives
the CA and CRL of its devices' client-certificate listener.

It owns the registry and the rules every contribution must obey (reserved `$` usernames, so a contributed user can
never collide with or impersonate a customer's MQTT user); it never decides what is contributed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from deployments.drivers.base import DeviceCaMaterial, MqttCredential, PermanentDriverError

if TYPE_CHECKING:
    from deployments.models import Deployment

# Called with the deployment (its plan, region and tier loaded) each time the reconciler builds its spec; answers
# the broker users to add. It may create its own rows idempotently (a reconcile of one deployment runs alone) but
# must not change the deployment. A user it confines (MqttCredential.confined_to) escapes every customer ACL rule.
SpecContributor = Callable[["Deployment"], Iterable[MqttCredential]]

RESERVED_PREFIX = "$"  # customers' usernames may not start with it (deployments.services._check_username)

# Called like a SpecContributor; answers the deployment's device CA and CRL, or None when it has none.
DeviceCaSource = Callable[["Deployment"], DeviceCaMaterial | None]

_contributors: dict[str, SpecContributor] = {}
_device_ca_sources: dict[str, DeviceCaSource] = {}
_lock = threading.Lock()


def register_device_ca_source(name: str, source: DeviceCaSource) -> None:
    """Add (or replace) the source called `name`. Call from AppConfig.ready()."""
    with _lock:
        _device_ca_sources[name] = source


def device_ca(deployment: Deployment) -> DeviceCaMaterial | None:
    """The deployment's device CA material: the first source (by name) that has one, else None."""
    with _lock:
        sources = sorted(_device_ca_sources.items())
    for _name, source in sources:
        found = source(deployment)
        if found is not None:
            return found
    return None


def register_spec_contributor(name: str, contributor: SpecContributor) -> None:
    """Add (or replace: AppConfig.ready() may run twice) the contributor called `name`. Call from AppConfig.ready()."""
    with _lock:
        _contributors[name] = contributor


def unregister_spec_contributor(name: str) -> None:
    with _lock:
        _contributors.pop(name, None)


def contributed_users(deployment: Deployment) -> list[MqttCredential]:
    """Every contributor's users for `deployment`, in contributor-name order. A contribution that breaks the rules
    (a username outside the reserved `$` space, one given twice) is a PermanentDriverError naming the contributor."""
    with _lock:
        contributors = sorted(_contributors.items())
    users: list[MqttCredential] = []
    seen: set[str] = set()
    for name, contributor in contributors:
        for user in contributor(deployment):
            if not user.username.startswith(RESERVED_PREFIX):
                raise PermanentDriverError(
                    f"spec contributor {name!r} gave the username {user.username!r}, outside the reserved "
                    f"{RESERVED_PREFIX!r} space"
                )
            if user.username in seen:
                raise PermanentDriverError(f"spec contributor {name!r} gave the username {user.username!r} twice")
            seen.add(user.username)
            users.append(user)
    return users
