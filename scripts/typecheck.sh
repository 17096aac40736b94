#!/usr/bin/env bash
# `make typecheck`: mypy over the whole tree with the Django and DRF plugins (configuration in pyproject.toml): lenient
# for the tree, strict for the modules listed there. The plugin imports the settings, which need these variables.
set -euo pipefail
cd "$(dirname "$0")/.."
export CONTROLPLANE_ENV_FILE= CONTROLPLANE_ENV=test DATABASE_URL="${DATABASE_URL:-postgres://typecheck.invalid/unused}"
.venv/bin/mypy .
