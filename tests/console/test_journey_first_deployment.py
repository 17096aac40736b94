"""Journey: a new customer signs up, creates a deployment in the Default project, watches it come up without reloading,
adds an MQTT user and connects a real MQTT client with what the page tells them."""

import queue
import re
import shlex
import uuid

import paho.mqtt.client as mqtt
import pytest
from playwright.sync_api import expect

from tests.mail import body

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def _mqtt_client(host, port, username, password):
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=uuid.uuid4().hex)
    client.username_pw_set(username, password)
    connack, messages = queue.Queue(), queue.Queue()
    client.on_connect = lambda c, u, flags, rc, props: connack.put(rc)
    client.on_message = lambda c, u, msg: messages.put((msg.topic, msg.payload))
    client.connect(host, port)
    client.loop_start()
    assert not connack.get(timeout=10).is_failure
    return client, messages


def _option(argv, flag):
    return argv[argv.index(flag) + 1]


@pytest.fixture
def worker_smtp(smtp_receiver, monkeypatch):
    """The sign-up email goes from the worker (another process): it sends through this SMTP server."""
    monkeypatch.setenv("EMAIL_URL", smtp_receiver.url)
    return smtp_receiver


def test_new_customer_connects_a_client_when_following_the_console(site, worker_smtp, celery_worker):
    page = site.page(name="newcomer")
    page.goto("/console/signup")
    page.get_by_label("Email").fill("ada@example.com")
    page.get_by_label("Organization name").fill("Engines Ltd")
    page.check("signup")
    page.get_by_role("button", name="Sign up").click()
    expect(page.get_by_role("heading", name="Check your email")).to_be_visible()
    [mail] = worker_smtp.wait_for(1)
    # The worker builds links on its own PUBLIC_URL: the path is what leads to this test's server.
    link = re.search(r"https?://[^/\s]+(/console/signup/confirm\?token=\S+)", body(mail)).group(1)
    page.goto(link)
    page.get_by_label("Choose a password").fill("a fine long passphrase")
    page.get_by_role("button", name="Create my account").click()

    expect(page.get_by_role("heading", name="Projects")).to_be_visible()
    page.check("projects")
    page.get_by_role("link", name="Default project").click()
    expect(page.get_by_role("heading", name="Default project")).to_be_visible()
    expect(page.get_by_text("No deployments in this project yet.")).to_be_visible()
    page.check("empty-project")

    page.get_by_role("link", name="Create deployment").click()
    page.get_by_role("radio", name=re.compile(r"^1k ")).check()
    page.get_by_role("radio", name=re.compile(r"^Hourly")).check()
    expect(page.locator("#wizard-summary")).to_contain_text("$0.36 per hour")
    expect(page.locator("#annual-saving")).to_contain_text("saves")
    page.get_by_label("Deployment name").fill("plant")
    page.check("wizard")
    page.get_by_role("button", name="Create deployment").click()

    expect(page.get_by_role("heading", name="plant")).to_be_visible()
    expect(page.get_by_role("status").filter(has_text="operation")).to_contain_text(re.compile(r"op_\w+ \(create\)"))
    navigations = page.navigations
    # The page polls while the deployment settles: `running` appears without a reload.
    expect(page.locator("#deployment-status")).to_have_text("running", timeout=60_000)
    assert page.navigations == navigations
    expect(page.locator("#conn-port-mqtt")).to_have_text(re.compile(r"^\d+$"))
    page.check("running")

    page.get_by_role("link", name="MQTT users").click()
    page.get_by_label("Username").fill("sensor")
    password = page.get_by_label("Password", exact=True)
    password.fill("sensor-secret-1")
    assert password.get_attribute("type") == "password"
    page.get_by_role("button", name="Show").click()
    assert password.get_attribute("type") == "text"  # visible while typing
    page.get_by_label("Username").focus()
    assert password.get_attribute("type") == "password"  # masked again once typing stops
    page.check("add-user")
    page.get_by_role("button", name="Add MQTT user").click()
    expect(page.get_by_role("cell", name="sensor", exact=True)).to_be_visible()
    assert "sensor-secret-1" not in page.content()
    page.check("users")

    page.get_by_role("link", name="Overview").click()
    expect(page.get_by_label("For MQTT user")).to_have_value("sensor")
    host = page.locator("#conn-host").inner_text()
    port = int(page.locator("#conn-port-mqtt").inner_text())
    sub = shlex.split(page.locator("#cmd-sub").inner_text())
    pub = shlex.split(page.locator("#cmd-pub").inner_text())
    page.check("connect")
    assert sub[0] == "mosquitto_sub" and pub[0] == "mosquitto_pub"
    assert _option(sub, "-h") == host and int(_option(sub, "-p")) == port and _option(sub, "-u") == "sensor"
    assert _option(sub, "-P") == "$MQTT_PASSWORD"  # the page never shows a stored password

    subscriber, messages = _mqtt_client(
        _option(sub, "-h"), int(_option(sub, "-p")), _option(sub, "-u"), "sensor-secret-1"
    )
    publisher, _ = _mqtt_client(_option(pub, "-h"), int(_option(pub, "-p")), _option(pub, "-u"), "sensor-secret-1")
    try:
        done = subscriber.subscribe(_option(sub, "-t"), qos=1)
        assert done[0] == mqtt.MQTT_ERR_SUCCESS
        # A subscription is in place once the broker acknowledged it; publish until the first copy arrives.
        for _ in range(50):
            publisher.publish(_option(pub, "-t"), _option(pub, "-m").encode(), qos=1).wait_for_publish(5)
            try:
                topic, payload = messages.get(timeout=0.2)
                break
            except queue.Empty:
                continue
        else:
            raise AssertionError("the subscriber never received the message")
        assert (topic, payload) == (_option(sub, "-t"), _option(pub, "-m").encode())
    finally:
        for client in (subscriber, publisher):
            client.disconnect()
            client.loop_stop()
