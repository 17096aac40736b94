"""Settings, all read from the environment (django-environ), and from the checkout's `.env` where one exists.

CONTROLPLANE_ENV picks the safety level: `production` (the default, so a forgotten variable fails closed),
`development` (what `make run` writes into `.env`) or `test` (what `make test` sets). Production refuses to start
without a SECRET_KEY or with DEBUG on. One database engine everywhere: PostgreSQL, named by DATABASE_URL.
"""

import os
import tempfile
from pathlib import Path
from typing import Any

import environ
from celery.schedules import crontab
from cryptography.fernet import Fernet
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

# `make run` writes a development `.env` into the checkout so `manage.py` commands reach the same database and Redis.
# Variables already in the environment win over the file; CONTROLPLANE_ENV_FILE names another file, or none when
# empty (the test and benchmark scripts, which must not depend on a developer's local state).
ENV_FILE = os.environ.get("CONTROLPLANE_ENV_FILE", str(BASE_DIR / ".env"))
if ENV_FILE and Path(ENV_FILE).is_file():
    environ.Env.read_env(ENV_FILE, overwrite=False)

env = environ.Env()
VAR_DIR = Path(env.str("CONTROLPLANE_VAR_DIR", default=str(BASE_DIR / "var")))
ENVIRONMENT = env.str("CONTROLPLANE_ENV", default="production")
if ENVIRONMENT not in {"production", "development", "test"}:
    raise ImproperlyConfigured(f"CONTROLPLANE_ENV must be production, development or test, not {ENVIRONMENT!r}")
PRODUCTION = ENVIRONMENT == "production"

DEBUG = env.bool("DEBUG", default=ENVIRONMENT == "development")
if PRODUCTION and DEBUG:
    raise ImproperlyConfigured("DEBUG must be off when CONTROLPLANE_ENV=production")
_DEVELOPMENT_SECRET_KEY = "insecure-development-key-never-use-in-production-0123456789"
if PRODUCTION and not env.str("SECRET_KEY", default=""):
    raise ImproperlyConfigured("SECRET_KEY is required when CONTROLPLANE_ENV=production")
SECRET_KEY = env.str("SECRET_KEY", default=_DEVELOPMENT_SECRET_KEY)
# The default is public (it is in this file), and check --deploy does not know it: copied into a production
# environment it would let anyone forge sessions and password-reset links.
if PRODUCTION and SECRET_KEY == _DEVELOPMENT_SECRET_KEY:
    raise ImproperlyConfigured("SECRET_KEY must not be the development default when CONTROLPLANE_ENV=production")

ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=[] if PRODUCTION else ["*"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])
# The public base URL, used in emails (invitations, password reset) and in the OpenAPI servers list.
PUBLIC_URL = env.str("PUBLIC_URL", default="http://127.0.0.1:8000").rstrip("/")
# The base of the public key infrastructure's URLs the brokers fetch (a deployment's device CRL, named in every device
# certificate it issues): plain http://, as EMQX fetches CRLs over plain HTTP only. PUBLIC_URL when not set.
PKI_BASE_URL = env.str("PKI_BASE_URL", default=PUBLIC_URL).rstrip("/")

INSTALLED_APPS = [
    "accounts.apps.AdminConfig",  # Django's admin, whose site requires staff's second factor
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_htmx",
    "django_celery_beat",
    "django_otp",
    "django_otp.plugins.otp_totp",
    "django_otp.plugins.otp_static",
    "accounts",
    "organizations",
    "audit",
    "projects",
    "notifications",
    "deployments",
    "billing",
    "alerts",
    "networking",
    "iot",
    "console",
    "idempotency",
]

MIDDLEWARE = [
    "controlplane.metrics.PrometheusMiddleware",  # first, so the whole stack is timed
    "controlplane.middleware.RequestIdMiddleware",
    # The security headers wrap everything below them, so every answer carries them: the static files WhiteNoise
    # serves, the 413 of a body over the limit and the HTTPS redirect all answer before the views' layers.
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "controlplane.middleware.ContentSecurityPolicyMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "controlplane.middleware.BodySizeLimitMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django_otp.middleware.OTPMiddleware",  # request.user.is_verified(): a second factor verified this session
    "django.contrib.messages.middleware.MessageMiddleware",
    "organizations.middleware.TwoFactorRequirementMiddleware",
    "idempotency.middleware.IdempotencyMiddleware",
    "controlplane.middleware.SignedInNoStoreMiddleware",
]

ROOT_URLCONF = "controlplane.urls"
WSGI_APPLICATION = "controlplane.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

if not env.str("DATABASE_URL", default=""):
    raise ImproperlyConfigured(
        "DATABASE_URL is required (postgres://user:password@host:port/name). In a checkout, `make run` starts a "
        "local PostgreSQL and writes its URL into .env; `make test` starts a throwaway one."
    )
DATABASES: dict[str, dict[str, Any]] = {"default": dict(env.db("DATABASE_URL"))}
if DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql":
    # Advisory locks, row locks with SKIP LOCKED, COPY and ON CONFLICT are used as PostgreSQL defines them.
    raise ImproperlyConfigured(
        "DATABASE_URL must name a PostgreSQL database (postgres://…): no other engine is supported"
    )
DATABASES["default"].setdefault("CONN_MAX_AGE", env.int("CONN_MAX_AGE", default=60))
# PgBouncer in transaction mode cannot hold server-side cursors across statements.
DATABASES["default"]["DISABLE_SERVER_SIDE_CURSORS"] = env.bool("DISABLE_SERVER_SIDE_CURSORS", default=False)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env.str("REDIS_URL", default="redis://127.0.0.1:6379/0")
# The suite runs on several pytest-xdist workers (gw0, gw1, …) against one Redis: each gets a database of its own
# (1, 2, …), so one worker's FLUSHDB, queued Celery tasks, cache and rate-limit buckets never reach another's. The
# processes a worker starts inherit PYTEST_XDIST_WORKER and land in the same database (the rewrite is idempotent).
_test_worker = env.str("PYTEST_XDIST_WORKER", default="") if ENVIRONMENT == "test" else ""


def _redis_url_of_test_worker(url: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    database = int(_test_worker.removeprefix("gw")) + 1
    if database > 15:  # redis-server's default `databases 16`
        raise ImproperlyConfigured(f"at most 15 pytest-xdist workers share one Redis, not {_test_worker!r}")
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):  # a unix socket names its database otherwise: refuse, never share
        raise ImproperlyConfigured(f"pytest-xdist workers need a redis:// REDIS_URL, not {url!r}")
    return urlunsplit(parts._replace(path=f"/{database}"))


if _test_worker:
    REDIS_URL = _redis_url_of_test_worker(REDIS_URL)
# Redis is on the request path only for rate limits (and this cache): a frozen Redis must cost a request a fraction
# of a second, never hang it. After a failure, each process leaves Redis alone this long before trying it again.
REDIS_OUTAGE_RETRY_SECONDS = env.float("REDIS_OUTAGE_RETRY_SECONDS", default=5.0)
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "OPTIONS": {"socket_timeout": 1.0, "socket_connect_timeout": 1.0},
    }
}

AUTH_USER_MODEL = "accounts.User"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 10}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
if ENVIRONMENT == "test":
    # Hashing cost is not under test; PBKDF2's 10^6 rounds would dominate the suite's run time.
    PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
LOGIN_URL = "console:login"
LOGIN_REDIRECT_URL = "console:home"
LOGOUT_REDIRECT_URL = "console:login"
PASSWORD_RESET_TIMEOUT = 60 * 60 * 3
# Console sessions: two weeks at most, ended by password changes, deactivation and two-factor changes.
SESSION_COOKIE_AGE = env.int("SESSION_COOKIE_AGE", default=60 * 60 * 24 * 14)

# Sign-in throttle (console and admin), per account and per client address: after SIGNIN_MAX_FAILURES failures within
# SIGNIN_FAILURE_WINDOW_SECONDS, sign-in is refused (429) for SIGNIN_LOCKOUT_SECONDS, doubling with each further
# lock-out up to SIGNIN_LOCKOUT_MAX_SECONDS.
SIGNIN_MAX_FAILURES = env.int("SIGNIN_MAX_FAILURES", default=10)
SIGNIN_FAILURE_WINDOW_SECONDS = env.int("SIGNIN_FAILURE_WINDOW_SECONDS", default=15 * 60)
SIGNIN_LOCKOUT_SECONDS = env.int("SIGNIN_LOCKOUT_SECONDS", default=15 * 60)
SIGNIN_LOCKOUT_MAX_SECONDS = env.int("SIGNIN_LOCKOUT_MAX_SECONDS", default=24 * 60 * 60)
# Two-factor authentication (django-otp): the name authenticator apps show beside the account.
OTP_TOTP_ISSUER = env.str("OTP_TOTP_ISSUER", default="MQTT Cloud")
# Staff never read a user's TOTP key or recovery codes in the admin.
OTP_ADMIN_HIDE_SENSITIVE_DATA = True

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = env.str("STATIC_ROOT", default=str(VAR_DIR / "static"))
WHITENOISE_USE_FINDERS = WHITENOISE_AUTOREFRESH = not PRODUCTION  # development serves straight from the apps
# WhiteNoise serves static files from the web process (gunicorn serves none): hashed names, compressed, cached.
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if PRODUCTION
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}

EMAIL_CONFIG = env.email_url("EMAIL_URL", default="consolemail://")
vars().update(EMAIL_CONFIG)
# Seconds an SMTP connection may block. Django's default is none: a relay that accepts and never answers would hold a
# web request or a worker for good, and an e-mail notice's try must end within its lease (notifications.services).
EMAIL_TIMEOUT = env.int("EMAIL_TIMEOUT", default=30)
# Seconds an e-mail tried while a person may be waiting (a notice tried at once, as the request commits, because the
# Celery broker is down) may block: well under the web server's 30 s worker timeout, so a relay that does not answer
# costs the request seconds, not its connection.
EMAIL_REQUEST_TIMEOUT = env.float("EMAIL_REQUEST_TIMEOUT", default=5.0)
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="MQTT Cloud <no-reply@localhost>")
# Days a finished notification (a channel's delivery with its attempts, an e-mail notice) is kept; the hourly
# alerts.prune_notifications forgets older ones. Deliveries and notices still owed are kept whatever their age.
NOTIFICATION_HISTORY_DAYS = env.int("NOTIFICATION_HISTORY_DAYS", default=90)
if not 1 <= NOTIFICATION_HISTORY_DAYS <= 3650:
    raise ImproperlyConfigured(
        f"NOTIFICATION_HISTORY_DAYS must be from 1 to 3650 (ten years), not {NOTIFICATION_HISTORY_DAYS}"
    )

# Bodies above this answer 413 before any view parses them.
DATA_UPLOAD_MAX_MEMORY_SIZE = 1024 * 1024

# --- Security: on in production, relaxed only where plain-HTTP local development needs it. ---
SECURE_PROXY_SSL_HEADER = (
    ("HTTP_X_FORWARDED_PROTO", "https") if env.bool("TRUST_X_FORWARDED_PROTO", default=PRODUCTION) else None
)
USE_X_FORWARDED_HOST = env.bool("USE_X_FORWARDED_HOST", default=False)
# How many reverse proxies sit in front of us; the client IP is taken that many hops from the right of X-Forwarded-For.
TRUSTED_PROXY_COUNT = env.int("TRUSTED_PROXY_COUNT", default=0)
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=PRODUCTION)
# Probes speak plain HTTP inside the cluster, and brokers fetch devices' CRLs over plain HTTP (iot.pki).
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$", r"^pki/"]
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = PRODUCTION
SESSION_COOKIE_HTTPONLY = True
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=31536000 if PRODUCTION else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = PRODUCTION
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=False)
# Joining the browsers' HSTS preload list binds the operator's whole domain, subdomains included, for months; it is
# the operator's decision (SECURE_HSTS_PRELOAD=true), not a default. Until they make it, the reminder is silenced.
SILENCED_SYSTEM_CHECKS = [] if SECURE_HSTS_PRELOAD else ["security.W021"]
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
# Swagger UI and ReDoc are served from our own static files (drf-spectacular-sidecar), so 'self' suffices for
# scripts; their generated styles and ReDoc's web worker need the two relaxations below.
CONTENT_SECURITY_POLICY = env.str(
    "CONTENT_SECURITY_POLICY",
    default="default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
    "script-src 'self'; worker-src 'self' blob:; font-src 'self' data:; "
    "frame-ancestors 'none'; base-uri 'self'; form-action 'self'",
)

# /metrics (Prometheus) answers only `Authorization: Bearer <METRICS_TOKEN>`; unset in production means 404.
METRICS_TOKEN = env.str("METRICS_TOKEN", default="")

# Stripe: without a secret key, invoices are still issued but cards are not collected.
STRIPE_SECRET_KEY = env.str("STRIPE_SECRET_KEY", default="")
STRIPE_WEBHOOK_SECRET = env.str("STRIPE_WEBHOOK_SECRET", default="")
STRIPE_API_BASE = env.str("STRIPE_API_BASE", default="")  # tests point the real client at an HTTP fake
# Seconds one call to Stripe may wait for its answer before the client tries again, instead of stripe-python's 80: in
# a task (three tries), and in a page or API request (two tries, within the web server's 30 s worker timeout).
STRIPE_TIMEOUT_SECONDS = env.float("STRIPE_TIMEOUT_SECONDS", default=20.0)
STRIPE_REQUEST_TIMEOUT_SECONDS = env.float("STRIPE_REQUEST_TIMEOUT_SECONDS", default=8.0)

# The seller printed on invoices; its country decides the domestic VAT treatment.
SELLER_NAME = env.str("SELLER_NAME", default="MQTT Cloud GmbH")
SELLER_COUNTRY = env.str("SELLER_COUNTRY", default="DE")
SELLER_ADDRESS = env.str("SELLER_ADDRESS", default="Example Street 1, 10115 Berlin, Germany")
SELLER_VAT_NUMBER = env.str("SELLER_VAT_NUMBER", default="DE136695976")

# Billing policy (billing app). Accounts are billed in a currency the catalog has prices in; this one by default.
BILLING_DEFAULT_CURRENCY = env.str("BILLING_DEFAULT_CURRENCY", default="USD")
BILLING_PAYMENT_TERMS_DAYS = env.int("BILLING_PAYMENT_TERMS_DAYS", default=14)
BILLING_OVERDUE_REMINDER_DAYS = [1, 3, 7]  # reminders this many days after the due date
BILLING_GRACE_DAYS = env.int("BILLING_GRACE_DAYS", default=14)  # then the account's deployments are stopped
BILLING_DELETE_AFTER_STOPPED_DAYS = env.int("BILLING_DELETE_AFTER_STOPPED_DAYS", default=7)
# Metering catches up any gap in full, this many hours per committed batch.
BILLING_METERING_BATCH_HOURS = env.int("BILLING_METERING_BATCH_HOURS", default=24)
ANNUAL_QUOTE_VALID_DAYS = 7
ANNUAL_REMINDER_DAYS = 15
INVOICE_NUMBER_PREFIX = env.str("INVOICE_NUMBER_PREFIX", default="MQC")
VIES_URL = env.str("VIES_URL", default="")  # empty: the European Commission's VIES; tests point it at a fake

# Encryption for secrets we must read back (kubeconfigs, monitoring credentials): Fernet keys, newest first.
FIELD_ENCRYPTION_KEYS = env.list("FIELD_ENCRYPTION_KEYS", default=[])
# Sign-up links, stored API answers, secrets shown once in the console and every credential read back go through
# them: production without a key, or a value that is not a Fernet key, is refused at start, not with a 500 at the
# first encrypted write. (Outside production a key derived from SECRET_KEY stands in: controlplane.crypto.)
if PRODUCTION and not FIELD_ENCRYPTION_KEYS:
    raise ImproperlyConfigured("FIELD_ENCRYPTION_KEYS is required when CONTROLPLANE_ENV=production")
for _position, _key in enumerate(FIELD_ENCRYPTION_KEYS, 1):
    try:
        Fernet(_key)
    except (ValueError, TypeError):
        raise ImproperlyConfigured(
            f"FIELD_ENCRYPTION_KEYS: key {_position} is not a Fernet key (32 url-safe base64-encoded bytes)"
        ) from None

# Deployments: where the local driver keeps its brokers (must be traversable by the `mosquitto` user: mode 0755),
# EMQX Cloud's once-per-12-hours rule for tier changes, and how often the reconciler's sweep runs.
LOCAL_BROKERS_DIR = Path(env.str("LOCAL_BROKERS_DIR", default=str(VAR_DIR / "brokers")))
TIER_CHANGE_MIN_INTERVAL_HOURS = env.float("TIER_CHANGE_MIN_INTERVAL_HOURS", default=12.0)
RECONCILE_SWEEP_SECONDS = env.float("RECONCILE_SWEEP_SECONDS", default=30.0)
RECONCILE_RESYNC_SECONDS = env.float("RECONCILE_RESYNC_SECONDS", default=300.0)
# VPC peering polls: backoff from BASE doubling to MAX while waiting on the provider or the customer; an active
# peering is checked every RESYNC seconds (how fast a peering deleted on the customer's side is noticed).
VPC_PEERING_POLL_BASE_SECONDS = env.float("VPC_PEERING_POLL_BASE_SECONDS", default=2.0)
VPC_PEERING_POLL_MAX_SECONDS = env.float("VPC_PEERING_POLL_MAX_SECONDS", default=300.0)
VPC_PEERING_RESYNC_SECONDS = env.float("VPC_PEERING_RESYNC_SECONDS", default=300.0)
# A peering awaiting the customer is looked at less and less often, up to this interval...
VPC_PEERING_AWAITING_POLL_MAX_SECONDS = env.float("VPC_PEERING_AWAITING_POLL_MAX_SECONDS", default=900.0)
# ...and fails as expired (what we made at the provider removed, the customer notified) after this long: 7 days.
VPC_PEERING_AWAITING_TTL_SECONDS = env.float("VPC_PEERING_AWAITING_TTL_SECONDS", default=7 * 24 * 3600.0)
# A CA bundle the cloud SDKs verify the providers' endpoints with (a TLS-inspecting proxy); empty: the system's.
CLOUD_CA_BUNDLE = env.str("CLOUD_CA_BUNDLE", default="")
# The EMQX Enterprise licence key every Kubernetes deployment runs with (docs/operations/emqx-operator.md): without
# one EMQX allows 25 sessions (5.8) or a single node (5.9+), so the Kubernetes driver refuses to render.
EMQX_LICENSE_KEY = env.str("EMQX_LICENSE_KEY", default="")
# How often beat has every local broker meant to be serving looked at (a flock and a few /proc reads each): a dead one
# is recorded as a crash and restored within about this long, whatever the resync above says.
BROKER_WATCH_SECONDS = env.int("BROKER_WATCH_SECONDS", default=5)
# A process is not a serving broker: each is sent a CONNECT this often, and one that answers none for HUNG seconds
# (a stopped one at once) is dead too.
BROKER_ANSWER_CHECK_SECONDS = env.float("BROKER_ANSWER_CHECK_SECONDS", default=15.0)
BROKER_HUNG_SECONDS = env.float("BROKER_HUNG_SECONDS", default=10.0)
# A broker that crashed CRASHES times within WINDOW seconds is crash-looping: its restarts wait BACKOFF seconds,
# doubling with each further crash up to MAX (docs/operations/local-brokers.md).
BROKER_CRASH_LOOP_CRASHES = env.int("BROKER_CRASH_LOOP_CRASHES", default=3)
BROKER_CRASH_LOOP_WINDOW_SECONDS = env.float("BROKER_CRASH_LOOP_WINDOW_SECONDS", default=600.0)
BROKER_CRASH_BACKOFF_SECONDS = env.float("BROKER_CRASH_BACKOFF_SECONDS", default=10.0)
BROKER_CRASH_BACKOFF_MAX_SECONDS = env.float("BROKER_CRASH_BACKOFF_MAX_SECONDS", default=300.0)

# Alerts: webhook/Slack/PagerDuty destinations on private or loopback addresses are refused unless an operator
# allows them (self-hosted receivers on an internal network; the tests' loopback receivers).
ALLOW_PRIVATE_WEBHOOKS = env.bool("ALLOW_PRIVATE_WEBHOOKS", default=False)
COLLECT_INTERVAL_SECONDS = 60
# One broker's collection never takes longer than this (MQTT connect and $SYS read, or each EMQX API call).
COLLECT_TIMEOUT_SECONDS = env.float("COLLECT_TIMEOUT_SECONDS", default=5.0)

# --- IoT platform (Premium): the platform agent (`manage.py platform_agent`, docs/iot.md) ---
# A lease not renewed for this long is free for another agent: a killed agent's deployments move within it plus
# one heartbeat.
IOT_AGENT_LEASE_SECONDS = env.float("IOT_AGENT_LEASE_SECONDS", default=10.0)
IOT_AGENT_HEARTBEAT_SECONDS = env.float("IOT_AGENT_HEARTBEAT_SECONDS", default=2.0)
IOT_AGENT_MAX_DEPLOYMENTS = env.int("IOT_AGENT_MAX_DEPLOYMENTS", default=200)
# Touched on every pass of the agent's loop (every heartbeat, the database answering or not); the chart's liveness
# probe restarts an agent whose file goes stale, i.e. whose loop hangs.
IOT_AGENT_LIVENESS_FILE = env.str(
    "IOT_AGENT_LIVENESS_FILE", default=str(Path(tempfile.gettempdir()) / "controlplane-agent.alive")
)
IOT_SHADOW_HISTORY_DAYS = env.int("IOT_SHADOW_HISTORY_DAYS", default=30)
# Processes that apply a deployment's codec rules on a local region, each with its own broker connection in one MQTT 5
# shared subscription: decoding scales with cores. 1 applies them in the agent process itself (ordered per topic).
# Per deployment with rules, each a Python process with Django loaded (tens of MB): 2 by default (1 on one CPU), more
# where few deployments carry heavy rule traffic.
IOT_CODEC_WORKERS = env.int("IOT_CODEC_WORKERS", default=max(1, min(os.cpu_count() or 1, 2)))

# --- REST API ---
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "organizations.authentication.ApiKeyAuthentication",
        "controlplane.api.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["controlplane.api.parsers.BoundedJSONParser"],
    # No OPTIONS introspection: the OpenAPI document describes every operation, and OPTIONS answers 405.
    "DEFAULT_METADATA_CLASS": None,
    "DEFAULT_PAGINATION_CLASS": "controlplane.api.pagination.CursorPagination",
    "DEFAULT_FILTER_BACKENDS": ["controlplane.api.filters.FilterBackend"],
    "DEFAULT_THROTTLE_CLASSES": ["controlplane.api.ratelimit.HierarchicalRateThrottle"],
    "DEFAULT_SCHEMA_CLASS": "controlplane.api.schema.AutoSchema",
    "EXCEPTION_HANDLER": "controlplane.api.problems.exception_handler",
    "PAGE_SIZE": 50,
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "MQTT Cloud control plane API",
    "DESCRIPTION": (
        "Organizations, projects, sub-accounts, API keys and MQTT broker deployments.\n\n"
        "Authenticate with `Authorization: Bearer <api key secret>` or a console session. "
        "Errors are `application/problem+json` (RFC 9457). Mutating calls accept `Idempotency-Key`."
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SCHEMA_PATH_PREFIX": r"/api/v1",
    "COMPONENT_SPLIT_REQUEST": True,
    "ENUM_NAME_OVERRIDES": {
        "DeploymentRateLimitLevelEnum": "deployments.models.RateLimitPolicy.Level",
        "RoleEnum": "organizations.roles.Role",
        "OrganizationRoleEnum": "organizations.roles.ORGANIZATION_ROLE_CHOICES",
        "ProjectRoleEnum": "organizations.roles.PROJECT_ROLE_CHOICES",
        "AlertStatusEnum": "alerts.models.AlertStatus",
        "AlertRuleKindEnum": "alerts.models.AlertRule.Kind",
        "MaintenanceWindowStatusEnum": "deployments.models.MaintenanceWindow.Status",
        "TlsCertificateKindEnum": "deployments.models.TlsCertificate.Kind",
        "TlsCertificateSourceEnum": "deployments.models.TlsCertificate.Source",
        "EdgeNodeKindEnum": "iot.edge_models.EdgeNode.Kind",
        "CodecSchemaTypeEnum": "iot.codec_models.Schema.Type",
        "TypeEnum": "notifications.models.NotificationChannel.Type",  # its name before codec schemas had a type too
    },
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # persistAuthorization off: Swagger UI would keep the API key a person authorizes with in localStorage, where the
    # next person at a shared computer, or any script on the console's origin, could read it; it lives with the page.
    "SWAGGER_UI_SETTINGS": {"persistAuthorization": False, "displayOperationId": True, "tryItOutEnabled": True},
    "APPEND_COMPONENTS": {
        "securitySchemes": {
            "ApiKey": {"type": "http", "scheme": "bearer", "description": "An API key secret (`cpk_…`)."},
        }
    },
    "SECURITY": [{"ApiKey": []}, {"cookieAuth": []}],
    "POSTPROCESSING_HOOKS": ["drf_spectacular.hooks.postprocess_schema_enums"],
}

# Idempotency keys are remembered this long.
IDEMPOTENCY_TTL_SECONDS = 24 * 60 * 60

# Rate limits: token buckets (capacity, refill per second). Per-organization overrides live on Organization.
RATE_LIMITS = {
    "platform": env.tuple("RATE_LIMIT_PLATFORM", cast=float, default=(2000.0, 1000.0)),
    "organization": env.tuple("RATE_LIMIT_ORGANIZATION", cast=float, default=(600.0, 20.0)),
    "principal": env.tuple("RATE_LIMIT_PRINCIPAL", cast=float, default=(300.0, 10.0)),
}
RATE_LIMITS_ENABLED = env.bool("RATE_LIMITS_ENABLED", default=True)
# How long a rate-limit decision may wait for Redis before the per-process buckets decide instead.
RATE_LIMIT_REDIS_TIMEOUT_SECONDS = env.float("RATE_LIMIT_REDIS_TIMEOUT_SECONDS", default=0.5)

# --- Celery ---
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default=REDIS_URL)
if _test_worker:
    CELERY_BROKER_URL = _redis_url_of_test_worker(CELERY_BROKER_URL)
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_TASK_TIME_LIMIT = 300
CELERY_TASK_SOFT_TIME_LIMIT = 240
# A task still running after this many seconds writes the stack of every thread of its worker process to the
# worker's stderr, once (controlplane.celery): where a hung task waits, before the soft limit interrupts it. 0: never.
TASK_STACK_DUMP_SECONDS = env.float("TASK_STACK_DUMP_SECONDS", default=120.0)
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# Publishing happens in requests (after commit): against a frozen or stopped broker it must fail within about a second
# or two and leave the work to the sweeps, never retry for long. Workers reconnect on their own.
CELERY_BROKER_CONNECTION_TIMEOUT = 1.0
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 600, "socket_timeout": 1.0, "socket_connect_timeout": 1.0}
CELERY_TASK_PUBLISH_RETRY_POLICY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.2}
BROKER_OUTAGE_RETRY_SECONDS = env.float("BROKER_OUTAGE_RETRY_SECONDS", default=5.0)
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TASK_ROUTES = {
    "deployments.*": {"queue": "provisioning"},
    "billing.*": {"queue": "billing"},
    "alerts.collect_*": {"queue": "monitoring"},
    "alerts.evaluate_*": {"queue": "monitoring"},
    "alerts.*": {"queue": "notifications"},
    "idempotency.*": {"queue": "default"},
    "accounts.*": {"queue": "default"},
    "organizations.*": {"queue": "default"},
    "networking.*": {"queue": "provisioning"},
}
CELERY_ALL_QUEUES = ["default", "provisioning", "billing", "monitoring", "notifications"]
# django-celery-beat's DatabaseScheduler that also touches BEAT_LIVENESS_FILE on every tick (at least every 5 s), the
# file the chart's liveness probe reads: a beat whose loop hangs goes stale and is restarted.
CELERY_BEAT_SCHEDULER = "controlplane.beat:LivenessDatabaseScheduler"
BEAT_LIVENESS_FILE = env.str("BEAT_LIVENESS_FILE", default=str(Path(tempfile.gettempdir()) / "controlplane-beat.alive"))
CELERY_BEAT_SCHEDULE = {
    # Stored responses can hold secrets: none is kept (or replayed) past IDEMPOTENCY_TTL_SECONDS.
    "idempotency.prune_records": {"task": "idempotency.prune_records", "schedule": crontab(minute="*/5")},
    "accounts.prune_signin_throttles": {"task": "accounts.prune_signin_throttles", "schedule": crontab(minute=37)},
    "billing.meter_usage": {"task": "billing.meter_usage", "schedule": crontab(minute=2)},
    "billing.close_invoices": {
        "task": "billing.close_invoices",
        "schedule": crontab(minute=20, hour=0, day_of_month=1),
    },
    "billing.process_overdue": {"task": "billing.process_overdue", "schedule": crontab(minute=40, hour=6)},
    "billing.process_annual_renewals": {"task": "billing.process_annual_renewals", "schedule": crontab(minute=10)},
    "billing.check_vat_numbers": {"task": "billing.check_vat_numbers", "schedule": crontab(minute="*/5")},
    # The ECB publishes its reference rates around 16:00 CET on working days.
    "billing.load_exchange_rates": {"task": "billing.load_exchange_rates", "schedule": crontab(minute=30, hour=15)},
    "deployments.sweep_reconcile": {"task": "deployments.sweep_reconcile", "schedule": RECONCILE_SWEEP_SECONDS},
    # On the provisioning queue: the workers that run the local driver are the ones that can see its brokers. A look
    # not taken within its period is dropped, not queued up behind the next one.
    "deployments.watch_brokers": {
        "task": "deployments.watch_brokers",
        "schedule": float(BROKER_WATCH_SECONDS),
        "options": {"expire_seconds": BROKER_WATCH_SECONDS},
    },
    "deployments.start_due_maintenance": {"task": "deployments.start_due_maintenance", "schedule": crontab()},
    # Collection fans out one task per running deployment; each evaluates its deployment's rules once stored.
    "alerts.collect_metrics": {"task": "alerts.collect_metrics", "schedule": crontab()},
    "alerts.rollup_metrics": {"task": "alerts.rollup_metrics", "schedule": crontab(minute="*/5")},
    "alerts.prune_metrics": {"task": "alerts.prune_metrics", "schedule": crontab(minute=17)},
    "alerts.evaluate_budget_rules": {"task": "alerts.evaluate_budget_rules", "schedule": crontab(minute="*/15")},
    "alerts.check_failing_channels": {"task": "alerts.check_failing_channels", "schedule": crontab(minute=27)},
    "alerts.prune_notifications": {"task": "alerts.prune_notifications", "schedule": crontab(minute=47)},
    # A delivery whose retry message was lost (worker killed, Redis flushed) is picked up again.
    "alerts.resume_deliveries": {"task": "alerts.resume_deliveries", "schedule": crontab(minute="*/5")},
    "alerts.notify_failed_deployments": {"task": "alerts.notify_failed_deployments", "schedule": crontab(minute="*/5")},
    # Re-drives VPC peering polls a lost task left behind, and feeds the peering-abnormal metric every minute.
    "networking.sweep_peerings": {"task": "networking.sweep_peerings", "schedule": crontab()},
    # Premium trials: reminders 3 days and 1 day before the end, the end itself, deletions after the retention.
    "iot.sweep_premium_trials": {"task": "iot.sweep_premium_trials", "schedule": crontab(minute="*/10")},
    # Codec rules on EMQX regions: a push lost to a Redis outage, or a rule edited in EMQX's dashboard, is repaired.
    "iot.sweep_codecs_emqx": {"task": "iot.sweep_codecs_emqx", "schedule": crontab(minute="*/5")},
}
CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=False)

# --- Logging: JSON lines with the request id. ---
LOG_LEVEL = env.str("LOG_LEVEL", default="INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"request_context": {"()": "controlplane.logging.RequestContextFilter"}},
    "formatters": {
        "json": {
            "()": "controlplane.logging.JsonFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s %(request_id)s %(operation_id)s",
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
        },
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": env.str("LOG_FORMAT", default="json" if PRODUCTION else "plain"),
            "filters": ["request_context"],
        }
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {"django.server": {"level": "WARNING"}},
}
