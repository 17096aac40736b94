"""The shared Celery worker of tests/celery_worker.py: handed from one test to the next only when nothing of the
earlier test can reach the later one, parked (consuming nothing) between the two, and still fed tasks after the test
Redis database was emptied under it."""

import datetime
import time

from django.utils import timezone

from idempotency.models import IdempotencyRecord
from idempotency.tasks import prune_records
from tests.celery_worker import QUEUES, hand_on, shared_worker


def _expired_record() -> IdempotencyRecord:
    return IdempotencyRecord.objects.create(
        scope="test", key="k", fingerprint="f", created_at=timezone.now() - datetime.timedelta(days=30)
    )


def _wait(condition, what: str, worker, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} within {timeout} s\n{worker.logs()}"
        time.sleep(0.1)


def test_a_task_still_reaches_the_shared_worker_when_the_test_redis_was_emptied_while_it_ran(
    celery_worker, redis_clean
):
    # This process publishes once before the flush, as an earlier test of the module would have.
    first = _expired_record()
    prune_records.delay()
    _wait(lambda: not IdempotencyRecord.objects.filter(pk=first.pk).exists(), "the first task ran", celery_worker)

    record = _expired_record()
    redis_clean.set("left-by-an-earlier-test", 1)
    redis_clean.flushdb()  # what redis_clean does between two tests
    assert not redis_clean.exists("left-by-an-earlier-test")
    assert celery_worker.holds_no_task()  # its remote control still answers
    prune_records.delay()
    _wait(lambda: not IdempotencyRecord.objects.filter(pk=record.pk).exists(), "the task ran", celery_worker)


def test_the_worker_stays_for_the_next_test_only_when_it_holds_no_task_left_by_this_one(celery_worker, redis_clean):
    pid = celery_worker.proc.pid
    assert celery_worker.holds_no_task()
    assert hand_on(celery_worker, redis_clean) is True
    assert celery_worker.running() and celery_worker.proc.pid == pid
    assert shared_worker(dict(celery_worker.env), celery_worker.log_dir) is celery_worker  # as the next test asks

    # A task waiting for its countdown is held by the worker itself, not by Redis: emptying the queues cannot drop it.
    prune_records.apply_async(countdown=600)
    _wait(lambda: not celery_worker.holds_no_task(), "the worker took the task", celery_worker)
    assert hand_on(celery_worker, redis_clean) is False
    assert not celery_worker.running()


def test_a_test_that_sets_another_environment_gets_a_worker_of_its_own(celery_worker, redis_clean):
    first = celery_worker.proc.pid
    assert shared_worker(dict(celery_worker.env), celery_worker.log_dir) is celery_worker
    assert celery_worker.proc.pid == first

    other = shared_worker({**celery_worker.env, "EMAIL_URL": "smtp://127.0.0.1:9"}, celery_worker.log_dir)
    try:
        assert other is not celery_worker and not celery_worker.running()
        assert other.running() and other.proc.pid != first and other.env["EMAIL_URL"] == "smtp://127.0.0.1:9"
        # Its log is its own, in the same folder: what the test reads of it is what it logged.
        assert other.log_path != celery_worker.log_path and other.node_name != celery_worker.node_name
        assert " ready." in other.logs()
        # Started means answering remote control too (the worker logs "ready." before it subscribes to it).
        assert other.holds_no_task()
    finally:
        other.stop()


def test_a_parked_worker_takes_no_task_until_a_test_asks_for_it_again(celery_worker, redis_clean):
    # Between two tests the worker is parked: a test that did not ask for a worker enqueues as it would alone.
    record = _expired_record()
    pid = celery_worker.proc.pid
    assert hand_on(celery_worker, redis_clean) is True
    prune_records.delay()
    time.sleep(1.5)
    assert sum(redis_clean.llen(queue) for queue in QUEUES.split(",")) == 1, "the parked worker took the task"
    assert IdempotencyRecord.objects.filter(pk=record.pk).exists()

    assert shared_worker(dict(celery_worker.env), celery_worker.log_dir) is celery_worker
    assert celery_worker.proc.pid == pid
    _wait(lambda: not IdempotencyRecord.objects.filter(pk=record.pk).exists(), "the task ran", celery_worker)
