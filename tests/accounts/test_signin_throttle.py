"""Console and admin sign-in are throttled per account (however its email is spelled) and per client address: after 10
failures in 15 minutes a clear message and 429, for a period that doubles with each lock-out, with no more than 10
checks even of guesses sent at once; audited as login.failed / login.locked / login.succeeded."""

import threading
import time

import pytest
from django.contrib.auth.hashers import MD5PasswordHasher
from django.db import connection
from django.test import Client

from accounts.models import SignInThrottle, User
from audit.models import AuditEvent
from tests.factories import PASSWORD, UserFactory
from tests.otp import enrol

pytestmark = pytest.mark.django_db


def _attempt(client, email, password="wrong password", ip="203.0.113.7"):
    return client.post("/console/login", {"username": email, "password": password}, REMOTE_ADDR=ip)


def test_account_is_locked_with_a_clear_429_after_ten_failures(owner_org, client):
    email = owner_org.owner.email
    for _ in range(9):
        assert _attempt(client, email).status_code == 200
    tenth = _attempt(client, email)
    assert tenth.status_code == 429
    assert b"Too many failed sign-in attempts. Try again in 15 minutes" in tenth.content
    assert 14 * 60 < int(tenth["Retry-After"]) <= 15 * 60
    # Locked means locked: the right password waits too, and nothing signs in.
    right = _attempt(client, email, PASSWORD)
    assert right.status_code == 429 and client.get("/").status_code == 302
    assert AuditEvent.objects.filter(action="login.failed", summary__email=email).count() == 10
    locked = AuditEvent.objects.filter(action="login.locked", summary__email=email)
    assert {e.summary["scope"] for e in locked} == {"account", "address"}
    assert all(e.target_id == owner_org.owner.public_id and e.ip == "203.0.113.7" for e in locked)


def test_lockout_doubles_when_the_account_is_locked_again(owner_org, client, settings):
    settings.SIGNIN_LOCKOUT_SECONDS = 2
    email = owner_org.owner.email
    for i in range(10):
        response = _attempt(client, email, ip=f"198.51.100.{i}")  # many addresses: only the account counts up
    assert response.status_code == 429 and int(response["Retry-After"]) <= 2
    time.sleep(2.1)
    for i in range(10):
        response = _attempt(client, email, ip=f"198.51.100.{20 + i}")
    assert response.status_code == 429 and 2 < int(response["Retry-After"]) <= 4
    row = SignInThrottle.objects.get(scope="account", key=email)
    assert row.lockouts == 2


def test_lockout_keeps_doubling_when_the_owner_signs_in_between_lockouts(owner_org, client, settings):
    # Someone who knows the password and guesses the second factor locks the account; its owner signing in between
    # must not make the guesser's next lock-out short again. Only a day without a lock-out does.
    settings.SIGNIN_LOCKOUT_SECONDS = 1
    email = owner_org.owner.email
    for i in range(10):
        response = _attempt(client, email, ip=f"198.51.100.{i}")
    assert response.status_code == 429 and int(response["Retry-After"]) <= 1
    time.sleep(1.1)
    assert _attempt(Client(), email, PASSWORD, ip="192.0.2.80").status_code == 302  # the owner signs in
    for i in range(10):
        response = _attempt(client, email, ip=f"198.51.100.{40 + i}")
    assert response.status_code == 429 and 1 < int(response["Retry-After"]) <= 2
    assert SignInThrottle.objects.get(scope="account", key=email).lockouts == 2


def test_address_is_locked_when_failures_spread_over_many_accounts(owner_org, client):
    for i in range(10):
        response = _attempt(client, f"guess{i}@example.com")
    assert response.status_code == 429
    # From that address even a real account with its real password waits; from another address it signs in.
    assert _attempt(client, owner_org.owner.email, PASSWORD).status_code == 429
    assert _attempt(Client(), owner_org.owner.email, PASSWORD, ip="192.0.2.55").status_code == 302


def test_unknown_accounts_lock_like_real_ones_when_guessed(client):
    """The answers never tell an existing account from a missing one."""
    responses = [_attempt(client, "nobody@example.com", ip=f"192.0.2.{i}") for i in range(10)]
    assert [r.status_code for r in responses] == [200] * 9 + [429]
    assert b"The email or password is not correct." in responses[0].content


def test_success_resets_the_account_count_and_is_audited(owner_org, client):
    user = owner_org.owner
    for _ in range(9):
        _attempt(client, user.email, ip="192.0.2.1")
    assert _attempt(client, user.email, PASSWORD, ip="192.0.2.2").status_code == 302
    assert not SignInThrottle.objects.filter(scope="account", key=user.email).exists()
    assert _attempt(Client(), user.email, ip="192.0.2.3").status_code == 200  # counting starts again
    event = AuditEvent.objects.get(action="login.succeeded", target_id=user.public_id)
    assert event.actor == user and event.summary["two_factor"] is False and event.via == "console"


def test_wrong_second_factor_codes_count_toward_the_lockout(owner_org, client):
    user = owner_org.owner
    enrol(user)
    assert _attempt(client, user.email, PASSWORD)["Location"] == "/console/login/verify"
    for _ in range(9):
        client.post("/console/login/verify", {"code": "000000"}, REMOTE_ADDR="203.0.113.7")
    response = client.post("/console/login/verify", {"code": "000000"}, REMOTE_ADDR="203.0.113.7")
    assert response.status_code == 429 and b"Try again in" in response.content
    assert AuditEvent.objects.filter(action="login.failed", summary__reason="two_factor").count() == 10


def test_admin_sign_in_is_throttled_too(client):
    User.objects.create_superuser("ops@example.com", "operator passphrase")
    for _ in range(9):
        response = client.post("/admin/login/", {"username": "ops@example.com", "password": "wrong"})
        assert response.status_code == 200
    response = client.post("/admin/login/", {"username": "ops@example.com", "password": "wrong"})
    assert response.status_code == 429 and int(response["Retry-After"]) > 0
    assert b"Too many failed sign-in attempts" in response.content
    assert AuditEvent.objects.filter(action="login.failed", via="admin").count() == 10


def test_sign_in_works_when_redis_is_down(owner_org, client, settings):
    """The limiter keeps its counts in PostgreSQL: a dead cache neither breaks sign-in nor opens the throttle."""
    dead = "redis://127.0.0.1:9/0"  # the discard port: nothing listens
    settings.REDIS_URL = dead
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": dead}}
    assert _attempt(client, owner_org.owner.email).status_code == 200
    assert _attempt(client, owner_org.owner.email, PASSWORD).status_code == 302
    for _ in range(10):
        response = _attempt(Client(), "someone@example.com", ip="192.0.2.9")
    assert response.status_code == 429


def test_admin_login_with_missing_fields_answers_the_form_when_posted(client):
    for body in ({}, {"username": "ops@example.com"}, {"password": "x"}):
        response = client.post("/admin/login/", body)
        assert response.status_code == 200 and b"This field is required." in response.content


def test_pages_that_ask_the_password_again_share_the_throttle(owner_org, client):
    """Password change and turning two-factor off are password oracles for whoever holds a session."""
    user = owner_org.owner
    device, _codes = enrol(user)
    client.force_login(user)
    for _ in range(5):
        response = client.post(
            "/console/account/password",
            {
                "old_password": "guess",
                "new_password1": "a new long passphrase",
                "new_password2": "a new long passphrase",
            },
        )
        assert response.status_code == 200
    for _ in range(4):
        assert client.post("/console/account/two-factor/disable", {"password": "guess"}).status_code == 302
    locked = client.post("/console/account/two-factor/disable", {"password": "guess"})
    assert locked.status_code == 429 and b"Too many failed sign-in attempts" in locked.content
    # Locked means the right password waits too.
    assert client.post("/console/account/two-factor/disable", {"password": PASSWORD}).status_code == 429
    assert (
        client.post(
            "/console/account/password",
            {
                "old_password": PASSWORD,
                "new_password1": "a new long passphrase",
                "new_password2": "a new long passphrase",
            },
        ).status_code
        == 429
    )
    user.refresh_from_db()
    assert user.check_password(PASSWORD) and user.totpdevice_set.filter(confirmed=True).exists()
    assert AuditEvent.objects.filter(action="login.failed", summary__reason="reauthentication").count() == 10


def test_sign_in_is_audited_without_an_address_when_the_forwarded_one_is_malformed(owner_org, client, settings):
    settings.TRUSTED_PROXY_COUNT = 1
    response = client.post(
        "/console/login",
        {"username": owner_org.owner.email, "password": "wrong"},
        HTTP_X_FORWARDED_FOR="not-an-address\x01",
    )
    assert response.status_code == 200
    event = AuditEvent.objects.get(action="login.failed")
    assert event.ip is None and event.summary["email"] == owner_org.owner.email


@pytest.mark.parametrize(
    ("stored", "variant"),
    [
        ("victim@mail.example", "victim@ma\u0131l.example"),  # dotless i: PostgreSQL's UPPER() makes it I
        ("victim@post.example", "victim@po\u017ft.example"),  # long s: UPPER() makes it S
    ],
)
def test_account_lock_holds_when_the_email_is_typed_with_a_unicode_case_variant(stored, variant):
    """The account lookup is UPPER(email) = UPPER(typed): 'ı' and 'ſ' find the account as I and S do. The lock must
    be the account's whatever spelling finds it, or each spelling is a fresh 10 tries, and a locked account signs in
    under another spelling (which also clears the lock)."""
    user = UserFactory(email=stored)
    for i in range(10):  # a distributed guesser: one address per try, so only the account counts
        response = _attempt(Client(), stored, ip=f"198.51.100.{i}")
    assert response.status_code == 429

    client = Client()
    during_lock = _attempt(client, variant, PASSWORD, ip="192.0.2.99")

    assert during_lock.status_code == 429, "a locked account signed in under another spelling of its email"
    assert "_auth_user_id" not in client.session
    assert SignInThrottle.objects.get(scope="account", key=user.email).locked_until is not None


def test_failures_count_toward_the_account_whatever_unicode_case_variant_is_typed():
    user = UserFactory(email="victim@mississippi.example")
    variants = ["victim@m\u0131ssissippi.example", "victim@mi\u017fsissippi.example", "VICTIM@MIS\u017fISSIPPI.EXAMPLE"]
    for n, variant in enumerate(variants * 4):  # 12 wrong guesses at one account, from 12 addresses
        _attempt(Client(), variant, ip=f"198.51.100.{n}")

    response = _attempt(Client(), user.email, PASSWORD, ip="192.0.2.7")

    assert response.status_code == 429, "12 failures against one account under 3 spellings locked nothing"
    assert AuditEvent.objects.filter(action="login.failed", summary__email=user.email).count() == 10


def test_unknown_account_locks_like_an_existing_one_when_guessed_under_unicode_variants():
    """With no account, the key is the typed address folded (upper, casefold, NFKC), so the variants that would find
    one account share one lock: otherwise locking one spelling and trying another would tell whether the account
    exists."""
    for n, variant in enumerate(["nobody@ma\u0131l.example", "NOBODY@MAIL.EXAMPLE", "nobody@mail.example"] * 4):
        response = _attempt(Client(), variant, ip=f"198.51.100.{n}")
        if n < 9:
            assert response.status_code == 200
    assert response.status_code == 429
    assert SignInThrottle.objects.filter(scope="account").count() == 1


def test_admin_sign_in_lock_holds_when_the_email_is_typed_with_a_unicode_case_variant(client):
    User.objects.create_superuser("ops@mail.example", "operator passphrase")
    for i in range(10):
        response = Client().post(
            "/admin/login/", {"username": "ops@mail.example", "password": "wrong"}, REMOTE_ADDR=f"198.51.100.{i}"
        )
    assert response.status_code == 429
    variant = client.post(
        "/admin/login/",
        {"username": "ops@ma\u0131l.example", "password": "operator passphrase"},
        REMOTE_ADDR="192.0.2.99",
    )
    assert variant.status_code == 429 and b"Too many failed sign-in attempts" in variant.content


def test_second_account_is_refused_when_its_email_differs_only_by_a_unicode_case_variant(owner_org):
    """Two accounts equal under UPPER() would both answer the sign-in lookup, and neither could sign in."""
    from django.db import IntegrityError, transaction

    user = UserFactory(email="twin@mail.example")
    with pytest.raises(IntegrityError), transaction.atomic():
        User.objects.bulk_create([User(email="twin@ma\u0131l.example", password="!")])
    assert _attempt(Client(), "twin@ma\u0131l.example", PASSWORD).status_code == 302
    assert _attempt(Client(), user.email, PASSWORD).status_code == 302


class SlowHasher(MD5PasswordHasher):
    """Checks a password as slowly as production's PBKDF2 (about a second), without its CPU: what the race below
    needs is the time between counting a guess and knowing its answer. (PBKDF2 itself spent 35 s of the suite's CPU
    here, taken from every test running beside it.)"""

    def verify(self, password, encoded):
        time.sleep(1.0)
        return super().verify(password, encoded)


@pytest.mark.django_db(transaction=True)
def test_concurrent_wrong_guesses_are_held_to_the_limit_when_sent_at_once(settings):
    """Each check of a password is counted under the throttle rows' locks before the password is hashed: of guesses
    sent at once no more than the limit are checked, however slow the check (a second each here, as production's)."""
    settings.PASSWORD_HASHERS = [f"{__name__}.SlowHasher"]
    user = UserFactory(email="target@example.com")
    attempts = 20
    start = threading.Barrier(attempts)
    codes: list[int] = []

    def guess(n):
        try:
            start.wait(timeout=30)
            codes.append(_attempt(Client(), user.email, f"guess {n}", ip=f"198.51.100.{n}").status_code)
        finally:
            connection.close()

    threads = [threading.Thread(target=guess, args=(n,)) for n in range(attempts)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert len(codes) == attempts
    checked = AuditEvent.objects.filter(action="login.failed", summary__email=user.email).count()
    assert checked == settings.SIGNIN_MAX_FAILURES, f"{checked} of {attempts} simultaneous guesses were checked"
    assert sorted(codes) == [200] * 9 + [429] * 11


def test_right_password_on_the_last_allowed_try_signs_in_and_takes_back_its_count(owner_org, settings):
    """The tenth check is counted (and locks) before it is made; when it turns out right, the sign-in goes ahead and
    its count, and the lock-out it started, are taken back."""
    user = owner_org.owner
    for _ in range(9):
        _attempt(Client(), user.email, ip="192.0.2.1")
    assert _attempt(Client(), user.email, PASSWORD, ip="192.0.2.1").status_code == 302
    assert not SignInThrottle.objects.filter(scope="account", key=user.email).exists()
    address = SignInThrottle.objects.get(scope="address", key="192.0.2.1")
    assert address.failures == 9 and address.locked_until is None and address.lockouts == 0
    assert not AuditEvent.objects.filter(action="login.locked").exists()
    assert _attempt(Client(), "someone@example.com", ip="192.0.2.1").status_code == 429  # its tenth failure
