from django.apps import AppConfig


class NotificationsConfig(AppConfig):
    name = "notifications"
    verbose_name = "Notifications"

    def ready(self):
        from notifications import services
        from organizations import closing

        # A closed organization's channels are disabled with it (organizations sits below us).
        closing.on_closing(services.organization_channels_disable)
