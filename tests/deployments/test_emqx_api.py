"""EmqxApi against the HTTP fake of EMQX's /api/v5: users, ACL, auth failures and outages."""

import base64
import hashlib

import pytest
import requests

from deployments.drivers.base import AclEntry, MqttCredential, PermanentDriverError, TemporaryDriverError
from deployments.emqx_api import EmqxApi, EmqxAuthError
from tests.fakes.emqx_api import FakeEmqxServer


def credential(username: str, password: str, *, salt: bytes = b"0123456789abcdef", superuser: bool = False):
    derived = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, 101, dklen=64)
    return MqttCredential(
        username=username,
        salt_b64=base64.b64encode(salt).decode(),
        hash_b64=base64.b64encode(derived).decode(),
        iterations=101,
        is_superuser=superuser,
    )


@pytest.fixture
def fake():
    server = FakeEmqxServer(api_key="cp", api_secret="s3cret").start()
    yield server
    server.stop()


@pytest.fixture
def api(fake):
    return EmqxApi(fake.url, "cp", "s3cret")


def test_sync_users_imports_hex_hash_and_text_salt_emqx_can_verify_when_users_are_new(api, fake):
    api.sync_users([credential("alice", "pw-a", superuser=True)])
    stored = fake.users()["alice"]
    # What EMQX computes on CONNECT: hex(pbkdf2(sha512, password, salt bytes, iterations)).
    expected = hashlib.pbkdf2_hmac("sha512", b"pw-a", stored["salt"].encode(), 101).hex()
    assert stored["password_hash"] == expected
    assert stored["is_superuser"] is True


def test_sync_users_deletes_extra_users_and_overwrites_changed_hashes_when_set_differs(api, fake):
    api.sync_users([credential("alice", "old"), credential("bob", "b"), credential("carol", "c")])
    api.sync_users([credential("alice", "new"), credential("dave", "d")])
    users = fake.users()
    assert sorted(users) == ["alice", "dave"]
    assert users["alice"]["password_hash"] == hashlib.pbkdf2_hmac("sha512", b"new", b"0123456789abcdef", 101).hex()


def test_sync_users_removes_everyone_when_no_users_are_desired(api, fake):
    api.sync_users([credential("alice", "a")])
    api.sync_users([])
    assert fake.users() == {}


def test_sync_users_raises_permanent_when_salt_is_binary(api, fake):
    with pytest.raises(PermanentDriverError, match="binary salt"):
        api.sync_users([credential("alice", "a", salt=b"\xff\xfe\x00\x80binary")])
    assert fake.users() == {}


def test_deleted_users_clients_are_disconnected_when_the_user_is_removed(api, fake):
    """EMQX checks a password at CONNECT only: a revoked device would otherwise stay connected (and lose its rules
    to the ACL prune, no_match being allow)."""
    api.sync_users([credential("alice", "a"), credential("bob", "b")])
    fake.connect(client_id="bob-1", username="bob")
    fake.connect(client_id="bob-2", username="bob")
    fake.connect(client_id="alice-1", username="alice")

    api.sync_users([credential("alice", "a")])

    assert fake.connected() == {"alice-1": "alice"}


@pytest.mark.parametrize("client_id", [".", "..", "a/..", "%2E%2E", "b c"])
def test_a_deleted_users_client_is_disconnected_when_its_client_id_is_a_dot_segment_or_needs_escaping(
    api, fake, client_id
):
    """A client picks its own id, and `.` or `..` cannot be one path segment: the HTTP client removes them, and
    EMQX's router (cowboy) removes them after percent-decoding each segment, so DELETE /clients/<id> could not reach
    such a client (its 404 read as gone). The ids go in the body of POST /clients/kickout/bulk."""
    api.sync_users([credential("alice", "a"), credential("bob", "b")])
    fake.connect(client_id=client_id, username="bob")
    fake.connect(client_id="alice-1", username="alice")

    api.sync_users([credential("alice", "a")])

    assert fake.connected() == {"alice-1": "alice"}


def test_deleted_users_client_loses_its_rules_only_once_disconnected_when_the_first_disconnect_failed(api, fake):
    bob_rule = AclEntry(permission="deny", action="all", topic="#", username="bob")
    api.sync_users([credential("alice", "a"), credential("bob", "b")])
    api.sync_acl([bob_rule], [credential("alice", "a"), credential("bob", "b")])
    fake.connect(client_id="bob-1", username="bob")
    fake.state.fail_status, fake.state.fail_path_prefix, fake.state.fail_method = 503, "/api/v5/clients/", "POST"

    with pytest.raises(TemporaryDriverError):
        api.sync_users([credential("alice", "a")])
    with pytest.raises(TemporaryDriverError):
        api.prune_acl([], [credential("alice", "a")])

    # Deleted, still connected, and still held by its rule.
    assert "bob" not in fake.users() and "bob-1" in fake.connected() and "bob" in fake.rules()["users"]
    fake.state.fail_status = None
    api.sync_users([credential("alice", "a")])  # bob is no longer there to be deleted (nor kicked) here…
    api.sync_acl([], [credential("alice", "a")])  # …so its clients go before its rules do
    assert fake.connected() == {} and "bob" not in fake.rules()["users"]


def test_connected_client_is_held_to_a_tightened_rule_at_once_when_rules_change(api, fake):
    api.sync_acl([AclEntry(permission="allow", action="publish", topic="valves/#", username="alice")])
    fake.connect(client_id="alice-1", username="alice")
    assert fake.authorize(client_id="alice-1", username="alice", action="publish", topic="valves/open") == "allow"

    api.sync_acl(
        [
            AclEntry(permission="deny", action="publish", topic="valves/#", username="alice"),
            AclEntry(permission="allow", action="publish", topic="#", username="alice"),
        ]
    )

    # EMQX caches a connected client's decisions for a minute: the change cleans the cache.
    assert fake.authorize(client_id="alice-1", username="alice", action="publish", topic="valves/open") == "deny"


def test_sync_acl_groups_rules_by_user_client_and_all_keeping_order_when_entries_mixed(api, fake):
    entries = [
        AclEntry(permission="allow", action="subscribe", topic="cmd/c1", client_id="c1"),
        AclEntry(permission="allow", action="publish", topic="dev/alice/#", username="alice"),
        AclEntry(permission="deny", action="all", topic="dev/#", username="alice"),
        AclEntry(permission="deny", action="all", topic="$SYS/#"),
    ]
    api.sync_acl(entries)
    rules = fake.rules()
    assert [(r["permission"], r["action"], r["topic"]) for r in rules["users"]["alice"]] == [
        ("allow", "publish", "dev/alice/#"),
        ("deny", "all", "dev/#"),
    ]
    assert [r["topic"] for r in rules["clients"]["c1"]] == ["cmd/c1"]
    assert [r["topic"] for r in rules["all"]] == ["$SYS/#"]


def test_emqx_decides_as_the_ordered_list_when_rules_for_everyone_precede_subject_rules(api, fake):
    # Ordered: everyone is denied dev/#, then alice may publish dev/alice/1 (never reached), c1 may subscribe.
    entries = [
        AclEntry(permission="deny", action="all", topic="dev/#"),
        AclEntry(permission="allow", action="publish", topic="dev/alice/1", username="alice"),
        AclEntry(permission="allow", action="subscribe", topic="cmd/#", client_id="c1"),
    ]
    api.sync_acl(entries)
    # EMQX alone would check alice's list before the list for all: the compiled lists carry the earlier rule.
    assert fake.authorize(client_id="x", username="alice", action="publish", topic="dev/alice/1") == "deny"
    assert fake.authorize(client_id="c1", username="bob", action="subscribe", topic="cmd/a") == "allow"
    assert fake.authorize(client_id="c1", username="bob", action="publish", topic="dev/a") == "deny"


def test_stored_topics_emqx_would_expand_or_match_exactly_are_rendered_literally_or_on_the_strict_side_when_synced(
    api, fake, caplog
):
    """Rules stored before such topics were refused (the API refuses `${` and `eq ` now): mosquitto reads each
    literally, so EMQX must not expand a placeholder nor read `eq ` as an exact match. Without a wildcard an allow
    is EMQX's exact form of the literal topic; an allow with a wildcard has no literal form and is left out; a deny
    becomes `+` at every level EMQX would have read otherwise, so it denies whatever either reading denied."""
    entries = [
        AclEntry(permission="deny", action="publish", topic="cmd/${username}/stop"),
        AclEntry(permission="deny", action="all", topic="eq x/y"),
        AclEntry(permission="allow", action="publish", topic="devices/${username}/state"),
        AclEntry(permission="allow", action="publish", topic="sensors/${clientid}/#"),
        AclEntry(permission="allow", action="publish", topic="eq a/b"),
        AclEntry(permission="allow", action="publish", topic="cmd/#"),
        AclEntry(permission="allow", action="all", topic="x/#"),
        AclEntry(permission="deny", action="all", topic="#"),
    ]
    with caplog.at_level("WARNING", logger="deployments.emqx_api"):
        api.sync_acl(entries)
    assert [(r["permission"], r["topic"]) for r in fake.rules()["all"]] == [
        ("deny", "cmd/+/stop"),
        ("deny", "+/y"),
        ("allow", "eq devices/${username}/state"),
        ("allow", "eq eq a/b"),
        ("allow", "cmd/#"),
        ("allow", "x/#"),
        ("deny", "#"),
    ]

    def decide(topic):
        return fake.authorize(client_id="c1", username="alice", action="publish", topic=topic)

    # As mosquitto decides: the rule's own text, never the client's name put in.
    assert decide("devices/${username}/state") == "allow"
    assert decide("devices/alice/state") == "deny"
    assert decide("eq a/b") == "allow" and decide("a/b") == "deny"
    assert decide("sensors/c1/t") == "deny"
    assert decide("cmd/${username}/stop") == "deny" and decide("cmd/alice/stop") == "deny"
    assert decide("eq x/y") == "deny" and decide("x/y") == "deny"
    # On the strict side of mosquitto: no literal form exists for these.
    assert decide("sensors/${clientid}/t") == "deny" and decide("cmd/bob/stop") == "deny"
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "rule 4" in warnings[0] and "left out" in warnings[0], warnings
    assert "rule 1" in warnings[0] and "cmd/+/stop" in warnings[0], warnings


def test_sync_acl_raises_permanent_naming_rules_when_order_cannot_be_expressed(api, fake):
    entries = [
        AclEntry(permission="deny", action="publish", topic="a/#", username="alice"),
        AclEntry(permission="allow", action="publish", topic="a/b", client_id="c1"),
    ]
    with pytest.raises(PermanentDriverError, match="rule 1 .* comes before rule 2"):
        api.sync_acl(entries)
    assert fake.rules() == {"users": {}, "clients": {}, "all": []}


def test_sync_acl_removes_subjects_and_all_rules_when_no_longer_desired(api, fake):
    api.sync_acl(
        [
            AclEntry(permission="allow", action="all", topic="a", username="u1"),
            AclEntry(permission="allow", action="all", topic="b", client_id="c1"),
            AclEntry(permission="deny", action="all", topic="#"),
        ]
    )
    api.sync_acl([AclEntry(permission="allow", action="all", topic="a", username="u2")])
    rules = fake.rules()
    assert list(rules["users"]) == ["u2"] and rules["clients"] == {} and rules["all"] == []


def test_sync_acl_writes_nothing_when_rules_already_match(api, fake):
    entries = [AclEntry(permission="allow", action="all", topic="a", username="u1")]
    api.sync_acl(entries)
    writes_before = [s for s in fake.state.seen if s[0] in ("PUT", "POST", "DELETE")]
    api.sync_acl(entries)
    writes_after = [s for s in fake.state.seen if s[0] in ("PUT", "POST", "DELETE")]
    assert writes_after == writes_before


def test_sync_acl_raises_permanent_when_rule_names_user_and_client(api):
    with pytest.raises(PermanentDriverError, match="split it into two rules"):
        api.sync_acl([AclEntry(permission="allow", action="all", topic="a", username="u", client_id="c")])


def test_requests_raise_permanent_with_reason_when_api_key_is_rejected(fake):
    with pytest.raises(EmqxAuthError, match="started with another key") as raised:
        EmqxApi(fake.url, "cp", "wrong").monitor_current()
    assert isinstance(raised.value, PermanentDriverError)
    assert "maintenance restart" in str(raised.value)


def test_fake_refuses_more_than_100_rules_for_a_subject_as_emqx_does(fake):
    rules = [{"topic": f"t/{i}", "permission": "allow", "action": "all"} for i in range(101)]
    response = requests.put(
        f"{fake.url}/api/v5/authorization/sources/built_in_database/rules/users/u1",
        json={"username": "u1", "rules": rules},
        auth=("cp", "s3cret"),
        timeout=5,
    )
    assert response.status_code == 400 and "exceeds the maximum" in response.json()["message"]


@pytest.mark.parametrize(("version", "status"), [("5.4.1", 204), ("5.5.0", 200), ("5.10.2", 200)])
def test_sync_users_imports_with_type_hash_when_release_answers_either_way(version, status):
    server = FakeEmqxServer(api_key="cp", api_secret="s3cret", version=version).start()
    try:
        EmqxApi(server.url, "cp", "s3cret").sync_users([credential("alice", "pw")])
        assert list(server.users()) == ["alice"]
        assert server.state.import_queries == [{"type": ["hash"]}]
    finally:
        server.stop()


def test_fake_refuses_import_without_type_when_release_requires_it(fake):
    response = requests.post(
        f"{fake.url}/api/v5/authentication/password_based:built_in_database/import_users",
        files={"filename": ("users.json", b"[]", "application/json")},
        auth=("cp", "s3cret"),
        timeout=5,
    )
    assert response.status_code == 400


def test_requests_raise_temporary_when_emqx_answers_5xx(api, fake):
    fake.state.fail_status = 503
    with pytest.raises(TemporaryDriverError, match="503"):
        api.sync_users([credential("alice", "a")])


def test_requests_raise_temporary_when_connection_is_refused(fake):
    url = fake.url
    fake.stop()
    with pytest.raises(TemporaryDriverError, match="unreachable"):
        EmqxApi(url, "cp", "s3cret").stats()


def test_read_helpers_return_emqx_bodies_when_authorised(api):
    assert api.monitor_current()["connections"] == 3
    assert api.stats()["connections.count"] == 3
    assert api.metrics()["messages.received"] == 10


def test_session_is_used_when_given(fake):
    session = requests.Session()
    calls = []
    session.hooks["response"].append(lambda r, *a, **k: calls.append(r.url))
    EmqxApi(fake.url, "cp", "s3cret", session=session).stats()
    assert calls and calls[0].startswith(fake.url + "/api/v5/stats")


def test_push_acl_kicks_a_revoked_certificate_identity_but_not_a_customer_user_when_their_lists_become_deny_all(
    api, fake
):
    device = MqttCredential(username="$device-aa", salt_b64="", hash_b64="", confined_to=("devices/cam/#",))
    api.push_acl([], [device])
    fake.connect(client_id="cam", username="$device-aa")
    fake.connect(client_id="backend", username="bob")
    assert fake.authorize(client_id="cam", username="$device-aa", action="publish", topic="devices/cam/t") == "allow"

    revoked = MqttCredential(username="$device-aa", salt_b64="", hash_b64="", confined_to=(), certificate_only=True)
    customer = [AclEntry(permission="deny", action="all", topic="#", username="bob")]
    api.push_acl(customer, [revoked])
    assert fake.connected() == {"backend": "bob"}  # the device is disconnected, the customer's client is not
    assert [(r["permission"], r["action"], r["topic"]) for r in fake.rules()["users"]["$device-aa"]] == [
        ("deny", "all", "#")
    ]
    fake.connect(client_id="cam", username="$device-aa")
    assert fake.authorize(client_id="cam", username="$device-aa", action="publish", topic="devices/cam/t") == "deny"
    api.push_acl(customer, [revoked])  # unchanged: nothing is sent, nobody kicked again
    assert fake.connected() == {"backend": "bob", "cam": "$device-aa"}


def test_sync_bans_bans_and_lifts_only_its_own_usernames_when_others_banned_too(api, fake):
    import requests

    # An operator's own bans (another `by`, or a client id) are never lifted by the control plane.
    session = requests.Session()
    session.auth = ("cp", "s3cret")
    for body in ({"as": "username", "who": "spammer"}, {"as": "clientid", "who": "$old-device"}):
        assert session.post(f"{fake.url}/api/v5/banned", json=body, timeout=5).status_code == 200
    api.sync_bans(["$dev-a", "$dev-b"])
    api.sync_bans(["$dev-b", "$dev-c"])
    banned = {(b["as"], b["who"]): b["by"] for b in session.get(f"{fake.url}/api/v5/banned", timeout=5).json()["data"]}
    assert banned == {
        ("username", "spammer"): "mgmt_api",
        ("clientid", "$old-device"): "mgmt_api",
        ("username", "$dev-b"): "controlplane",
        ("username", "$dev-c"): "controlplane",
    }
    with pytest.raises(ConnectionRefusedError):
        fake.connect(client_id="cam", username="$dev-c")
    fake.connect(client_id="cam", username="$dev-a")  # lifted
    api.sync_bans([])
    banned = {(b["as"], b["who"]) for b in session.get(f"{fake.url}/api/v5/banned", timeout=5).json()["data"]}
    assert banned == {("username", "spammer"), ("clientid", "$old-device")}


def test_sync_bans_leaves_a_username_someone_else_banned_when_it_is_ours_to_ban_too(api, fake):
    import requests

    session = requests.Session()
    session.auth = ("cp", "s3cret")
    assert session.post(f"{fake.url}/api/v5/banned", json={"as": "username", "who": "$dev-a"}, timeout=5).ok
    api.sync_bans(["$dev-a"])  # EMQX answers 400 ALREADY_EXISTS: the username is refused either way
    with pytest.raises(ConnectionRefusedError):
        fake.connect(client_id="cam", username="$dev-a")
    api.sync_bans([])  # not ours: stays
    with pytest.raises(ConnectionRefusedError):
        fake.connect(client_id="cam", username="$dev-a")


@pytest.mark.parametrize("subject", [".", ".."])
def test_a_dot_segment_name_is_refused_before_any_request_addresses_another_resource_when_synced(api, fake, subject):
    """EMQX's router (cowboy) drops `.` and `..` path segments, even percent-encoded, and requests does so before
    sending: DELETE …/users/.. would delete the password authenticator itself (every client then connects without
    a password), PUT …/rules/users/.. would address the whole rule table."""
    fake.state.users[subject] = {"password_hash": "00", "salt": "s", "is_superuser": False}

    with pytest.raises(PermanentDriverError, match="path segment"):
        api.sync_users([credential("alice", "a")])
    with pytest.raises(PermanentDriverError, match="path segment"):
        api.sync_acl([AclEntry(permission="deny", action="all", topic="#", username=subject)])
    with pytest.raises(PermanentDriverError, match="path segment"):
        api.sync_acl([AclEntry(permission="deny", action="all", topic="#", client_id=subject)])

    addressed = [path for method, path in fake.state.seen if method in ("DELETE", "PUT")]
    assert not [p for p in addressed if not p.rstrip("/").endswith(f"/{subject}")], addressed
