from django.apps import AppConfig


def _deployments_by_status():
    from django.db.models import Count

    from deployments.models import Deployment

    return {(row["status"],): row["n"] for row in Deployment.objects.values("status").annotate(n=Count("id"))}


class DeploymentsConfig(AppConfig):
    name = "deployments"

    def ready(self):
        from controlplane.metrics import register_gauge_source
        from deployments import selectors
        from organizations import closing

        # An organization is deleted only once none of its deployments is left (organizations sits below us).
        closing.on_deletion_check(selectors.organization_deletion_blockers)

        register_gauge_source(
            "controlplane_deployments", "Deployments by observed status.", ["status"], _deployments_by_status
        )
