"""`manage.py render_manifests --deployment dep_… [--region CODE] [--emqx-version X.Y.Z]`.

Prints the YAML documents the Kubernetes driver would apply for a deployment, as if it were in a Kubernetes region,
so an operator can review a change before it reaches a cluster. It never contacts a cluster and never writes to the
database; secret values are printed as `<redacted>`.
"""

from __future__ import annotations

import yaml
from django.core.management.base import BaseCommand, CommandError

from deployments import emqx_versions
from deployments import manifests as m
from deployments.drivers.base import PermanentDriverError
from deployments.models import Deployment, Region
from deployments.reconcile import build_spec

REDACTED = "<redacted>"


def redact(manifest: dict) -> dict:
    """The manifest with every Secret value replaced: the review output may be pasted anywhere."""
    if manifest.get("kind") != "Secret":
        return manifest
    redacted = dict(manifest)
    for key in ("data", "stringData"):
        if key in redacted:
            redacted[key] = {name: REDACTED for name in redacted[key]}
    return redacted


class Command(BaseCommand):
    help = (
        "Print, without contacting any cluster, the YAML documents the Kubernetes driver would apply for a "
        "deployment: in its own region, or as if it were in --region (any region whose driver is kubernetes). "
        "--emqx-version renders for another EMQX release (5.1.1 or later among those offered). Secret values "
        "are printed as <redacted>."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--deployment", required=True, help="the deployment's id, dep_…")
        parser.add_argument("--region", help="a Kubernetes region's code (default: the deployment's own region)")
        parser.add_argument("--emqx-version", dest="emqx_version", help="an EMQX release, e.g. 5.9.1")

    def handle(self, *args, **options) -> None:
        deployment = (
            Deployment.objects.select_related("region", "tier", "plan").filter(public_id=options["deployment"]).first()
        )
        if deployment is None:
            raise CommandError(f"--deployment: no deployment {options['deployment']!r}")
        if options["region"]:
            region = Region.objects.filter(code=options["region"]).first()
            if region is None:
                raise CommandError(f"--region: no region {options['region']!r}")
            deployment.region = region  # in memory only: nothing is saved
        if deployment.region.driver != Region.Driver.KUBERNETES:
            raise CommandError(
                f"--region: region {deployment.region.code!r} runs the {deployment.region.driver} driver, not "
                "kubernetes; name a Kubernetes region with --region"
            )
        if options["emqx_version"]:
            try:
                emqx_versions.check(options["emqx_version"])
            except emqx_versions.UnsupportedVersion as exc:
                raise CommandError(f"--emqx-version: {exc}") from None
            deployment.emqx_version = options["emqx_version"]
        try:
            spec = build_spec(deployment)
        except PermanentDriverError as exc:
            raise CommandError(str(exc)) from None
        try:
            documents = [redact(manifest) for manifest in m.render_manifests(spec)]
        except ValueError as exc:
            raise CommandError(f"{deployment.public_id} cannot be rendered: {exc}") from None
        self.stdout.write(yaml.safe_dump_all(documents, sort_keys=False, default_flow_style=False), ending="")
