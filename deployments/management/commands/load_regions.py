"""`manage.py load_regions --file regions.yaml`: upsert regions from a YAML list (the operator's cluster registry).

Each item: {code, display_name, provider, region, driver: local|kubernetes, kubeconfig_secret?: NAME (read from
$KUBECONFIG_SECRETS_DIR/NAME/kubeconfig and stored encrypted), in_cluster?: bool, open: bool, bind_address?,
storage_class?, service_type?, tiers?: ["dedicated/1k", ...] (default: every Dedicated and Premium tier),
network?: {the platform's VPC/VNet for VPC peering, keys per provider below}, cloud_credentials_secret?: NAME (JSON
read from $CLOUD_CREDENTIALS_DIR/NAME/credentials.json and stored encrypted)}. See docs/operations/regions.md.
"""

import ipaddress
import json
import os
import pathlib

import yaml
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from audit.services import audit_record
from controlplane import crypto
from deployments.models import Region, Tier

KNOWN_KEYS = {
    "code",
    "display_name",
    "provider",
    "region",
    "driver",
    "kubeconfig_secret",
    "in_cluster",
    "open",
    "bind_address",
    "storage_class",
    "service_type",
    "tiers",
    "network",
    "cloud_credentials_secret",
}
# The platform network a region's VPC peerings attach to: required keys per provider (networking reads them).
NETWORK_KEYS = {
    "aws": {"account_id", "vpc_id", "cidr"},
    "gcp": {"project_id", "network", "cidr"},
    "azure": {"tenant_id", "subscription_id", "resource_group", "vnet_name", "cidr"},
}


def _network(index: int, provider: str, network) -> dict:
    if not isinstance(network, dict) or provider not in NETWORK_KEYS:
        raise CommandError(f"item {index}: network must be a mapping, for provider aws, gcp or azure")
    missing = NETWORK_KEYS[provider] - set(network)
    if missing:
        raise CommandError(f"item {index}: network needs {sorted(missing)} for provider {provider}")
    try:
        for cidr in [network["cidr"], *network.get("reserved_cidrs", [])]:
            if ipaddress.IPv4Network(cidr).is_global:
                raise ValueError(f"{cidr} is not a private range")
    except (TypeError, ValueError) as exc:
        raise CommandError(f"item {index}: network cidr: {exc}") from exc
    return network


class Command(BaseCommand):
    help = "Create or update regions from a YAML file."

    def add_arguments(self, parser):
        parser.add_argument("--file", required=True, help="Path of the YAML list of regions.")

    def handle(self, *args, file, **options):
        try:
            items = yaml.safe_load(pathlib.Path(file).read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise CommandError(f"cannot read {file}: {exc}") from exc
        if not isinstance(items, list):
            raise CommandError("the file must hold a YAML list of regions")
        with transaction.atomic():
            for index, item in enumerate(items):
                self._upsert(index, item)

    def _upsert(self, index: int, item) -> None:
        if not isinstance(item, dict):
            raise CommandError(f"item {index}: not a mapping")
        unknown = set(item) - KNOWN_KEYS
        if unknown:
            raise CommandError(f"item {index}: unknown keys {sorted(unknown)}")
        for key in ("code", "display_name", "provider", "driver"):
            if not item.get(key):
                raise CommandError(f"item {index}: {key} is required")
        if item["driver"] not in Region.Driver.values:
            raise CommandError(f"item {index}: driver must be local or kubernetes")
        region = Region.objects.filter(code=item["code"]).first() or Region(code=item["code"])
        region.display_name = item["display_name"]
        region.provider = item["provider"]
        region.cloud_region = item.get("region", "") or ""
        region.driver = item["driver"]
        region.in_cluster = bool(item.get("in_cluster", False))
        region.is_open = bool(item.get("open", True))
        region.bind_address = item.get("bind_address", region.bind_address or "127.0.0.1")
        region.storage_class = item.get("storage_class", region.storage_class) or ""
        region.service_type = item.get("service_type", region.service_type) or "LoadBalancer"
        secret = item.get("kubeconfig_secret")
        if secret:
            base = os.environ.get("KUBECONFIG_SECRETS_DIR")
            if not base:
                raise CommandError(f"item {index}: kubeconfig_secret needs KUBECONFIG_SECRETS_DIR")
            if "/" in secret or secret in (".", ".."):
                raise CommandError(f"item {index}: kubeconfig_secret must be a plain name")
            try:
                region.kubeconfig_encrypted = crypto.encrypt_str(
                    (pathlib.Path(base) / secret / "kubeconfig").read_text()
                )
            except OSError as exc:
                raise CommandError(f"item {index}: cannot read the kubeconfig of secret {secret!r}: {exc}") from exc
        if "network" in item:
            region.network = _network(index, region.provider, item["network"]) if item["network"] else {}
        secret = item.get("cloud_credentials_secret")
        if secret:
            base = os.environ.get("CLOUD_CREDENTIALS_DIR")
            if not base or "/" in secret or secret in (".", ".."):
                raise CommandError(
                    f"item {index}: cloud_credentials_secret needs CLOUD_CREDENTIALS_DIR and a plain name"
                )
            try:
                credentials = json.loads((pathlib.Path(base) / secret / "credentials.json").read_text())
            except (OSError, ValueError) as exc:
                raise CommandError(f"item {index}: cannot read the cloud credentials of {secret!r}: {exc}") from exc
            if not isinstance(credentials, dict):
                raise CommandError(f"item {index}: the cloud credentials of {secret!r} must be a JSON object")
            region.cloud_credentials_encrypted = crypto.encrypt_str(json.dumps(credentials))
        if region.driver == Region.Driver.KUBERNETES and not region.kubeconfig_encrypted and not region.in_cluster:
            raise CommandError(f"item {index}: a kubernetes region needs kubeconfig_secret or in_cluster: true")
        created = region.pk is None
        region.full_clean(exclude=["tiers"])
        region.save()
        wanted = item.get("tiers")
        if wanted is None:
            tiers = list(Tier.objects.filter(plan__code__in=["dedicated", "premium"]))
        else:
            tiers = []
            for name in wanted:
                plan_code, _, tier_code = str(name).partition("/")
                tier = Tier.objects.filter(plan__code=plan_code, code=tier_code).first()
                if tier is None:
                    raise CommandError(f"item {index}: unknown tier {name!r} (use plan/tier, e.g. dedicated/1k)")
                tiers.append(tier)
        region.tiers.set(tiers)
        audit_record(
            actor=None,
            organization=None,
            action="region.create" if created else "region.update",
            target=region,
            summary={"code": region.code, "driver": region.driver, "open": region.is_open},
        )
        self.stdout.write(f"{'created' if created else 'updated'} region {region.code}")
