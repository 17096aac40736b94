import pytest
from rest_framework import serializers

from projects.api import LIST_COLUMNS, ProjectSerializer
from projects.models import Project

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


def test_list_rows_represent_like_model_instances(owner_org):
    # The list endpoint serializes named rows instead of models: both must give the same document.
    project = Project.objects.get(pk=owner_org.default_project.pk)
    row = Project.objects.filter(pk=project.pk).values_list(*LIST_COLUMNS, named=True).get()
    assert ProjectSerializer(row).data == ProjectSerializer(project).data
