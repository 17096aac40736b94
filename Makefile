# The two commands of the README. `make run` starts the embedded control plane; `make test` runs the whole suite
# (lint and type checking first, then pytest). `make lint`, `make typecheck`, `make lock` and `make bench` are also
# used on their own.
.PHONY: run test lint typecheck lock bench schema

run:
	@scripts/run.sh

test:
	@scripts/test.sh

lint:
	@scripts/bootstrap.sh test
	@scripts/lint.sh

typecheck:
	@scripts/bootstrap.sh test
	@scripts/typecheck.sh

# Re-pin requirements.lock and requirements-dev.lock from the .in files (UPGRADE=1: newest versions the ranges allow).
lock:
	@scripts/lock.sh

bench:
	@scripts/bench.sh

schema:
	@CONTROLPLANE_ENV=development .venv/bin/python manage.py spectacular --validate --fail-on-warn --file var/openapi.yaml
