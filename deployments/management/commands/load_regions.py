"""`manage.py load_regions --file regions.yaml`: upsert regions from a YAML list (the operator's cluster registry).

Each item: {code, display_name, provider, region, driver: local|kubernetes, kubeconfig_secret?: NAME (read from
$KUBECONFIG_SECRETS_DIR/NAME/kubeconfig and stored encrypted), in_cluster?: bool, open: bool, bind_address?,
storage_class?, service_type?, tiers?: ["dedicated/1k", ...] (default: every Dedicated and Premium tier)}.
"""

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
}


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
