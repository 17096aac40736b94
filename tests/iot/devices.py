"""A paho 2.x device for the end-to-end tests: connects as a registered device (its client id is its device id),
subscribes to its shadow answers, and collects what arrives per topic."""

from __future__ import annotations

import collections
import json
import threading
import time

import paho.mqtt.client as mqtt


class Device:
    ANSWERS = ("update/accepted", "update/rejected", "update/delta", "update/documents", "get/accepted", "get/rejected")

    def __init__(
        self,
        port,
        device_id,
        username=None,
        password=None,
        *,
        clean=True,
        protocol=mqtt.MQTTv311,
        tls=None,
        type="password",  # noqa: A002 - the API's credentials carry it; passed as **credentials
    ):
        self.port, self.device_id = port, device_id
        self.protocol = protocol
        self.lock = threading.Condition()
        self.inbox: dict[str, list] = collections.defaultdict(list)
        self.connack = None
        self.session_present = None  # the CONNACK's flag: the broker resumed a session it held for this client id
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        kwargs = {"clean_session": clean} if protocol != mqtt.MQTTv5 else {}
        self.mqtt = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device_id, protocol=protocol, **kwargs)
        if tls is not None:  # an ssl.SSLContext: a certificate device presents its certificate, needs no password
            self.mqtt.tls_set_context(tls)
        if username is not None:
            self.mqtt.username_pw_set(username, password)
        self.mqtt.reconnect_delay_set(30, 60)  # a test reconnects on purpose, never behind our back
        self.mqtt.on_connect = self._on_connect
        self.mqtt.on_disconnect = lambda c, u, flags, rc, props: (self.connected.clear(), self.disconnected.set())
        self.mqtt.on_message = self._on_message

    @property
    def prefix(self) -> str:
        return f"devices/{self.device_id}/shadow"

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        self.session_present = flags.session_present
        self.connack = reason_code
        if not reason_code.is_failure:
            self.disconnected.clear()
            self.connected.set()
        else:
            self.disconnected.set()

    def _on_message(self, client, userdata, message):
        with self.lock:
            try:
                body = json.loads(message.payload)
            except ValueError:
                body = message.payload
            self.inbox[message.topic].append((time.monotonic(), body))
            self.lock.notify_all()

    def connect(self, timeout=10.0, subscribe=True):
        self.connack = None
        self.mqtt.connect("127.0.0.1", self.port, keepalive=30)
        self.mqtt.loop_start()
        deadline = time.monotonic() + timeout
        while self.connack is None and time.monotonic() < deadline:
            time.sleep(0.01)
        if self.connack is not None and not self.connack.is_failure and subscribe:
            done = threading.Event()
            self.mqtt.on_subscribe = lambda c, u, mid, codes, props: done.set()
            self.mqtt.subscribe([(f"{self.prefix}/{answer}", 1) for answer in self.ANSWERS])
            assert done.wait(10), "no SUBACK"
        return self.connack

    def publish(self, topic, payload, qos=1):
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        info = self.mqtt.publish(topic, data, qos=qos)
        return info

    def update(self, body, qos=1):
        return self.publish(f"{self.prefix}/update", body, qos=qos)

    def get(self, token=""):
        return self.publish(f"{self.prefix}/get", {"clientToken": token} if token else b"")

    def wait_served(self, timeout=30.0):
        """Until an agent answers this device's `get` (whatever the answer): the deployment is being served."""
        deadline = time.monotonic() + timeout
        attempt = 0
        while time.monotonic() < deadline:
            attempt += 1
            token = f"probe-{attempt}"
            self.get(token)
            try:
                for answer in ("get/accepted", "get/rejected"):
                    found = [b for b in self.messages(answer) if isinstance(b, dict) and b.get("clientToken") == token]
                    if found:
                        return
                self.wait_for("get/rejected", lambda b, t=token: b.get("clientToken") == t, timeout=0.5)
                return
            except AssertionError:
                if any(b.get("clientToken") == token for b in self.messages("get/accepted") if isinstance(b, dict)):
                    return
        raise AssertionError(f"{self.device_id}: no agent answered within {timeout}s")

    def messages(self, answer):
        with self.lock:
            return [body for _, body in self.inbox[f"{self.prefix}/{answer}"]]

    def messages_on(self, topic):
        with self.lock:
            return [body for _, body in self.inbox[topic]]

    def wait_for(self, answer, predicate=lambda body: True, timeout=10.0):
        """The first message on `answer` that satisfies `predicate`, and when it arrived (monotonic)."""
        topic = f"{self.prefix}/{answer}"
        deadline = time.monotonic() + timeout
        with self.lock:
            while True:
                for at, body in self.inbox[topic]:
                    if predicate(body):
                        return body, at
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"{self.device_id}: nothing on {answer} matched within {timeout}s: {self.inbox[topic][-3:]}"
                    )
                self.lock.wait(remaining)

    def close(self):
        self.mqtt.disconnect()
        self.mqtt.loop_stop()
