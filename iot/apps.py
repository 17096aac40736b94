from django.apps import AppConfig


class IotConfig(AppConfig):
    name = "iot"
    verbose_name = "IoT platform (Premium)"

    def ready(self):
        from controlplane.metrics import register_gauge_source
        from deployments.extensions import register_spec_contributor
        from iot import broker, edge_selectors, selectors

        register_spec_contributor("iot", broker.spec_users)
        register_spec_contributor("iot-edge", edge_selectors.spec_users)
        from alerts.collection import register_sample_source
        from iot import codecs

        register_sample_source("iot.codec_failures", codecs.codec_failures_sample)
        register_gauge_source(
            "controlplane_iot_agent_heartbeat_age_seconds",
            "Seconds since each platform agent's last heartbeat (a live agent beats every few seconds).",
            ["agent"],
            selectors.agent_heartbeat_ages,
        )
        register_gauge_source(
            "controlplane_iot_agent_deployments",
            "Premium deployments each platform agent serves.",
            ["agent"],
            selectors.agent_deployment_counts,
        )
        register_gauge_source(
            "controlplane_iot_deployment_lag_seconds",
            "Per running Premium deployment: the age of the oldest message its agent has not processed, or, when "
            "no agent serves it, how long it has gone unserved.",
            ["deployment"],
            selectors.deployment_lags,
        )
        register_gauge_source(
            "controlplane_iot_deployment_idle_seconds",
            "Per served Premium deployment: seconds since its agent last processed an event.",
            ["deployment"],
            selectors.deployment_idle_seconds,
        )
