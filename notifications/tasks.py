"""Celery tasks of notifications: ids in, one service call each, retries declared here.

Their registered names (`alerts.*`) are older than this app and stay: beat schedules, routes (the notifications
queue) and messages already queued name them.
"""

from celery import shared_task

from notifications import channels, services


@shared_task(
    name="alerts.deliver_notification", bind=True, ignore_result=True, max_retries=len(channels.retry_delays())
)
def deliver_notification(self, delivery_id: int, expected_attempts: int | None = None) -> None:
    delivery, delay = services.delivery_attempt(delivery_id=delivery_id, expected_attempts=expected_attempts)
    if delay is not None and delivery is not None:
        raise self.retry(countdown=delay, args=(delivery_id, delivery.attempts))


@shared_task(
    name="alerts.deliver_email_notice", bind=True, ignore_result=True, max_retries=services.EMAIL_NOTICE_ATTEMPTS
)
def deliver_email_notice(self, notice_id: int, expected_attempts: int | None = None) -> None:
    """A notice by email where no channel carries it (a billing contact; no channel takes platform events, or the
    channel is failing): one try of the kept notice, retried with backoff."""
    retry = services.email_notice_attempt(notice_id=notice_id, expected_attempts=expected_attempts)
    if retry is not None:
        delay, attempts = retry
        raise self.retry(countdown=delay, args=(notice_id, attempts))


# 1, 2, 4 … 32 minutes apart: a mail server down for about an hour still gets the notice.
EMAIL_RETRIES = services.EMAIL_NOTICE_ATTEMPTS - 1


@shared_task(name="alerts.send_email_notice", bind=True, ignore_result=True, max_retries=EMAIL_RETRIES)
def send_email_notice(self, subject: str, body: str, recipients: list[str]) -> None:
    """The notice as its subject, body and recipients: what was queued before notices were kept (EmailNotice) is
    still sent. Nothing queues it any more."""
    try:
        services.email_notice_send(subject=subject, body=body, recipients=recipients)
    except services.EMAIL_ERRORS as exc:
        if self.request.retries >= EMAIL_RETRIES:
            services.email_notice_failure_record(subject=subject, recipients=recipients, error=exc)
            return
        raise self.retry(exc=exc, countdown=60 * 2**self.request.retries) from exc


@shared_task(name="alerts.check_failing_channels", ignore_result=True)
def check_failing_channels() -> None:
    services.failing_channels_check()


@shared_task(name="alerts.resume_deliveries", ignore_result=True)
def resume_deliveries() -> int:
    """Every 5 minutes: re-send deliveries and e-mail notices whose message was lost with a worker or with Redis."""
    return services.deliveries_resume() + services.email_notices_resume()


@shared_task(name="alerts.prune_notifications", ignore_result=True)
def prune_notifications() -> None:
    """Hourly: forget the deliveries and e-mail notices finished more than NOTIFICATION_HISTORY_DAYS ago."""
    services.notifications_prune()
