import pytest
from rest_framework import serializers

from projects.api import ProjectSerializer

pytestmark = pytest.mark.django_db


def test_fast_project_representation_equals_drfs_generic_one(owner_org):
    class Generic(serializers.ModelSerializer):
        id = serializers.CharField(source="public_id")

        class Meta:
            model = ProjectSerializer.Meta.model
            fields = ProjectSerializer.Meta.fields

    project = owner_org.default_project
    project.refresh_from_db()
    assert ProjectSerializer(project).data == Generic(project).data
