"""python manage.py create_organization --name NAME --owner-email EMAIL [--password PW] [--api-key]"""

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from accounts.models import User
from controlplane.errors import DomainError, ValidationFailed
from organizations import services
from organizations.roles import Role


def _refusal(exc: DomainError) -> str:
    """The refusal's messages on one line, grouped by the field they blame ("name: …; password: …")."""
    by_field: dict[str | None, list[str]] = {}
    for error in exc.errors:
        by_field.setdefault(error.field, []).append(error.message)
    return "; ".join(f"{f}: {' '.join(m)}" if f else " ".join(m) for f, m in by_field.items()) or exc.message


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
            raise CommandError(_refusal(ValidationFailed.from_django(exc))) from exc
        except DomainError as exc:  # what the services refuse
            raise CommandError(_refusal(exc)) from exc
        self.stdout.write(organization.public_id)
        project = organization.projects.get(is_default=True)
        self.stderr.write(
            f"Organization {organization.name!r} ({organization.public_id}), owner {owner.email}, "
            f"default project {project.public_id}"
        )
        if secret:
            self.stdout.write(secret)
