"""What every benchmark does first: find the repository, pick the settings and set Django up against DATABASE_URL.

scripts/bench.sh provides a throwaway PostgreSQL (with its database created) and Redis; run benchmarks through it.
"""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def setup_django() -> None:
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")
    os.environ.setdefault("CONTROLPLANE_ENV", "test")
    import django

    django.setup()
