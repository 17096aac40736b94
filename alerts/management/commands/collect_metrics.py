"""`python manage.py collect_metrics [--enqueue] [--deployment dep_…]`: collect now, then evaluate the rules.

Inline by default (one deployment after another, each bounded by COLLECT_TIMEOUT_SECONDS); `--enqueue` fans out to
the Celery workers exactly as the beat schedule does.
"""

from django.core.management.base import BaseCommand, CommandError

from alerts import collection, evaluate, tasks


class Command(BaseCommand):
    help = "Collect every running deployment's metrics (or one's), store them and evaluate the alert rules."

    def add_arguments(self, parser):
        parser.add_argument("--enqueue", action="store_true", help="Hand the work to the Celery workers.")
        parser.add_argument("--deployment", help="Only this deployment (dep_…).")

    def handle(self, *args, enqueue=False, deployment=None, **options):
        from deployments.models import Deployment

        if deployment:
            found = Deployment.objects.filter(public_id=deployment).values_list("pk", flat=True).first()
            if found is None:
                raise CommandError(f"no deployment {deployment}")
            ids = [found]
        else:
            ids = collection.running_deployment_ids()
        if enqueue:
            for pk in ids:
                tasks.collect_deployment.delay(pk)
            self.stdout.write(f"{len(ids)} collections enqueued")
            return
        unavailable = 0
        for pk in ids:
            state = collection.deployment_collect(deployment_id=pk)
            unavailable += state is not None and not state.available
        summary = evaluate.rules_evaluate(deployment_ids=ids)
        self.stdout.write(
            f"{len(ids)} deployments collected ({unavailable} unavailable); {summary.evaluated} "
            f"rule evaluations, {summary.changed} alert changes, {summary.notifications} notifications"
        )
