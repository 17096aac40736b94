"""python manage.py create_organization --name NAME --owner-email EMAIL [--password PW] [--api-key]"""

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from accounts.models import User
from controlplane.errors import DomainError
from organizations import services
from organizations.roles import Role


class Command(BaseCommand):
    help = (
        "Create an organization with its Default project and an Owner (created if the email is new). Prints the "
        "organization id; with --api-key, an Owner API key secret on the last line."
    )

    def add_arguments(self, parser):
        parser.add_argument("--name", required=True, help="The organization's name (at most 100 characters).")
        parser.add_argument("--owner-email", required=True, help="The Owner's email; an account is created if needed.")
        parser.add_argument("--password", help="Password for a new Owner account (omit to set it by password reset).")
        parser.add_argument("--api-key", action="store_true", help="Also create an Owner API key and print its secret.")

    def handle(self, *args, name, owner_email, password=None, api_key=False, **options):
        try:
            with transaction.atomic():
                owner = User.objects.filter(email__iexact=owner_email).first()
                if owner is None:
                    if password:
                        from django.contrib.auth.password_validation import validate_password

                        validate_password(password, user=User(email=owner_email))
                    owner = User.objects.create_user(owner_email, password)
                elif password:
                    raise CommandError(f"{owner_email} already has an account; --password applies only to new ones.")
                organization = services.organization_create(name=name, owner=owner)
                secret = None
                if api_key:
                    _key, secret = services.api_key_create(
                        organization=organization,
                        actor=None,
                        name="Created by create_organization",
                        role=Role.OWNER,
                        created_by=owner,
                    )
        except ValidationError as exc:  # the password validators and create_user's own checks
            raise CommandError(
                "; ".join(f"{k}: {' '.join(v)}" for k, v in exc.message_dict.items())
                if hasattr(exc, "error_dict")
                else " ".join(exc.messages)
            ) from exc
        except DomainError as exc:  # what the services refuse
            raise CommandError(
                "; ".join(f"{e.field}: {e.message}" if e.field else e.message for e in exc.errors) or exc.message
            ) from exc
        self.stdout.write(organization.public_id)
        project = organization.projects.get(is_default=True)
        self.stderr.write(
            f"Organization {organization.name!r} ({organization.public_id}), owner {owner.email}, "
            f"default project {project.public_id}"
        )
        if secret:
            self.stdout.write(secret)
