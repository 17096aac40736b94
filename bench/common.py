"""What every benchmark does first: find the repository, pick the settings and set Django up against DATABASE_URL.

scripts/bench.sh provides a throwaway PostgreSQL (a fresh database per benchmark) and Redis; run benchmarks through
it. A benchmark never reads the checkout's .env: it must not write its data into a developer's `make run` database.
"""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def setup_django() -> None:
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")
    os.environ.setdefault("CONTROLPLANE_ENV", "test")
    os.environ.setdefault("CONTROLPLANE_ENV_FILE", "")
    import django

    django.setup()
