# The two commands of the README. `make run` starts the embedded control plane; `make test` runs the whole suite
# (lint first, then pytest). `make lint` and `make bench` are also used on their own.
.PHONY: run test lint bench schema

run:
	@scripts/run.sh

test:
	@scripts/test.sh

lint:
	@scripts/bootstrap.sh test
	@scripts/lint.sh

bench:
	@scripts/bench.sh

schema:
	@CONTROLPLANE_ENV=development .venv/bin/python manage.py spectacular --validate --fail-on-warn --file var/openapi.yaml
