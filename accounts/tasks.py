"""Tasks of accounts: the emails of sign-up and password reset (sent here, never in the request, so that the request
takes as long whether or not the address has an account), and forgetting sign-in throttle rows that no longer count.
"""

from celery import shared_task

from accounts import services
from accounts.signin import prune_throttles

# SMTP errors are OSErrors (refused connection, timeout, 4xx and 5xx answers): retried with backoff (15 s, doubling,
# five times: about 8 minutes in all). A header that cannot be sent (ValueError) is not retried.


@shared_task(
    name="accounts.send_signup_email", autoretry_for=(OSError,), retry_backoff=15, retry_backoff_max=600, max_retries=5
)
def send_signup_email(email: str, full_name: str = "", organization_name: str = "") -> None:
    services.signup_email_send(email=email, full_name=full_name, organization_name=organization_name)


@shared_task(
    name="accounts.send_password_reset_email",
    autoretry_for=(OSError,),
    retry_backoff=15,
    retry_backoff_max=600,
    max_retries=5,
)
def send_password_reset_email(email: str) -> int:
    return services.password_reset_email_send(email=email)


@shared_task(name="accounts.prune_signin_throttles")
def prune_signin_throttles() -> int:
    return prune_throttles()
