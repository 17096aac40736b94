from django.apps import AppConfig


class IotConfig(AppConfig):
    name = "iot"
    verbose_name = "IoT platform (Premium)"

    def ready(self):
        from alerts.collection import register_sample_source
        from billing.metering import register_coverage_source
        from controlplane.metrics import register_gauge_source
        from deployments import hooks
        from deployments.extensions import register_device_ca_source, register_spec_contributor
        from iot import broker, codecs, edge_selectors, selectors, trials

        register_spec_contributor("iot", broker.spec_users)
        register_device_ca_source("iot", broker.spec_device_ca)
        register_spec_contributor("iot-edge", edge_selectors.spec_users)
        # Premium trials: trial deployments are recorded at creation, stay stopped once the trial ended unbought, and
        # are never billed by the hour while on trial.
        hooks.on_deployment_created(trials.trial_deployment_record)
        hooks.on_deployment_start(trials.trial_start_guard)
        register_coverage_source("iot.premium_trial", trials.coverage_source())
        # Codec failures are a metric the collector stores each minute (the "rule-engine failures" default rule).
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
