"""The IoT platform's backoffice pages: Premium trials, in iot.trials_admin."""

from iot import trials_admin  # noqa: F401
