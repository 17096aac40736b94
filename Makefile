# The two commands of the README. `make run` starts the embedded control plane; `make test` runs the whole suite.
.PHONY: run test bench schema

run:
	@scripts/run.sh

test:
	@scripts/test.sh

bench:
	@scripts/bench.sh

schema:
	@CONTROLPLANE_ENV=development .venv/bin/python manage.py spectacular --validate --fail-on-warn --file var/openapi.yaml
