from django.apps import AppConfig


class NetworkingConfig(AppConfig):
    name = "networking"
    verbose_name = "Networking (VPC peering)"

    def ready(self):
        from networking import selectors
        from organizations import closing

        # Nor while a VPC peering still holds a range at a provider.
        closing.on_deletion_check(selectors.organization_deletion_blockers)
