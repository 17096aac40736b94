"""Client of one EMQX cluster's management API (`/api/v5`, HTTP Basic with the bootstrap API key).

Owns the wire formats of users, ACL rules and the read-only monitoring calls; it never decides what the desired
users or rules are (the caller passes them) and never sees a plaintext password.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Iterable
from typing import Any, TypedDict
from urllib.parse import quote

import requests

from deployments import emqx_acl
from deployments.drivers.base import AclEntry, MqttCredential, PermanentDriverError, TemporaryDriverError

logger = logging.getLogger(__name__)

AUTHENTICATOR_ID = "password_based:built_in_database"
_RULES = "/authorization/sources/built_in_database/rules"
_PAGE_LIMIT = 1000
# The `by` of the bans the control plane makes (revoked device certificates' usernames); it lifts only those.
BAN_BY = "controlplane"


class _WireRule(TypedDict):
    """One ACL rule as we write it to EMQX (and compare what it holds with)."""

    topic: str
    permission: str
    action: str


# Names EMQX's router cannot address as one path segment: cowboy decodes each segment and then drops `.` and `..`
# (cowboy_router split_path/2, remove_dot_segments/2), so percent-encoding cannot help, and requests drops them
# before sending anyway. DELETE …/users/.. would reach the password authenticator itself.
DOT_SEGMENTS = (".", "..")


def _segment(name: str) -> str:
    """`name` as one URL path segment, or PermanentDriverError for a name that would address another resource."""
    if name in DOT_SEGMENTS or not name:
        raise PermanentDriverError(
            f"{name!r} cannot be addressed in EMQX's API: it is a dot or empty path segment, which would name "
            "another resource"
        )
    return quote(name, safe="")


class EmqxApiError(PermanentDriverError):
    """EMQX refused a request for a reason retrying will not fix (4xx other than 404 handling)."""


class EmqxAuthError(EmqxApiError):
    """EMQX does not know the bootstrap key the control plane holds (401)."""


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
        self, method: str, path: str, *, expected: tuple[int, ...] = (200, 204), **kwargs: Any
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
            # Callers push only once the operator reports every node of the current pod template ready, and a
            # core node imports the bootstrap file before its API serves (emqx_mgmt_app:start/2): a 401 then means
            # the nodes run with another key, which retrying cannot change.
            raise EmqxAuthError(
                f"EMQX rejected the control plane's bootstrap API key {self._auth[0]!r} ({detail}): its nodes were "
                "started with another key. Restarting the deployment (maintenance restart) makes new nodes read "
                "the current key from the operator's bootstrap Secret."
            )
        raise EmqxApiError(f"EMQX refused {method} {path} with {response.status_code}: {detail}")

    def _get_json(self, path: str, **params: str | int) -> object:
        return self._request("GET", path, params=params or None).json()

    def _paged(self, path: str, **params: str | int) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        page = 1
        while True:
            body = self._get_json(path, page=page, limit=_PAGE_LIMIT, **params)
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
    def list_users(self) -> list[dict[str, Any]]:
        return self._paged(f"/authentication/{quote(AUTHENTICATOR_ID, safe='')}/users")

    def sync_users(self, creds: Iterable[MqttCredential]) -> None:
        """Make the authenticator's users exactly `creds`: import them all (insert or overwrite), delete the rest
        and disconnect their clients (EMQX checks a password at CONNECT only: a deleted user's connection would
        serve on, and lose its rules to prune_acl)."""
        # A certificate-only user has no password to import: it signs in on the device-certificate listener, which
        # asks none (emqx_config: listeners.ssl.x509 enable_authn = false).
        desired = {cred.username: cred for cred in creds if not cred.certificate_only}
        auth_path = f"/authentication/{quote(AUTHENTICATOR_ID, safe='')}"
        if desired:
            rows = [_import_row(cred) for cred in desired.values()]
            # import_users takes a multipart upload whose file extension picks the format; .json holds
            # [{user_id, password_hash, salt, is_superuser}] (emqx/emqx v5.8.6 apps/emqx_auth_mnesia/src/
            # emqx_authn_mnesia.erl import_users/3). From 5.5 the `type` query parameter (plain | hash) is required
            # and the answer is 200 with counts; before, it is ignored and the answer is 204
            # (v5.5.0 vs v5.4.1 apps/emqx_auth/src/emqx_authn/emqx_authn_user_import_api.erl): sending it always
            # and accepting either answer serves every supported release.
            files = {"filename": ("users.json", json.dumps(rows).encode(), "application/json")}
            self._request(
                "POST", f"{auth_path}/import_users", params={"type": "hash"}, files=files, expected=(200, 204)
            )
        for user in self.list_users():
            user_id = _subject(user, "user_id", "/users")
            if user_id not in desired:
                self._request("DELETE", f"{auth_path}/users/{_segment(user_id)}", expected=(204, 404))
                self.kick_clients_of(user_id)

    def kick_clients_of(self, username: str) -> None:
        """Disconnect every client signed in as `username` (after the user is deleted: it cannot sign in again)."""
        client_ids = [
            client["clientid"]
            for client in self._paged("/clients", username=username)
            if isinstance(client.get("clientid"), str) and client.get("username") == username
        ]
        if client_ids:
            # In the body, not the path: a client picks its own id, and `.` or `..` cannot be one path segment
            # (DOT_SEGMENTS), so DELETE /clients/.. would have left that client connected. 204 whether or not each
            # is still there (emqx_mgmt_api_clients.erl, schema("/clients/kickout/bulk")).
            self._request("POST", "/clients/kickout/bulk", json=client_ids, expected=(204,))

    # -- bans --------------------------------------------------------------------------------------------------
    def sync_bans(self, usernames: Iterable[str]) -> None:
        """Make the usernames banned by the control plane exactly `usernames`: ban the missing ones (no end: each is
        lifted here once it leaves the set) and lift the others. Bans anyone else made (`by` not ours, or as a
        client id or address) are never touched. EMQX refuses a banned username at CONNECT (emqx_channel.erl
        check_banned/2, after peer_cert_as_username has set it from the certificate), before authorization."""
        desired = set(usernames)
        current = {
            ban["who"]
            for ban in self._paged("/banned")
            if ban.get("as") == "username" and ban.get("by") == BAN_BY and isinstance(ban.get("who"), str)
        }
        for who in sorted(desired - current):
            body = {"as": "username", "who": who, "by": BAN_BY, "reason": "device certificate revoked"}
            # emqx_mgmt_api_banned.erl banned/2 (v5.8.6): 200 with the ban, or 400 ALREADY_EXISTS for a live ban of
            # the same username someone else made: refused either way, which is what is wanted.
            response = self._request("POST", "/banned", json=body, expected=(200, 201, 400))
            if response.status_code == 400 and _error_code(response) != "ALREADY_EXISTS":
                raise EmqxApiError(f"EMQX refused to ban {who!r}: {_error_detail(response)}")
        for who in sorted(current - desired):
            self._request("DELETE", f"/banned/username/{_segment(who)}", expected=(204, 404))

    # -- ACL ---------------------------------------------------------------------------------------------------
    def sync_acl(self, entries: Iterable[AclEntry], users: Iterable[MqttCredential] = ()) -> None:
        """Make the built-in database rules exactly what `entries` and `users` compile to: push_acl, then
        prune_acl."""
        entries, users = list(entries), list(users)
        self.push_acl(entries, users)
        self.prune_acl(entries, users)

    def push_acl(self, entries: Iterable[AclEntry], users: Iterable[MqttCredential] = ()) -> None:
        """Store every rule list the ordered `entries` need (new or changed subjects, and the rules for all), and
        remove none: rules go in before the users they are for (EMQX's no_match lets a user without rules do
        anything), and come out only after them (prune_acl).

        EMQX checks a client's client-id rules, then its username's rules, then the rules for all
        (emqx_authz_mnesia:authorize/4); deployments.emqx_acl compiles our one ordered list into those three,
        or refuses an order EMQX cannot express (before anything is sent). A confined user among `users` gets its
        own username list (its topics, then deny everything), which EMQX checks before the rules for all, so those
        never reach it. Once a revoked certificate identity's list becomes deny-everything, the clients signed in
        with it are disconnected (after the authorization cache is dropped).
        """
        users = list(users)
        by_kind, for_all, notes = _wire_acl(entries, users)
        if notes:
            logger.warning(
                "ACL rules stored with a topic EMQX would not read as written, approximated on the strict side: %s",
                "; ".join(notes),
            )
        revoked = {user.username for user in users if user.revoked_identity}
        to_kick: list[str] = []
        changed = False
        for kind, key, desired in by_kind:
            for current in self._paged(f"{_RULES}/{kind}"):
                who = current.get(key)
                if who in desired and _comparable(current.get("rules")) == desired[who]:
                    del desired[who]
            for who, rules in desired.items():
                # PUT stores the rule list for that subject, replacing whatever was there.
                self._request("PUT", f"{_RULES}/{kind}/{_segment(who)}", json={key: who, "rules": rules})
                changed = True
                if kind == "users" and who in revoked:
                    to_kick.append(who)
        current_all = self._get_json(f"{_RULES}/all")
        if not isinstance(current_all, dict) or _comparable(current_all.get("rules")) != for_all:
            self._request("POST", f"{_RULES}/all", json={"rules": for_all})
            changed = True
        if changed:
            self.clean_authz_cache()
        for username in to_kick:
            self.kick_clients_of(username)

    def prune_acl(self, entries: Iterable[AclEntry], users: Iterable[MqttCredential] = ()) -> None:
        """Delete the rule lists of the subjects `entries` and `users` have no rules for any more. Given the users,
        a username's list that goes because its user went goes only after that user's clients are disconnected
        (sync_users does it as it deletes the user; this catches a deletion whose disconnect failed)."""
        users = list(users)
        by_kind, _for_all, _notes = _wire_acl(entries, users)
        remaining = {user.username for user in users}
        changed = False
        for kind, key, desired in by_kind:
            for current in self._paged(f"{_RULES}/{kind}"):
                who = _subject(current, key, f"{_RULES}/{kind}")
                if who not in desired:
                    if kind == "users" and remaining and who not in remaining:
                        self.kick_clients_of(who)
                    self._request("DELETE", f"{_RULES}/{kind}/{_segment(who)}", expected=(204, 404))
                    changed = True
        if changed:
            self.clean_authz_cache()

    def clean_authz_cache(self) -> None:
        """Drop every node's cached authorization decisions. EMQX caches each connected client's decisions
        (authorization.cache, on by default, for a minute): without this a changed rule would reach connected
        clients only as their entries expire, and a tightened one would go on allowing meanwhile."""
        self._request("DELETE", "/authorization/cache", expected=(204,))

    def acl_rules(self) -> dict[str, object]:
        return {
            "users": self._paged(f"{_RULES}/users"),
            "clients": self._paged(f"{_RULES}/clients"),
            "all": self._get_json(f"{_RULES}/all"),
        }

    # -- monitoring (thin) -------------------------------------------------------------------------------------
    def monitor_current(self) -> dict[str, Any]:
        body = self._get_json("/monitor_current")
        if not isinstance(body, dict):
            raise EmqxApiError(f"EMQX answered GET /monitor_current with a {type(body).__name__}, not an object")
        return body

    def stats(self) -> dict[str, Any] | list[Any]:
        return self._get_aggregate("/stats")

    def metrics(self) -> dict[str, Any] | list[Any]:
        return self._get_aggregate("/metrics")

    def _get_aggregate(self, path: str) -> dict[str, Any] | list[Any]:
        # One object with aggregate=true, or a list with one object per node.
        body = self._get_json(path, aggregate="true")
        if not isinstance(body, dict | list):
            raise EmqxApiError(f"EMQX answered GET {path} with a {type(body).__name__}, not an object or a list")
        return body


def _wire_acl(
    entries: Iterable[AclEntry], users: Iterable[MqttCredential] = ()
) -> tuple[list[tuple[str, str, dict[str, list[_WireRule]]]], list[_WireRule], tuple[str, ...]]:
    """([(path kind, subject key, subject -> rules)] for users and clients, the rules for all, notes on rules only
    approximated), as EMQX stores them, each topic as written (emqx_acl.as_written), a confined user's list
    replacing its rules; PermanentDriverError if EMQX cannot express the order of `entries`."""
    entries = list(entries)
    try:
        # The order is checked as stored, so a refusal names the rules by the positions the customer sees; what
        # as_written changes only narrows or drops rules, so a list that passes as stored passes after it too.
        emqx_acl.compile_acl(entries)
        literal, notes = emqx_acl.as_written(entries)
        compiled = emqx_acl.compile_acl(literal)
    except emqx_acl.AclNotExpressible as exc:
        raise PermanentDriverError(str(exc)) from exc

    def wire(rules: list[AclEntry]) -> list[_WireRule]:
        return [{"topic": r.topic, "permission": r.permission, "action": r.action} for r in rules]

    by_user = {who: wire(rules) for who, rules in compiled.by_username.items()}
    for user in users:
        if user.confined_to is not None:
            by_user[user.username] = [
                *(_WireRule(topic=topic, permission="allow", action="all") for topic in user.confined_to),
                _WireRule(topic="#", permission="deny", action="all"),
            ]
    by_kind = [
        ("users", "username", by_user),
        ("clients", "clientid", {who: wire(rules) for who, rules in compiled.by_client_id.items()}),
    ]
    for _kind, _key, subjects in by_kind:
        for who in subjects:
            _segment(who)  # refused before anything is sent, not halfway through the push
    return by_kind, wire(compiled.for_all), notes


def _subject(row: dict[str, Any], key: str, path: str) -> str:
    """The user id, username or client id a listed row is for. EMQX's API always gives it; a row without one is an
    answer we cannot act on (it could not be deleted by name), so it stops the sync rather than being skipped."""
    subject = row.get(key)
    if not isinstance(subject, str):
        raise EmqxApiError(f"EMQX listed a row without a {key} under {path}: {row!r}")
    return subject


def _comparable(rules: object) -> list[_WireRule]:
    """Rules as we write them: EMQX returns its defaults (qos, retain) alongside the fields we set."""
    if not isinstance(rules, list):
        return []
    return [{"topic": r.get("topic"), "permission": r.get("permission"), "action": r.get("action")} for r in rules]


def _error_code(response: requests.Response) -> str:
    body = _error_body(response)
    return str(body.get("code", "")) if isinstance(body, dict) else ""


_NOT_JSON = object()


def _error_body(response: requests.Response) -> object:
    """EMQX's error answer ({code, message}), or _NOT_JSON."""
    try:
        return response.json()
    except ValueError:
        return _NOT_JSON


def _error_detail(response: requests.Response) -> str:
    body = _error_body(response)
    if body is _NOT_JSON:
        return response.text[:200]
    if isinstance(body, dict):
        return f"{body.get('code', '')} {body.get('message', '')}".strip()
    return str(body)[:200]


def _import_row(cred: MqttCredential) -> dict[str, str | bool]:
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
