#!/usr/bin/env bash
# `make lint`: ruff's lint rules and its formatter over the whole tree, then the import-linter's layers contract (which
# app may import which). Configuration for all three in pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check .
.venv/bin/ruff format --check .

# A new top-level package the import-linter does not know would be checked by nothing: name it or fail.
.venv/bin/python - <<'PY'
import pathlib
import sys
import tomllib

listed = set(tomllib.loads(pathlib.Path("pyproject.toml").read_text())["tool"]["importlinter"]["root_packages"])
present = {init.parent.name for init in pathlib.Path(".").glob("*/__init__.py")} - {"tests", "bench"}
if missing := sorted(present - listed):
    sys.exit(f"pyproject.toml [tool.importlinter] root_packages lacks {missing}: add each, and its layer")
PY
out=$(mktemp)
if .venv/bin/lint-imports --no-cache >"$out" 2>&1; then
  grep -E "^Contracts:|^- No matches for ignored import" "$out" || true  # a stale ignore: remove it from pyproject.toml
  rm -f "$out"
else
  sed -n '/^Contracts$/,$p' "$out"
  rm -f "$out"
  exit 1
fi
