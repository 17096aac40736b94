from django.apps import AppConfig


class AlertsConfig(AppConfig):
    name = "alerts"

    def ready(self):
        # Default rules are created inside the deployment's own transaction, and its rules follow it to another
        # project inside the move's; deployments calls these hooks without importing alerts (which sits above it).
        from alerts import defaults, rules
        from deployments import hooks

        hooks.on_deployment_created(defaults.deployment_created)
        hooks.on_deployment_moved(rules.deployment_moved)
