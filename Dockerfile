# syntax=docker/dockerfile:1.7
# The control plane's production image: one image for web, workers, beat and the migration/seed jobs.
#
#   web (default):  gunicorn controlplane.wsgi:application --bind 0.0.0.0:8000
#   worker:         celery -A controlplane worker -Q provisioning --concurrency 4
#   beat:           celery -A controlplane beat --scheduler controlplane.beat:LivenessDatabaseScheduler
#   migrations:     python manage.py migrate --noinput
#
# Runs as uid 10001 on a read-only root filesystem: only /tmp and /var/lib/controlplane need to be writable.
# Pin the base by digest in CI (python:3.11.13-slim-bookworm@sha256:...) once the registry is reachable from there.

# --- builder: compilers live here and never reach the final image --------------------------------------------------
FROM python:3.11.13-slim-bookworm AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential libpq-dev \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /build
COPY requirements.lock .
# The runtime lock only (no test or lint tools), every package pinned and checked against its recorded hash.
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --require-hashes -r requirements.lock

# --- runtime ------------------------------------------------------------------------------------------------------
FROM python:3.11.13-slim-bookworm AS runtime

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CONTROLPLANE_ENV=production \
    STATIC_ROOT=/app/staticfiles \
    CONTROLPLANE_VAR_DIR=/var/lib/controlplane \
    HOME=/tmp

RUN groupadd --system --gid 10001 controlplane \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin controlplane \
 && mkdir -p /var/lib/controlplane \
 && chown 10001:10001 /var/lib/controlplane

COPY --from=builder /opt/venv /opt/venv

WORKDIR /app
# The code stays owned by root: the app user can read it but never rewrite it.
COPY . /app

# Settings refuse to load without SECRET_KEY and DATABASE_URL in production; collectstatic gets a random key that
# lives only for this command, so no key (not even a throwaway one) is recorded in an ENV, an ARG or the image
# history, and a database URL it never connects to (the .invalid name cannot resolve).
RUN SECRET_KEY="$(python -c 'import secrets; print(secrets.token_urlsafe(50))')" \
    DATABASE_URL=postgres://collectstatic.invalid/unused \
    python manage.py collectstatic --noinput \
 && python -m compileall -q /app

USER 10001:10001
EXPOSE 8000

# No HEALTHCHECK: Kubernetes ignores it (the chart probes /healthz and /readyz), and Django answers 400 to any Host
# not in ALLOWED_HOSTS, which a generic in-container check cannot know.
# The access log line without the query string and the Referer (invitation and sign-up links hold their token there),
# and with a password-reset link's token written as [token] (controlplane.gunicorn_logging); the chart's
# gunicorn.conf.py sets the same.
CMD ["gunicorn", "controlplane.wsgi:application", "--bind", "0.0.0.0:8000", "--workers", "3", "--access-logfile", "-", \
     "--access-logformat", "%(h)s %(l)s %(u)s %(t)s \"%(m)s %(U)s %(H)s\" %(s)s %(b)s \"%(a)s\"", \
     "--logger-class", "controlplane.gunicorn_logging.AccessLogger"]
