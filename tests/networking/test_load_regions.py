"""load_regions reads a region's network block and its cloud credentials (stored encrypted), and refuses a block
the networking adapters could not work with."""

import json

import pytest
import yaml
from django.core.management import CommandError, call_command

from controlplane import crypto
from deployments.models import Region

pytestmark = pytest.mark.django_db

AWS_REGION = {
    "code": "eu-central",
    "display_name": "Frankfurt",
    "provider": "aws",
    "region": "eu-central-1",
    "driver": "kubernetes",
    "in_cluster": True,
    "open": True,
    "network": {
        "account_id": "111122223333",
        "vpc_id": "vpc-0a1b2c3d4e5f60718",
        "cidr": "10.0.0.0/16",
        "route_table_ids": ["rtb-0123456789abcdef0"],
        "security_group_id": "sg-0123456789abcdef0",
        "reserved_cidrs": ["10.96.0.0/12"],
    },
    "cloud_credentials_secret": "region-eu-central-cloud",
}


def _load(tmp_path, items, monkeypatch, credentials=None):
    secrets = tmp_path / "secrets"
    if credentials is not None:
        (secrets / "region-eu-central-cloud").mkdir(parents=True)
        (secrets / "region-eu-central-cloud" / "credentials.json").write_text(credentials)
    monkeypatch.setenv("CLOUD_CREDENTIALS_DIR", str(secrets))
    path = tmp_path / "regions.yaml"
    path.write_text(yaml.safe_dump(items))
    call_command("load_regions", file=str(path))


def test_network_and_encrypted_credentials_are_stored_when_region_is_loaded(tmp_path, monkeypatch):
    secret = {"access_key_id": "AKIA0000", "secret_access_key": "s3cr3t"}
    _load(tmp_path, [AWS_REGION], monkeypatch, json.dumps(secret))
    region = Region.objects.get(code="eu-central")
    assert region.network["vpc_id"] == "vpc-0a1b2c3d4e5f60718" and region.network["cidr"] == "10.0.0.0/16"
    assert "s3cr3t" not in region.cloud_credentials_encrypted
    assert json.loads(crypto.decrypt_str(region.cloud_credentials_encrypted)) == secret


@pytest.mark.parametrize(
    ("network", "message"),
    [
        ({"account_id": "111122223333", "cidr": "10.0.0.0/16"}, "network needs ['vpc_id'] for provider aws"),
        ({**AWS_REGION["network"], "cidr": "8.8.8.0/24"}, "8.8.8.0/24 is not a private range"),
        ({**AWS_REGION["network"], "cidr": "10.0.0.0/33"}, "network cidr"),
        ("vpc-0a1b", "network must be a mapping"),
    ],
)
def test_region_is_refused_when_network_block_is_unusable(tmp_path, monkeypatch, network, message):
    with pytest.raises(CommandError, match=message.replace("[", r"\[").replace("]", r"\]")):
        _load(tmp_path, [{**AWS_REGION, "network": network}], monkeypatch, "{}")
    assert not Region.objects.filter(code="eu-central").exists()


@pytest.mark.parametrize(
    ("credentials", "message"), [(None, "cannot read the cloud credentials"), ("[1, 2]", "must be a JSON object")]
)
def test_region_is_refused_when_credentials_are_missing_or_not_an_object(tmp_path, monkeypatch, credentials, message):
    with pytest.raises(CommandError, match=message):
        _load(tmp_path, [AWS_REGION], monkeypatch, credentials)
