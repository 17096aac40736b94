"""Test data made through the real services, so tests start from states the product can really reach."""

import dataclasses
import itertools

import factory

from accounts.models import User

_counter = itertools.count(1)
PASSWORD = "correct horse battery staple"


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = User

    email = factory.Sequence(lambda n: f"user{n}@example.com")
    full_name = factory.Faker("name")

    @classmethod
    def _create(cls, model_class, *args, **kwargs):
        return model_class.objects.create_user(kwargs.pop("email"), PASSWORD, **kwargs)


@dataclasses.dataclass
class OrgFixture:
    organization: object
    owner: object
    default_project: object
    owner_key: object
    owner_secret: str

    @property
    def id(self) -> str:
        return self.organization.public_id

    def add_member(self, *, roles=(), project_grants=(), email=None):
        """A new user with the given organization roles and [(project, role)] grants; returns (user, membership)."""
        from organizations.models import Membership
        from projects.models import ProjectGrant

        user = UserFactory(email=email) if email else UserFactory()
        membership = Membership.objects.create(organization=self.organization, user=user, roles=list(roles))
        for project, role in project_grants:
            ProjectGrant.objects.create(membership=membership, project=project, role=role)
        return user, membership

    def key_for(self, user, *, role, projects=()):
        from organizations import services

        key, secret = services.api_key_create(
            organization=self.organization,
            actor=None,
            name=f"key {next(_counter)}",
            role=role,
            project_ids=[p.public_id for p in projects],
            created_by=user,
        )
        return key, secret


def make_organization(*, name=None, owner=None) -> OrgFixture:
    from organizations import services
    from organizations.roles import Role

    owner = owner or UserFactory()
    organization = services.organization_create(name=name or f"Org {next(_counter)}", owner=owner)
    key, secret = services.api_key_create(
        organization=organization, actor=None, name="owner key", role=Role.OWNER, created_by=owner
    )
    return OrgFixture(organization, owner, organization.projects.get(is_default=True), key, secret)
