"""Housekeeping for accounts: forgets sign-in throttle rows that no longer count."""

from celery import shared_task

from accounts.signin import prune_throttles


@shared_task(name="accounts.prune_signin_throttles")
def prune_signin_throttles() -> int:
    return prune_throttles()
