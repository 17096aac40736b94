"""Client of one EMQX cluster's management API (`/api/v5`, HTTP Basic with the bootstrap API key).

Owns the wire formats of users, ACL rules and the read-only monitoring calls; it never decides what the desired
users or rules are (the caller passes them) and never sees a plaintext password.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable
from urllib.parse import quote

import requests

from deployments.drivers.base import AclEntry, MqttCredential, PermanentDriverError, TemporaryDriverError

AUTHENTICATOR_ID = "password_based:built_in_database"
_RULES = "/authorization/sources/built_in_database/rules"
_PAGE_LIMIT = 1000


class EmqxApiError(PermanentDriverError):
    """EMQX refused a request for a reason retrying will not fix (4xx other than 401/404 handling)."""


class EmqxApi:
    def __init__(
        self,
        base_url: str,
        api_key: str,
        api_secret: str,
        *,
        session: requests.Session | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._session = session or requests.Session()
        self._auth = (api_key, api_secret)
        self._timeout = timeout

    # -- transport ---------------------------------------------------------------------------------------------
    def _request(
        self, method: str, path: str, *, expected: tuple[int, ...] = (200, 204), **kwargs
    ) -> requests.Response:
        url = f"{self.base_url}/api/v5{path}"
        try:
            response = self._session.request(method, url, auth=self._auth, timeout=self._timeout, **kwargs)
        except requests.RequestException as exc:
            raise TemporaryDriverError(f"EMQX management API unreachable at {self.base_url}: {exc}") from exc
        if response.status_code in expected:
            return response
        detail = _error_detail(response)
        if response.status_code >= 500:
            raise TemporaryDriverError(f"EMQX answered {response.status_code} to {method} {path}: {detail}")
        if response.status_code == 401:
            # The bootstrap key is read by EMQX only when a node starts: a fresh node may not know it yet.
            raise TemporaryDriverError(f"EMQX rejected the bootstrap API key ({detail}); nodes may still be starting")
        raise EmqxApiError(f"EMQX refused {method} {path} with {response.status_code}: {detail}")

    def _get_json(self, path: str, **params) -> object:
        return self._request("GET", path, params=params or None).json()

    def _paged(self, path: str) -> list[dict]:
        items: list[dict] = []
        page = 1
        while True:
            body = self._get_json(path, page=page, limit=_PAGE_LIMIT)
            data = body.get("data", []) if isinstance(body, dict) else []
            items.extend(data)
            meta = body.get("meta", {}) if isinstance(body, dict) else {}
            has_next = meta.get("hasnext")
            if has_next is None:
                has_next = meta.get("count", 0) > page * _PAGE_LIMIT
            if not has_next or not data:
                return items
            page += 1

    # -- users -------------------------------------------------------------------------------------------------
    def list_users(self) -> list[dict]:
        return self._paged(f"/authentication/{quote(AUTHENTICATOR_ID, safe='')}/users")

    def sync_users(self, creds: Iterable[MqttCredential]) -> None:
        """Make the authenticator's users exactly `creds`: import them all (insert or overwrite), delete the rest."""
        desired = {cred.username: cred for cred in creds}
        auth_path = f"/authentication/{quote(AUTHENTICATOR_ID, safe='')}"
        if desired:
            rows = [_import_row(cred) for cred in desired.values()]
            # import_users takes a multipart upload whose file extension picks the format; .json holds
            # [{user_id, password_hash, salt, is_superuser}] (docs.emqx.com .../authn/user_management.html).
            files = {"filename": ("users.json", json.dumps(rows).encode(), "application/json")}
            self._request("POST", f"{auth_path}/import_users", files=files, expected=(200, 204))
        for user in self.list_users():
            user_id = user.get("user_id")
            if user_id not in desired:
                self._request("DELETE", f"{auth_path}/users/{quote(user_id, safe='')}", expected=(204, 404))

    # -- ACL ---------------------------------------------------------------------------------------------------
    def sync_acl(self, entries: Iterable[AclEntry]) -> None:
        """Make the built-in database rules exactly `entries`.

        EMQX keeps one ordered rule list per username, per client id and one for everyone; the order of entries
        is kept within each list. An entry naming both a username and a client id cannot be expressed there.
        """
        by_user: dict[str, list[dict]] = {}
        by_client: dict[str, list[dict]] = {}
        for_all: list[dict] = []
        for entry in entries:
            rule = {"topic": entry.topic, "permission": entry.permission, "action": entry.action}
            if entry.username is not None and entry.client_id is not None:
                raise PermanentDriverError(
                    f"ACL rule on {entry.topic!r} names both a username and a client id; EMQX's built-in "
                    "database matches one or the other: split it into two rules"
                )
            if entry.username is not None:
                by_user.setdefault(entry.username, []).append(rule)
            elif entry.client_id is not None:
                by_client.setdefault(entry.client_id, []).append(rule)
            else:
                for_all.append(rule)

        for kind, key, desired in (("users", "username", by_user), ("clients", "clientid", by_client)):
            for current in self._paged(f"{_RULES}/{kind}"):
                who = current.get(key)
                if who not in desired:
                    self._request("DELETE", f"{_RULES}/{kind}/{quote(who, safe='')}", expected=(204, 404))
                elif _comparable(current.get("rules")) == desired[who]:
                    del desired[who]
            for who, rules in desired.items():
                # PUT stores the rule list for that subject, replacing whatever was there.
                self._request("PUT", f"{_RULES}/{kind}/{quote(who, safe='')}", json={key: who, "rules": rules})
        current_all = self._get_json(f"{_RULES}/all")
        if not isinstance(current_all, dict) or _comparable(current_all.get("rules")) != for_all:
            self._request("POST", f"{_RULES}/all", json={"rules": for_all})

    def acl_rules(self) -> dict[str, object]:
        return {
            "users": self._paged(f"{_RULES}/users"),
            "clients": self._paged(f"{_RULES}/clients"),
            "all": self._get_json(f"{_RULES}/all"),
        }

    # -- monitoring (thin) -------------------------------------------------------------------------------------
    def monitor_current(self) -> dict:
        return self._get_json("/monitor_current")

    def stats(self) -> dict | list:
        return self._get_json("/stats", aggregate="true")

    def metrics(self) -> dict | list:
        return self._get_json("/metrics", aggregate="true")


def _comparable(rules: object) -> list[dict]:
    """Rules as we write them: EMQX returns its defaults (qos, retain) alongside the fields we set."""
    if not isinstance(rules, list):
        return []
    return [{"topic": r.get("topic"), "permission": r.get("permission"), "action": r.get("action")} for r in rules]


def _error_detail(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    if isinstance(body, dict):
        return f"{body.get('code', '')} {body.get('message', '')}".strip()
    return str(body)[:200]


def _import_row(cred: MqttCredential) -> dict:
    """One user as EMQX's import expects it: the pbkdf2 hash in hex, the salt as the exact bytes hashed with.

    EMQX compares hex(pbkdf2(mac, password, Salt, iterations)) with the stored hash and uses the stored salt's
    bytes as they are (emqx_authn_password_hashing:check_password). A JSON import can carry only text, so a
    salt whose bytes are not UTF-8 text cannot be given to EMQX unchanged: that credential must be re-issued.
    """
    try:
        derived = base64.b64decode(cred.hash_b64, validate=True)
        salt = base64.b64decode(cred.salt_b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise PermanentDriverError(f"MQTT user {cred.username!r} has a malformed stored hash or salt") from exc
    try:
        salt_text = salt.decode("utf-8")
    except UnicodeDecodeError:
        raise PermanentDriverError(
            f"MQTT user {cred.username!r} has a binary salt EMQX cannot store; set the user's password again"
        ) from None
    return {
        "user_id": cred.username,
        "password_hash": derived.hex(),
        "salt": salt_text,
        "is_superuser": cred.is_superuser,
    }
