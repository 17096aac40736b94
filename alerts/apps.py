from django.apps import AppConfig


class AlertsConfig(AppConfig):
    name = "alerts"

    def ready(self):
        # Default rules are created inside the deployment's own transaction; deployments calls this hook without
        # importing alerts (which sits above it).
        from alerts import defaults
        from deployments import hooks

        hooks.on_deployment_created(defaults.deployment_created)
