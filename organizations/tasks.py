"""Tasks of organizations: an invitation's e-mail, sent here and never in the request, so that a mail server that is
down or silent costs the inviter nothing and the e-mail is tried again."""

from celery import shared_task

from organizations import services

# SMTP errors are OSErrors (refused connection, timeout, 4xx and 5xx answers): retried with backoff (15 s, doubling,
# five times: about 8 minutes in all). A header that cannot be sent (ValueError) is not retried.


@shared_task(
    name="organizations.send_invitation_email",
    autoretry_for=(OSError,),
    retry_backoff=15,
    retry_backoff_max=600,
    max_retries=5,
)
def send_invitation_email(invitation_id: int, sealed_token: str) -> bool:
    return services.invitation_email_send(invitation_id=invitation_id, sealed_token=sealed_token)
