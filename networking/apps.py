from django.apps import AppConfig


class NetworkingConfig(AppConfig):
    name = "networking"
    verbose_name = "Networking (VPC peering)"
