"""Sign-up: a user, their organization (as Owner) and its Default project, in one transaction."""

from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.db import transaction

from accounts.models import User
from organizations.services import organization_create


@transaction.atomic
def user_signup(*, email: str, password: str, full_name: str = "", organization_name: str = ""):
    email = User.objects.normalize_email(email.strip()).lower()
    if User.objects.filter(email__iexact=email).exists():
        raise ValidationError({"email": "An account with this email already exists."})
    validate_password(password, user=User(email=email, full_name=full_name))
    user = User.objects.create_user(email, password, full_name=full_name)
    organization = organization_create(
        name=organization_name or f"{full_name or email.split('@')[0]}'s organization", owner=user
    )
    return user, organization
