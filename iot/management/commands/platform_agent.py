"""`manage.py platform_agent`: the long-running process that serves Premium deployments' IoT features."""

import logging
import signal

from django.core.management.base import BaseCommand

from iot.agent.runner import PlatformAgent


class Command(BaseCommand):
    help = (
        "Run a platform agent: it holds an MQTT connection to every running Premium deployment it leases, answers "
        "device shadow requests, tracks devices' online state and disconnects disabled devices. Run several for "
        "redundancy: each deployment is served by exactly one agent at a time (a lease in PostgreSQL), and a dead "
        "agent's deployments are taken over within IOT_AGENT_LEASE_SECONDS plus one heartbeat. On a local region it "
        "applies codec rules in --codec-workers processes per deployment that has rules (a shared subscription; they "
        "stop with the agent, even when it is killed). SIGTERM or Ctrl-C stops it cleanly, handing its deployments "
        "over at once."
    )

    def add_arguments(self, parser):
        parser.add_argument("--agent-id", help="A name for this agent (default: host-pid-random).")
        parser.add_argument(
            "--heartbeat", type=float, help="Seconds between heartbeats (default IOT_AGENT_HEARTBEAT_SECONDS)."
        )
        parser.add_argument(
            "--lease", type=float, help="Seconds a lease lasts unless renewed (default IOT_AGENT_LEASE_SECONDS)."
        )
        parser.add_argument(
            "--max-deployments", type=int, help="Deployments this agent serves at most (IOT_AGENT_MAX_DEPLOYMENTS)."
        )

        parser.add_argument(
            "--codec-workers",
            type=int,
            help="Processes applying a deployment's codec rules (default IOT_CODEC_WORKERS: 2, or 1 on a "
            "single CPU); 1 applies them in the agent itself, in order per topic.",
        )

    def handle(self, *args, **options):
        logging.getLogger("iot.agent").setLevel(logging.INFO)
        agent = PlatformAgent(
            agent_id=options.get("agent_id"),
            heartbeat_seconds=options.get("heartbeat"),
            lease_seconds=options.get("lease"),
            max_deployments=options.get("max_deployments"),
            codec_workers=options.get("codec_workers"),
        )

        def stop(signum, frame):
            agent.stop_event.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        self.stdout.write(f"platform agent {agent.agent_id} running (Ctrl-C stops it)")
        self.stdout.flush()
        agent.run()
