"""A real SMTP server on a loopback port, for tests whose email is sent by a Celery worker (another process, so not
Django's mailoutbox) or whose timing depends on the mail relay: `SmtpReceiver(delay=…)` takes `delay` seconds to accept
each message, as a remote relay does, and keeps every message it accepted."""

from __future__ import annotations

import email
import email.message
import email.policy
import socket
import threading
import time


def send_to_port(settings, port: int) -> None:
    """Point this process's Django settings at plain SMTP on a loopback port: a SmtpReceiver, or a port standing for
    a relay that is down (tests.outage)."""
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", port
    settings.EMAIL_USE_TLS = settings.EMAIL_USE_SSL = False
    settings.EMAIL_HOST_USER = settings.EMAIL_HOST_PASSWORD = ""


class SmtpReceiver(threading.Thread):
    def __init__(self, delay: float = 0.0):
        super().__init__(daemon=True)
        self.delay = delay
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        self.messages: list[email.message.EmailMessage] = []
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        """The EMAIL_URL (django-environ) that sends to this server."""
        return f"smtp://127.0.0.1:{self.port}"

    def use_in(self, settings) -> None:
        """Point this process's Django settings at the server."""
        send_to_port(settings, self.port)

    def wait_for(self, count: int, timeout: float = 30.0) -> list[email.message.EmailMessage]:
        """The first `count` messages, once that many have arrived."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                if len(self.messages) >= count:
                    return list(self.messages[:count])
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(self.messages)} of {count} emails arrived within {timeout} s")
            time.sleep(0.05)

    def run(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        with conn, conn.makefile("rb") as lines:
            conn.sendall(b"220 test ESMTP\r\n")
            data: list[bytes] | None = None
            for raw in lines:
                if data is not None:
                    if raw.rstrip(b"\r\n") == b".":
                        time.sleep(self.delay)
                        message = email.message_from_bytes(b"".join(data), policy=email.policy.default)
                        with self._lock:
                            self.messages.append(message)
                        data = None
                        conn.sendall(b"250 OK\r\n")
                    else:
                        data.append(raw[1:] if raw.startswith(b"..") else raw)
                    continue
                verb = raw[:4].upper()
                if verb in (b"EHLO", b"HELO"):
                    conn.sendall(b"250 test\r\n")
                elif verb == b"DATA":
                    data = []
                    conn.sendall(b"354 go\r\n")
                elif verb == b"QUIT":
                    conn.sendall(b"221 bye\r\n")
                    break
                else:
                    conn.sendall(b"250 OK\r\n")

    def close(self):
        self.sock.close()


def body(message: email.message.EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain",))
    assert part is not None, "no text/plain part"
    return part.get_content()
