"""Real outages for tests: a closed loopback port stands for a server that is down (Redis, SMTP, a receiver)."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def redis_unreachable() -> Iterator[None]:
    """Celery's broker is a closed port (a real unreachable Redis, not a stand-in) until the block ends: what a worker
    does after a fork, so the next publish takes a connection to it."""
    from controlplane import tasks as publishing
    from controlplane.celery import app

    def use_broker(url):
        app.conf.broker_url = url
        app._pool = None
        app.amqp._producer_pool = None

    previous = app.conf.broker_url, app.conf.broker_transport_options
    app.conf.broker_transport_options = {**(previous[1] or {}), "max_retries": 0}
    use_broker(f"redis://127.0.0.1:{closed_port()}/0")
    publishing.broker.reset()
    try:
        yield
    finally:
        app.conf.broker_transport_options = previous[1]
        use_broker(previous[0])
        publishing.broker.reset()


@contextlib.contextmanager
def silent_port() -> Iterator[int]:
    """A loopback port whose connections the kernel accepts and nobody ever answers (a server that hangs: a mail
    relay that never greets), until the block ends."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        yield silent.getsockname()[1]


@contextlib.contextmanager
def soft_time_limit_on_connect() -> Iterator[int]:
    """A loopback port that accepts connections and never answers; the moment the first one arrives, Celery's soft time
    limit strikes this process's main thread as it strikes a worker's: billiard's own handler on its own signal
    (SIGUSR1), which raises SoftTimeLimitExceeded in whatever code runs then: here, the client waiting for the answer.
    Later connections are only left unanswered."""
    import signal
    import threading

    from billiard.pool import soft_timeout_sighandler

    main = threading.main_thread().ident
    assert main is not None and threading.get_ident() == main, "signals strike the main thread only"
    previous = signal.signal(signal.SIGUSR1, soft_timeout_sighandler)
    accepted: list[socket.socket] = []
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)

        def strike() -> None:
            try:
                connection, _address = server.accept()
            except OSError:  # the block ended with no connection
                return
            accepted.append(connection)
            signal.pthread_kill(main, signal.SIGUSR1)

        threading.Thread(target=strike, daemon=True).start()
        try:
            yield server.getsockname()[1]
        finally:
            signal.signal(signal.SIGUSR1, previous)
            for connection in accepted:
                connection.close()
