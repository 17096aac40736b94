#!/usr/bin/env bash
# `make lock`: compiles requirements.in into requirements.lock (runtime: the image) and requirements-dev.in into
# requirements-dev.lock (tests, lint, type checking: every developer machine and CI), both pinned with hashes.
# Existing pins are kept unless a range no longer admits them; `make lock UPGRADE=1` moves everything to the newest
# versions the ranges allow. Hashes are PyPI's own (the index is named), so the image builds anywhere.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
# uv is itself pinned in the dev lock; a first lock on a bare checkout takes any release in the .in range.
[ -x .venv/bin/uv ] || .venv/bin/pip install -q "$(grep -E '^uv[<>=]' requirements-dev.in | cut -d' ' -f1)"

flags=(--universal --python-version 3.11 --generate-hashes --index-url https://pypi.org/simple
  --no-emit-index-url --custom-compile-command "make lock" --quiet)
[ -z "${UPGRADE:-}" ] || flags+=(--upgrade)
.venv/bin/uv pip compile "${flags[@]}" requirements.in -o requirements.lock
.venv/bin/uv pip compile "${flags[@]}" requirements-dev.in -o requirements-dev.lock
echo "requirements.lock and requirements-dev.lock are up to date; commit them with the .in files." >&2
