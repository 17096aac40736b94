#!/usr/bin/env bash
# `make lint`: ruff's lint rules and its formatter, over the whole tree (configuration in pyproject.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check .
.venv/bin/ruff format --check .
