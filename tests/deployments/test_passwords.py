import pathlib
import queue
import shutil
import socket
import subprocess
import tempfile
import time

import paho.mqtt.client as mqtt
import pytest

from deployments.drivers.base import MqttCredential
from deployments.passwords import (
    hash_mqtt_password,
    make_mqtt_credential,
    mosquitto_password_line,
    parse_mosquitto_password_line,
    verify_mqtt_password,
)

MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd")


def test_hash_has_mosquitto_sizes_when_hashing():
    import base64

    salt_b64, hash_b64 = hash_mqtt_password("pw")
    assert len(base64.b64decode(salt_b64)) == 12
    assert len(base64.b64decode(hash_b64)) == 64
    assert hash_mqtt_password("pw")[0] != salt_b64


def test_line_has_dollar7_format_when_rendered():
    cred = make_mqtt_credential(username="alice", password="pw", iterations=150)
    line = mosquitto_password_line(cred)
    assert line.startswith("alice:$7$150$")
    assert parse_mosquitto_password_line(line) == cred


def test_verify_rejects_wrong_password_when_hash_is_ours():
    cred = make_mqtt_credential(username="alice", password="right")
    assert verify_mqtt_password("right", cred)
    assert not verify_mqtt_password("wrong", cred)


@pytest.mark.parametrize("username", ["", "a:b", "a b", "a\nb"])
def test_username_is_rejected_when_it_would_corrupt_the_file(username):
    with pytest.raises(ValueError):
        make_mqtt_credential(username=username, password="pw")
    with pytest.raises(ValueError):
        mosquitto_password_line(MqttCredential(username=username, salt_b64="c2FsdA==", hash_b64="aGFzaA=="))


@pytest.mark.skipif(MOSQUITTO_PASSWD is None, reason="mosquitto_passwd not installed")
def test_line_from_mosquitto_passwd_verifies_when_password_matches(tmp_path):
    pwfile = tmp_path / "pw"
    subprocess.run([MOSQUITTO_PASSWD, "-c", "-b", str(pwfile), "bob", "s3cret: ü"], check=True)
    cred = parse_mosquitto_password_line(pwfile.read_text().strip())
    assert cred.username == "bob"
    assert verify_mqtt_password("s3cret: ü", cred)
    assert not verify_mqtt_password("s3cret", cred)


def test_real_broker_accepts_our_line_when_client_connects():
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="pw-broker-"))
    workdir.chmod(0o755)  # a root-started mosquitto reads its files as the `mosquitto` user
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cred = make_mqtt_credential(username="carol", password="pa$$:word")
    (workdir / "passwd").write_text(mosquitto_password_line(cred) + "\n")
    (workdir / "passwd").chmod(0o644)
    conf = workdir / "m.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {workdir}/passwd\n")
    conf.chmod(0o644)
    broker = subprocess.Popen(["mosquitto", "-c", str(conf)], stderr=subprocess.DEVNULL)
    try:
        results = {}
        for password in ("pa$$:word", "nope"):
            codes: queue.Queue = queue.Queue()
            client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
            client.on_connect = lambda c, u, flags, rc, props, codes=codes: codes.put(rc)
            client.username_pw_set("carol", password)
            for _ in range(200):
                try:
                    client.connect("127.0.0.1", port)
                    break
                except ConnectionRefusedError:
                    time.sleep(0.02)
            client.loop_start()
            results[password] = codes.get(timeout=10)
            client.loop_stop()
            client.disconnect()
        assert not results["pa$$:word"].is_failure
        assert results["nope"].is_failure
    finally:
        broker.terminate()
        broker.wait()
        shutil.rmtree(workdir, ignore_errors=True)
