"""People who sign in (email is the login), the sessions they hold, and the sign-in throttle.

What they may do lives in organizations (memberships), not here.
"""

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser, BaseUserManager, PermissionsMixin
from django.db import models
from django.db.models.functions import Lower, Upper
from django.utils import timezone
from django.utils.crypto import salted_hmac

from controlplane.ids import PublicIdField
from controlplane.validators import no_control_characters


class UserManager(BaseUserManager):
    use_in_migrations = True

    def create_user(self, email: str, password: str | None = None, **fields):
        if not email:
            raise ValueError("An email address is required")
        user = self.model(email=self.normalize_email(email).lower(), **fields)
        user.set_password(password)
        user.full_clean(exclude=["password"])
        user.save(using=self._db)
        return user

    def create_superuser(self, email: str, password: str | None = None, **fields):
        fields.update(is_staff=True, is_superuser=True)
        return self.create_user(email, password, **fields)

    def get_by_natural_key(self, email):
        return self.get(email__iexact=email)


class User(AbstractBaseUser, PermissionsMixin):
    public_id = PublicIdField(prefix="usr")
    email = models.EmailField(max_length=254, unique=True)
    full_name = models.CharField(max_length=150, blank=True, validators=[no_control_characters])
    is_active = models.BooleanField(default=True)
    is_staff = models.BooleanField(default=False, help_text="May sign in to the admin backoffice.")
    date_joined = models.DateTimeField(default=timezone.now)
    # Part of every session's auth hash: raising it ends all of the user's sessions at their next request (Django
    # compares the hash on every request). Raised on deactivation, two-factor changes and "sign out everywhere".
    session_version = models.PositiveIntegerField(default=0, editable=False)

    objects = UserManager()

    USERNAME_FIELD = "email"
    EMAIL_FIELD = "email"
    REQUIRED_FIELDS: list[str] = []

    class Meta:
        constraints = [
            models.UniqueConstraint(Lower("email"), name="user_email_unique_ci"),
            # Sign-in finds an account with UPPER(email) = UPPER(typed) (email__iexact): two addresses equal under
            # UPPER() but not under LOWER() (victim@maıl.example, with a dotless ı, and victim@mail.example) would
            # both answer, so neither could sign in. One account per UPPER() spelling.
            models.UniqueConstraint(Upper("email"), name="user_email_unique_upper"),
        ]

    def __str__(self):
        return self.email

    def get_session_auth_hash(self):
        return self._session_auth_hash()

    def get_session_auth_fallback_hash(self):
        for fallback_secret in settings.SECRET_KEY_FALLBACKS:
            yield self._session_auth_hash(secret=fallback_secret)

    def _session_auth_hash(self, secret=None):
        # The password hash, as Django hashes it, so a password change ends the other sessions; then the version.
        # Version 0 hashes exactly as Django does, so sessions made before the version existed stay valid.
        value = self.password if not self.session_version else f"{self.password}\x00{self.session_version}"
        return salted_hmac(
            "django.contrib.auth.models.AbstractBaseUser.get_session_auth_hash",
            value,
            secret=secret,
            algorithm="sha256",
        ).hexdigest()


class SignInThrottle(models.Model):
    """Failed sign-ins counted per account (the email tried, whether or not an account has it) and per client
    address. Kept in the database, not the cache, so that sign-in neither fails nor opens up when Redis is down."""

    class Scope(models.TextChoices):
        ACCOUNT = "account", "Account"
        ADDRESS = "address", "Client address"

    scope = models.CharField(max_length=8, choices=Scope.choices)
    key = models.CharField(
        max_length=254,
        help_text="The account's email (the stored one when an account has it, else the one tried, case-folded), or "
        "the client address.",
    )
    failures = models.PositiveIntegerField(default=0, help_text="Failures in the current window.")
    window_started_at = models.DateTimeField(null=True, blank=True)
    lockouts = models.PositiveIntegerField(default=0, help_text="Lock-outs so far; each one lasts twice the last.")
    locked_until = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["scope", "key"], name="signin_throttle_unique")]

    def __str__(self):
        return f"{self.scope} {self.key}"
