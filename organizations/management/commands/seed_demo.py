"""python manage.py seed_demo — the embedded run's starting point: a staff user and a demo organization.

Idempotent: credentials made on the first run are kept in CONTROLPLANE_VAR_DIR/demo-credentials.json and printed
again on every run. Refuses to run in production.
"""

import json
import secrets

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from accounts.models import User
from organizations import services
from organizations.models import Organization
from organizations.roles import Role

STAFF_EMAIL = "admin@example.com"
DEMO_EMAIL = "demo@example.com"


class Command(BaseCommand):
    help = "Create (once) a staff user and a demo organization with an Owner API key, and print how to sign in."

    def handle(self, *args, **options):
        if settings.PRODUCTION:
            raise CommandError("seed_demo is for development only (CONTROLPLANE_ENV is production).")
        path = settings.VAR_DIR / "demo-credentials.json"
        credentials = json.loads(path.read_text()) if path.exists() else {}
        with transaction.atomic():
            if not User.objects.filter(email=STAFF_EMAIL).exists():
                credentials["staff_password"] = secrets.token_urlsafe(12)
                User.objects.create_superuser(STAFF_EMAIL, credentials["staff_password"], full_name="Operator")
            demo = User.objects.filter(email=DEMO_EMAIL).first()
            if demo is None:
                credentials["demo_password"] = secrets.token_urlsafe(12)
                demo = User.objects.create_user(DEMO_EMAIL, credentials["demo_password"], full_name="Demo Developer")
                organization = services.organization_create(name="Demo organization", owner=demo)
                _key, credentials["api_key"] = services.api_key_create(
                    organization=organization, actor=None, name="Demo key", role=Role.OWNER, created_by=demo
                )
            organization = Organization.objects.filter(memberships__user=demo).order_by("created_at").first()
        settings.VAR_DIR.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(credentials, indent=2))
        path.chmod(0o600)
        base = settings.PUBLIC_URL
        project = organization.projects.get(is_default=True)
        self.stdout.write(
            f"""
  Console      {base}/            {DEMO_EMAIL} / {credentials.get("demo_password", "(unchanged: see " + str(path) + ")")}
  Admin        {base}/admin/      {STAFF_EMAIL} / {credentials.get("staff_password", "(see " + str(path) + ")")}
               (staff need two-factor: sign in to the console as {STAFF_EMAIL} and set it up at
                {base}/console/account/two-factor, then sign in to the admin with a code)
  API docs     {base}/api/docs/   Authorize with the API key below
  API key      {credentials.get("api_key", "(see " + str(path) + ")")}
  Organization {organization.public_id}   Default project {project.public_id}

  Try it:  curl -H "Authorization: Bearer $API_KEY" {base}/api/v1/organizations/{organization.public_id}/projects
"""
        )
